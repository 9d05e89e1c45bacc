using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Attend.Linear;
using Attend.Methods;
using Spectre.Console;
using static Attend.Cli.JsonNumbers;

namespace Attend.Cli;

/// <summary>One measurement of <c>attend bench linear</c>.</summary>
/// <param name="Method">Method name (<c>core</c>: <see cref="LinearAttention"/> itself, additive, identity map, no decay; <c>exact</c>: causal softmax).</param>
/// <param name="Form">chunked (prefill), recurrent (decode) or exact.</param>
/// <param name="T">Tokens of the prefill, or the context length before the decode step.</param>
/// <param name="D">Head dim of q/k/v.</param>
/// <param name="H">Query heads (= key/value heads).</param>
/// <param name="TokensPerS">Tokens (over all heads) per second.</param>
/// <param name="UsPerToken">Decode: microseconds per generated token (all heads).</param>
/// <param name="PeakFraction">Chunked: FLOP/s over the measured FMA peak (FLOP convention in the docs).</param>
/// <param name="MaxRelErr">max|a − e| / max|e| against the run's reference form (float64 naive on the CPU, the recurrent form on the GPU).</param>
/// <param name="Spread">Relative spread (max − min) / median of the timed runs.</param>
internal sealed record LinearRecord(string Method, string Form, int T, int D, int H, double? TokensPerS, double? UsPerToken, double? PeakFraction, double? MaxRelErr, double Spread)
{
    public double? Gflops { get; init; }
    public bool Passed { get; init; } = true;

    /// <summary>FLOPs per CPU-second of this process over FMA FLOPs per CPU-second: the fraction of the peak while the
    /// kernel actually held a core (robust to other tenants taking turns on a shared machine; not to their cache use).</summary>
    public double? CpuPeakFraction { get; init; }

    /// <summary>
    /// Writes the record as one JSON object with the issue's fields, the same for every backend (the CPU bench and the
    /// CUDA one share it, so a field means the same thing in both); <c>cpu_peak_fraction</c> and <c>spread</c> are the
    /// CPU bench's own and are written only for it.
    /// </summary>
    public void Write(Utf8JsonWriter w, string backend)
    {
        w.WriteStartObject();
        w.WriteString("method", Method);
        w.WriteString("form", Form);
        w.WriteString("backend", backend);
        w.WriteNumber("T", T);
        w.WriteNumber("D", D);
        w.WriteNumber("H", H);
        Number(w, "tokens_per_s", TokensPerS);
        Number(w, "us_per_token", UsPerToken);
        Number(w, "gflops", Gflops);
        Number(w, "peak_fraction", PeakFraction);
        if (backend == "cpu") Number(w, "cpu_peak_fraction", CpuPeakFraction);
        Number(w, "max_rel_err", MaxRelErr);
        if (backend == "cpu") Number(w, "spread", Spread);
        w.WriteString("status", Passed ? "ok" : "FAILED");
        w.WriteEndObject();
    }

}

/// <summary>
/// <c>attend bench linear [--json FILE] [--quick] [--full]</c>: the linear / recurrent family. Measures the FMA peak;
/// times the chunked forward of the state kernel (the issue's headline, T = 16k, H = 8, D = 128, as a fraction of the
/// peak); every linear method's chunked prefill and recurrent decode step against exact causal softmax attention at the
/// same shape (tokens/s, the crossover length); and the decode time per token as the context grows (flat: a step on a
/// state). Every speed is checked against the float64 naive form in the same run; a failed check prints no speed.
/// </summary>
internal static class BenchLinearCommand
{
    private const double Tolerance = 1e-3;

    private sealed record Sweep(int[] Lengths, int D, int H, (int T, int H, int D) Headline, int[] Contexts, double MinSeconds);

    private static readonly Sweep DefaultSweep = new([1024, 2048, 4096, 8192], 64, 8, (16384, 8, 128), [1024, 4096, 16384, 65536], 0.2);
    private static readonly Sweep FullSweep = new([1024, 2048, 4096, 8192, 16384, 32768, 65536], 128, 8, (16384, 8, 128),
        [1024, 4096, 16384, 65536, 262144, 1048576], 0.5);
    private static readonly Sweep QuickSweep = new([64, 256], 16, 2, (512, 2, 32), [64, 512], 0.01);

    public static Command Create(TextWriter output, TextWriter error)
    {
        var json = new Option<string?>("--json") { Description = "Also write the records as JSON to this file." };
        var quick = new Option<bool>("--quick") { Description = "A tiny sweep that runs in seconds (tests, smoke checks)." };
        var full = new Option<bool>("--full") { Description = "The long sweep: T from 1k to 64k at D = 128, decode contexts to 1M (many minutes)." };
        var decodeOnly = new Option<bool>("--decode-only") { Description = "Only the decode time per token at contexts 1k to 1M (H = 8, D = 128)." };
        var backend = new Option<string>("--backend") { Description = "cpu (default) or cuda (chunked forward and decode step on the GPU, bf16, H = 16, D = 128).", DefaultValueFactory = _ => "cpu" };
        var gatedBackward = new Option<bool>("--gated-backward")
        {
            Description = "Only forward + backward tokens/s of GLA, Gated DeltaNet, DeltaNet and KDA at T = 4k and 16k (H = 8, D = 128): " +
                          "the matrix-product backward against the reverse recurrence, in paired A/B runs (--quick: T = 512).",
        };
        var crossover = new Option<bool>("--crossover")
        {
            Description = "Only the prefill crossover against exact causal attention: every linear method's chunked prefill and the exact kernel " +
                          "at each length (H = 8, D = 64; default T = 1k to 64k, many minutes), wall and CPU time; see --lengths, --methods, --runs.",
        };
        var lengths = new Option<string?>("--lengths") { Description = "With --crossover: comma-separated prefill lengths (default 1024,2048,4096,8192,16384,32768,65536)." };
        var methodNames = new Option<string?>("--methods") { Description = "With --crossover: comma-separated linear method names (default: every method of the linear family)." };
        var runs = new Option<int>("--runs") { Description = "With --crossover: timed calls per method and length after one warm-up (default 3; the exact kernel: 2 from 32k).", DefaultValueFactory = _ => 3 };
        var command = new Command("linear",
            "Linear / recurrent attention: chunked forward vs the FMA peak, every linear method's prefill tokens/s and decode µs/token " +
            "against exact causal attention (crossover length), decode time per token from 1k to 1M of context.")
        { json, quick, full, decodeOnly, backend, gatedBackward, crossover, lengths, methodNames, runs };
        command.SetAction(parse => parse.GetValue(backend)!.ToLowerInvariant() switch
        {
            "cpu" when parse.GetValue(crossover) && (parse.GetValue(quick) || parse.GetValue(full) || parse.GetValue(decodeOnly) || parse.GetValue(gatedBackward)) =>
                throw new UserError("--crossover takes none of --quick, --full, --decode-only, --gated-backward."),
            "cpu" when parse.GetValue(crossover) => BenchLinearCrossover.Execute(parse.GetValue(json), parse.GetValue(lengths), parse.GetValue(methodNames), parse.GetValue(runs), output, error),
            "cpu" when parse.GetValue(lengths) is not null || parse.GetValue(methodNames) is not null => throw new UserError("--lengths and --methods go with --crossover."),
            "cpu" when parse.GetValue(gatedBackward) => BenchLinearGatedBackward.Execute(parse.GetValue(quick), parse.GetValue(quick) ? 1 : 3, output),
            "cpu" => Execute(parse.GetValue(json), parse.GetValue(quick), parse.GetValue(full), output, error, parse.GetValue(decodeOnly)),
            "cuda" when parse.GetValue(gatedBackward) || parse.GetValue(full) || parse.GetValue(decodeOnly) || parse.GetValue(crossover) =>
                throw new UserError("--backend cuda runs its own fixed set (chunked forward, forward+backward, decode step); --gated-backward, --full, --decode-only and --crossover are CPU options."),
            "cuda" => CudaLinearBench.Execute(parse.GetValue(json), parse.GetValue(quick), output, error),
            string other => throw new UserError($"--backend: unknown backend '{other}' (cpu or cuda)."),
        });
        return command;
    }

    internal static int Execute(string? jsonPath, bool quick, bool full, TextWriter output, TextWriter error, bool decodeOnly = false)
    {
        if (jsonPath is not null)
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(jsonPath));
            if (dir is not null && !Directory.Exists(dir)) throw new UserError($"--json: directory of '{jsonPath}' does not exist.");
        }
        if (quick && full) throw new UserError("--quick and --full exclude each other.");
        if (decodeOnly && (quick || full)) throw new UserError("--decode-only takes neither --quick nor --full.");
        Sweep sweep = quick ? QuickSweep : full ? FullSweep : DefaultSweep;
        IAttentionMethod[] methods = MethodCatalog.Runnable.Where(m => m.Info.Family == "linear").ToArray();
        if (decodeOnly)
        {
            sweep = FullSweep with { Lengths = [] };
            methods = [];
        }
        IAnsiConsole console = Terminal.For(output);
        var records = new List<LinearRecord>();
        Ceilings? ceilings = null;
        var wall = Stopwatch.StartNew();
        console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                int steps = 3 + sweep.Lengths.Length + methods.Length + sweep.Contexts.Length;
                ProgressTask task = ctx.AddTask("ceilings", maxValue: steps);
                Ceilings Measure() => quick ? Ceilings.Measure(0.05, 32L << 20) : Ceilings.Measure(0.3, 256L << 20);
                ceilings = Measure();
                task.Increment(1);

                task.Description = "chunked forward and backward (headline)";
                if (!decodeOnly) records.AddRange(Headline(sweep));
                task.Increment(1);

                foreach (int t in sweep.Lengths)
                {
                    task.Description = $"exact causal T={t}";
                    records.Add(Exact(t, sweep));
                    task.Increment(1);
                }
                foreach (IAttentionMethod m in methods)
                {
                    task.Description = Markup.Escape(m.Info.Name);
                    records.AddRange(Method(m, sweep));
                    task.Increment(1);
                }
                foreach (int context in sweep.Contexts)
                {
                    task.Description = $"decode at context {context}";
                    records.Add(DecodeAt(context, sweep));
                    task.Increment(1);
                }
                task.Description = "ceilings (again)";
                ceilings = Ceilings.Max(ceilings, Measure());
                task.Increment(1);
            });
        double peak = ceilings!.FmaGflops;
        for (int i = 0; i < records.Count; i++)
            if (records[i].Gflops is double g) records[i] = records[i] with { PeakFraction = g / peak };
        WriteTable(console, ceilings, records, wall.Elapsed);
        if (jsonPath is not null)
        {
            WriteJson(jsonPath, ceilings, records);
            output.WriteLine($"wrote {jsonPath}");
        }
        int failed = records.Count(r => !r.Passed);
        foreach (LinearRecord r in records.Where(r => !r.Passed))
            error.WriteLine($"attend bench linear: {r.Method} {r.Form} T={r.T} FAILED: error {r.MaxRelErr:E2} > {Tolerance}");
        return failed > 0 ? AttendApp.CheckFailed : 0;
    }

    // ---- measurements ----

    /// <summary>
    /// FLOPs of the chunked form for one call (the convention stated in docs/PERFORMANCE.md): per head and chunk of L
    /// tokens, the causal score pairs L(L+1)/2 × 2·(Df + Dv') plus the state read and write 2 × 2·L·Df·Dv'; the delta
    /// rules add K̃S (2·L·Df·Dv'), the strictly lower K-scores L(L−1)/2 × 2·Df and T·W (L(L+1)/2 × 2·Dv').
    /// Computed-but-masked work (the upper triangles) is not counted.
    /// </summary>
    internal static double ChunkedFlops(LinearConfig c)
    {
        double total = 0;
        int df = c.FeatureDim, dv = c.StateColumns;
        for (int n = 0; n < c.Sequences; n++)
        {
            c.Range(n, out _, out int start, out int end);
            for (int c0 = start; c0 < end; c0 += c.ChunkSize)
            {
                double l = Math.Min(c.ChunkSize, end - c0);
                double pairs = l * (l + 1) / 2;
                total += pairs * 2 * (df + dv) + 4 * l * df * dv;
                if (c.IsDelta) total += 2 * l * df * dv + (pairs - l) * 2 * df + pairs * 2 * dv;
            }
        }
        return total * c.Shape.Heads;
    }

    /// <summary>
    /// FLOPs of the extra methods' default forward (their default parameters, Dk = Dv = d, per head; exponentials and
    /// pooling not counted), or null where no simple count applies (kernelized RPE's FFTs, Titans' inner gradient steps):
    /// Aaren 2T(Dk + Dv) (a score and a value update per token); Agent Attention with n = 64 agents 4nT(Dk + Dv) (two
    /// softmax products each way); GAM with S = 64 slots and W = 3 taps T(2WD + 4SD); Local Linear Attention per causal
    /// pair 6d + 4d² (score, two weighted means, the covariance products XᵀX and YᵀX) and per query d³/3 + 4d² (Cholesky,
    /// solve, read-out).
    /// </summary>
    internal static double? ExtraFlops(string name, int t, int heads, int d)
    {
        double pairs = (double)t * (t + 1) / 2;
        double? perHead = name switch
        {
            "aaren" => 2.0 * t * (d + d),
            "agent-attention" => 4.0 * 64 * t * (d + d),
            "gam" => (double)t * (2 * 3 * d + 4 * 64 * d),
            "local-linear-attention" => pairs * (6.0 * d + 4.0 * d * d) + t * (d * (double)d * d / 3 + 4.0 * d * d),
            _ => null,
        };
        return perHead * heads;
    }

    /// <summary>
    /// FLOPs of the chunked backward (additive, no decay): per head and chunk, the scores and their gradient (causal
    /// pairs × 2·(Df + Dv)), dA·K and dAᵀ·Q (pairs × 4·Df), Aᵀ·dO (pairs × 2·Dv), and five state-sized products (the
    /// forward sweep's state update, dO·S₀ᵀ, K·dS, V·dSᵀ, Qᵀ·dO: 5 × 2·L·Df·Dv).
    /// </summary>
    internal static double ChunkedBackwardFlops(LinearConfig c)
    {
        double total = 0;
        int df = c.FeatureDim, dv = c.StateColumns;
        for (int n = 0; n < c.Sequences; n++)
        {
            c.Range(n, out _, out int start, out int end);
            for (int c0 = start; c0 < end; c0 += c.ChunkSize)
            {
                double l = Math.Min(c.ChunkSize, end - c0), pairs = l * (l + 1) / 2;
                total += pairs * 2 * (df + dv) + pairs * 4 * df + pairs * 2 * dv + 10 * l * df * dv;
            }
        }
        return total * c.Shape.Heads;
    }

    private static IEnumerable<LinearRecord> Headline(Sweep sweep)
    {
        yield return HeadlineForward(sweep);
        yield return HeadlineBackward(sweep);
    }

    private static LinearRecord HeadlineBackward(Sweep sweep)
    {
        (int t, int h, int d) = sweep.Headline;
        t = Math.Min(t, 4096);
        long n = (long)t * h * d;
        float[] q = Scaled(GaussianData.Create(n, 61), 1 / Math.Sqrt(d)), k = GaussianData.Create(n, 62), v = GaussianData.Create(n, 63), dO = GaussianData.Create(n, 64);
        float[] dq = new float[n], dk = new float[n], dv = new float[n];
        var inputs = new LinearInputs { Shape = LinearShape.Mha(1, t, h, d), Q = q, K = k, V = v };
        var options = new LinearAttentionOptions();
        LinearConfig config = LinearConfig.Resolve(inputs, options);
        (Timing timing, double cpu) = MeasureWithCpu(() => LinearAttention.Backward(new LinearInputs { Shape = LinearShape.Mha(1, t, h, d), Q = q, K = k, V = v },
            options, dO, default, new LinearGradients { Q = dq, K = dk, V = dv }), sweep.MinSeconds);
        double fmaPerCpu = FmaPerCpuSecond(0.3);
        // Check on a 128-token prefix against the float64 reference's gradients (the prefix's own loss).
        int p = Math.Min(t, 128);
        int m = p * h * d;
        var prefix = new LinearInputs { Shape = LinearShape.Mha(1, p, h, d), Q = q.AsSpan(0, m), K = k.AsSpan(0, m), V = v.AsSpan(0, m) };
        float[] pq = new float[m], pk = new float[m], pv = new float[m];
        LinearAttention.Backward(prefix, options, dO.AsSpan(0, m), default, new LinearGradients { Q = pq, K = pk, V = pv });
        Reference.ReferenceLinearGradients r = Reference.ReferenceLinearAttention.Backward(prefix, options, dO.AsSpan(0, m), default);
        double err = Math.Max(Fidelity.MaxRelativeError<float>(pq, r.Q), Math.Max(Fidelity.MaxRelativeError<float>(pk, r.K), Fidelity.MaxRelativeError<float>(pv, r.V)));
        double seconds = timing.MedianMs / 1e3;
        return new LinearRecord("core", "backward", t, d, h, t / seconds, null, null, err, timing.SpreadMs / timing.MedianMs)
        {
            Gflops = ChunkedBackwardFlops(config) / seconds / 1e9, Passed = err <= Tolerance, CpuPeakFraction = ChunkedBackwardFlops(config) / cpu / fmaPerCpu,
        };
    }

    /// <summary>FMA FLOPs per CPU-second of this process: 16 independent Vector512 (or Vector256) FMA chains per thread on every core.</summary>
    private static double FmaPerCpuSecond(double seconds)
    {
        int threads = Environment.ProcessorCount;
        long iterations = 1 << 22;
        double best = 0;
        for (int run = 0; run < 3; run++)
        {
            TimeSpan cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            var wall = Stopwatch.StartNew();
            float sink = 0;
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => { float x = FmaChains(iterations); lock (s_sink) sink += x; });
            double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            int lanes = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? 16 : 8;
            if (cpu > 0) best = Math.Max(best, threads * (double)iterations * 16 * lanes * 2 / cpu);
            if (wall.Elapsed.TotalSeconds < seconds / 3) iterations *= 2;
            GC.KeepAlive(sink);
        }
        return best;
    }

    private static readonly object s_sink = new();

    private static float FmaChains(long n)
    {
        if (System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated)
        {
            var b = System.Runtime.Intrinsics.Vector512.Create(0.9999f);
            var a = System.Runtime.Intrinsics.Vector512.Create(1e-4f);
            var c0 = a; var c1 = a; var c2 = a; var c3 = a; var c4 = a; var c5 = a; var c6 = a; var c7 = a;
            var c8 = a; var c9 = a; var c10 = a; var c11 = a; var c12 = a; var c13 = a; var c14 = a; var c15 = a;
            for (long i = 0; i < n; i++)
            {
                c0 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c0, b, a); c1 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c1, b, a);
                c2 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c2, b, a); c3 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c3, b, a);
                c4 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c4, b, a); c5 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c5, b, a);
                c6 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c6, b, a); c7 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c7, b, a);
                c8 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c8, b, a); c9 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c9, b, a);
                c10 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c10, b, a); c11 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c11, b, a);
                c12 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c12, b, a); c13 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c13, b, a);
                c14 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c14, b, a); c15 = System.Runtime.Intrinsics.Vector512.FusedMultiplyAdd(c15, b, a);
            }
            return System.Runtime.Intrinsics.Vector512.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 + c12 + c13 + c14 + c15);
        }
        var b2 = System.Runtime.Intrinsics.Vector256.Create(0.9999f);
        var a2 = System.Runtime.Intrinsics.Vector256.Create(1e-4f);
        var d0 = a2; var d1 = a2; var d2 = a2; var d3 = a2; var d4 = a2; var d5 = a2; var d6 = a2; var d7 = a2;
        var d8 = a2; var d9 = a2; var d10 = a2; var d11 = a2; var d12 = a2; var d13 = a2; var d14 = a2; var d15 = a2;
        for (long i = 0; i < n; i++)
        {
            d0 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d0, b2, a2); d1 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d1, b2, a2);
            d2 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d2, b2, a2); d3 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d3, b2, a2);
            d4 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d4, b2, a2); d5 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d5, b2, a2);
            d6 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d6, b2, a2); d7 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d7, b2, a2);
            d8 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d8, b2, a2); d9 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d9, b2, a2);
            d10 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d10, b2, a2); d11 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d11, b2, a2);
            d12 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d12, b2, a2); d13 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d13, b2, a2);
            d14 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d14, b2, a2); d15 = System.Runtime.Intrinsics.Vector256.FusedMultiplyAdd(d15, b2, a2);
        }
        return System.Runtime.Intrinsics.Vector256.Sum(d0 + d1 + d2 + d3 + d4 + d5 + d6 + d7 + d8 + d9 + d10 + d11 + d12 + d13 + d14 + d15);
    }

    /// <summary>Times <paramref name="action"/> with <see cref="BenchTimer"/> and also returns its CPU seconds per call.</summary>
    private static (Timing Wall, double CpuSeconds) MeasureWithCpu(Action action, double minSeconds)
    {
        int calls = 0;
        TimeSpan cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        Timing t = BenchTimer.Measure(() => { action(); calls++; }, minSeconds);
        double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        return (t, cpu / Math.Max(1, calls));
    }

    private static LinearRecord HeadlineForward(Sweep sweep)
    {
        (int t, int h, int d) = sweep.Headline;
        float[] q = GaussianData.Create((long)t * h * d, 11), k = GaussianData.Create((long)t * h * d, 12), v = GaussianData.Create((long)t * h * d, 13);
        float[] o = new float[(long)t * h * d];
        var inputs = new LinearInputs { Shape = LinearShape.Mha(1, t, h, d), Q = q, K = k, V = v };
        var options = new LinearAttentionOptions();
        LinearConfig config = LinearConfig.Resolve(inputs, options);
        (Timing timing, double cpu) = MeasureWithCpu(() => LinearAttention.Forward(new LinearInputs { Shape = LinearShape.Mha(1, t, h, d), Q = q, K = k, V = v }, options, o, default), sweep.MinSeconds);
        double fmaPerCpu = FmaPerCpuSecond(0.3);
        // Check: the first 256 tokens of the chunked output depend only on the first 256 tokens, so the naive form on
        // that prefix is their exact value.
        double err = PrefixError(q, k, v, o, t, h, d, options);
        double seconds = timing.MedianMs / 1e3;
        return new LinearRecord("core", "chunked", t, d, h, t / seconds, null, null, err, timing.SpreadMs / timing.MedianMs)
        {
            Gflops = ChunkedFlops(config) / seconds / 1e9, Passed = err <= Tolerance, CpuPeakFraction = ChunkedFlops(config) / cpu / fmaPerCpu,
        };
    }

    private static float[] Scaled(float[] x, double s)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i++) r[i] = (float)(x[i] * s);
        return r;
    }

    private static double PrefixError(float[] q, float[] k, float[] v, float[] o, int t, int h, int d, LinearAttentionOptions options)
    {
        int p = Math.Min(t, 256);
        long n = (long)p * h * d;
        var inputs = new LinearInputs { Shape = LinearShape.Mha(1, p, h, d), Q = q.AsSpan(0, (int)n), K = k.AsSpan(0, (int)n), V = v.AsSpan(0, (int)n) };
        (double[] exact, _) = Reference.ReferenceLinearAttention.Forward(inputs, options);
        return Fidelity.MaxRelativeError<float>(o.AsSpan(0, (int)n), exact);
    }

    private static LinearRecord Exact(int t, Sweep sweep)
    {
        IAttentionMethod exact = MethodCatalog.FindRunnable("exact")!;
        MethodInputs inputs = Inputs("exact", 1, t, sweep.H, sweep.D, 21);
        Timing timing = BenchTimer.Measure(() => exact.Run(inputs, MethodArguments.Parse(["mask=causal"])), sweep.MinSeconds);
        double seconds = timing.MedianMs / 1e3;
        return new LinearRecord("exact", "exact", t, sweep.D, sweep.H, t / seconds, null, null, null, timing.SpreadMs / timing.MedianMs);
    }

    private static IEnumerable<LinearRecord> Method(IAttentionMethod method, Sweep sweep)
    {
        string name = method.Info.Name;
        // Each method runs the forms its `form` parameter lists, with `chunk` only where it has one.
        string[] forms = FormsOf(method);
        bool hasChunk = method.Info.Parameters.Any(p => p.Name == "chunk");
        string[] Args(string form) => hasChunk ? [$"form={form}", "chunk=16"] : [$"form={form}"];
        // The same run checks the method: its fast forms against the naive form on a small shape.
        MethodInputs small = Inputs(name, 2, 67, 2, Math.Min(sweep.D, 16), 5);
        MethodResult naive = method.Run(small, MethodArguments.Parse(Args("naive")));
        double err = 0;
        foreach (string form in forms)
        {
            if (form == "naive") continue;
            MethodResult r = method.Run(small, MethodArguments.Parse(Args(form)));
            err = Math.Max(err, Fidelity.MaxRelativeError<float>(r.Output.Data, Array.ConvertAll(naive.Output.Data, x => (double)x)));
        }
        bool passed = err <= Tolerance;
        int d = name == "based" ? 16 : sweep.D;
        MethodTensor? state = null, windowState = null;
        int maxT = MaxLength(name);
        foreach (int t in sweep.Lengths)
        {
            if (t > maxT || !forms.Contains("chunked")) continue;
            MethodInputs inputs = Inputs(name, 1, t, sweep.H, d, 31);
            MethodResult? last = null;
            Timing timing = BenchTimer.Measure(() => last = method.Run(inputs, MethodArguments.Parse(["form=chunked"])), sweep.MinSeconds);
            double seconds = timing.MedianMs / 1e3;
            LinearConfig? config = ConfigOf(name, inputs);
            state = last!.Extras.GetValueOrDefault("state");
            windowState = last.Extras.GetValueOrDefault("window_state");
            yield return new LinearRecord(name, "chunked", t, d, sweep.H, passed ? t / seconds : null, null, null, err, timing.SpreadMs / timing.MedianMs)
            {
                Gflops = !passed ? null : config is not null ? ChunkedFlops(config) / seconds / 1e9 : ExtraFlops(name, t, sweep.H, d) / seconds / 1e9,
                Passed = passed,
            };
        }
        if (!forms.Contains("recurrent")) yield break; // no step form (the state would be the whole prefix): no decode row
        if (state is null) yield break; // a call without a recurrent state (none of the defaults): no decode row
        // Decode: a timed sample is a chain of steps, each a T = 1 recurrent call on the previous call's state (the
        // adapter's per-call work included), so one preempted microsecond does not make the sample. Based also carries
        // its window branch's last keys and values (window_state), as a real decode step does.
        const int chain = 32;
        MethodInputs[] steps = new MethodInputs[chain];
        for (int i = 0; i < chain; i++) steps[i] = Inputs(name, 1, 1, sweep.H, d, 41 + i);
        Timing decode = BenchTimer.Measure(() =>
        {
            MethodTensor s = state;
            MethodTensor? w = windowState;
            for (int i = 0; i < chain; i++)
            {
                MethodInputs step = Inputs(steps[i]);
                step.Add("state", s);
                if (w is not null) step.Add("window_state", w);
                MethodResult r = method.Run(step, MethodArguments.Parse(["form=recurrent"]));
                s = r.Extras["state"];
                if (w is not null) w = r.Extras["window_state"];
            }
        }, sweep.MinSeconds, minRuns: 5);
        double us = decode.MedianMs * 1e3 / chain;
        yield return new LinearRecord(name, "recurrent", sweep.Lengths[^1], d, sweep.H, passed ? 1e6 / us : null,
            passed ? us : null, null, err, decode.SpreadMs / decode.MedianMs) { Passed = passed };
    }

    /// <summary>The forms a method's <c>form</c> parameter lists (e.g. <c>naive|chunked|recurrent</c>).</summary>
    internal static string[] FormsOf(IAttentionMethod method)
    {
        MethodParameter? form = method.Info.Parameters.FirstOrDefault(p => p.Name == "form");
        return form is null ? ["chunked"] : form.Type.Split('|');
    }

    /// <summary>
    /// The longest prefill a method is timed at: methods whose fast form is still quadratic or worse stop early so the
    /// sweep stays short (Local Linear Attention is O(T²·D²); kernelized RPE's FFT form runs in float64).
    /// </summary>
    internal static int MaxLength(string name) => name switch
    {
        "local-linear-attention" => 1024,
        "kernelized-rpe" => 4096,
        _ => int.MaxValue,
    };

    /// <summary>The resolved state-kernel config of a method's default call (for the FLOP count), or null when it has none.</summary>
    private static LinearConfig? ConfigOf(string name, MethodInputs inputs)
    {
        LinearShape s = Methods.Linear.LinearMethod.ShapeOf(inputs);
        LinearAttentionOptions? options = name switch
        {
            "linear-attention" or "nalaformer" or "hedgehog" => new LinearAttentionOptions { Normalization = LinearNormalization.Denominator },
            "based" => new LinearAttentionOptions { FeatureMap = FeatureMaps.Taylor2, Normalization = LinearNormalization.Denominator },
            "deltanet" => new LinearAttentionOptions { Update = LinearUpdate.Delta },
            "gated-deltanet" => new LinearAttentionOptions { Decay = LinearDecay.ScalarGate, Update = LinearUpdate.GatedDelta },
            "kda" => new LinearAttentionOptions { Decay = LinearDecay.ChannelGate, Update = LinearUpdate.GatedDelta },
            "gla" => new LinearAttentionOptions { Decay = LinearDecay.ChannelGate },
            "lightning-attention" or "lightning-attention-2" or "transnormer" or "transnormerllm" or "retnet" => new LinearAttentionOptions(),
            _ => null,
        };
        if (options is null) return null;
        var li = new LinearInputs
        {
            Shape = s, Q = inputs.Q.Data, K = inputs.K.Data, V = inputs.V.Data,
            Gate = inputs.Find("g")?.Data ?? [], Beta = inputs.Find("beta")?.Data ?? [],
        };
        try { return LinearConfig.Resolve(li, options); }
        catch (ArgumentException) { return null; }
    }

    private static LinearRecord DecodeAt(int context, Sweep sweep)
    {
        (_, int h, int d) = sweep.Headline;
        var options = new LinearAttentionOptions { Form = LinearForm.Chunked };
        // The state after `context` tokens, by a real chunked prefill (not timed), streamed in slices of at most 64k
        // tokens that pass the state on, so a 1M context needs no 1M-token arrays.
        const int slice = 65536;
        float[] state = new float[(long)h * d * d], carried = new float[state.Length];
        float[] q = [], k = [], v = [];
        for (int done = 0, part = 0; done < context; done += slice, part++)
        {
            int len = Math.Min(slice, context - done);
            long n = (long)len * h * d;
            q = Scaled(GaussianData.Create(n, 51 + 3 * part), 1 / Math.Sqrt(d));
            k = GaussianData.Create(n, 52 + 3 * part);
            v = GaussianData.Create(n, 53 + 3 * part);
            var o = new float[n];
            LinearAttention.Forward(new LinearInputs { Shape = LinearShape.Mha(1, len, h, d), Q = q, K = k, V = v, InitialState = done == 0 ? default : carried },
                options, o, state);
            (state, carried) = (carried, state);
        }
        state = carried;
        float[] q1 = q.AsSpan(0, h * d).ToArray(), k1 = k.AsSpan(0, h * d).ToArray(), v1 = v.AsSpan(0, h * d).ToArray();
        float[] o1 = new float[h * d], next = new float[state.Length];
        var step = new LinearAttentionOptions { Form = LinearForm.Recurrent };
        const int chain = 32;
        float[] a = (float[])state.Clone(), b = new float[state.Length];
        Timing timing = BenchTimer.Measure(() =>
        {
            for (int i = 0; i < chain; i++)
            {
                LinearAttention.Forward(new LinearInputs { Shape = LinearShape.Mha(1, 1, h, d), Q = q1, K = k1, V = v1, InitialState = a }, step, o1, b);
                (a, b) = (b, a);
            }
        }, sweep.MinSeconds, minRuns: 5);
        LinearAttention.Forward(new LinearInputs { Shape = LinearShape.Mha(1, 1, h, d), Q = q1, K = k1, V = v1, InitialState = state }, step, o1, next);
        // Check the step against the float64 recurrence from the same state.
        (double[] exact, _) = Reference.ReferenceLinearAttention.ForwardRecurrent(new LinearInputs
        {
            Shape = LinearShape.Mha(1, 1, h, d), Q = q1, K = k1, V = v1, InitialState = state,
        }, step);
        double err = Fidelity.MaxRelativeError<float>(o1, exact);
        double us = timing.MedianMs * 1e3 / chain;
        return new LinearRecord("core", "recurrent", context, d, h, 1e6 / us, us, null, err, timing.SpreadMs / timing.MedianMs) { Passed = err <= Tolerance };
    }

    /// <summary>A fresh input set holding the same tensors (a state can then be added per call).</summary>
    private static MethodInputs Inputs(MethodInputs from)
    {
        var r = new MethodInputs(from.Q, from.K, from.V);
        foreach (string n in from.Names)
            if (n is not ("q" or "k" or "v")) r.Add(n, from.Find(n)!);
        return r;
    }

    /// <summary>Inputs a method reads: q/k/v and, by name, its gates (mid-range decays), β and map weights.</summary>
    internal static MethodInputs Inputs(string name, int b, int t, int h, int d, int seed)
    {
        if (name == "based") d = Math.Min(d, 16);
        long n = (long)b * t * h * d;
        float[] q = Scaled(GaussianData.Create(n, seed), 1 / Math.Sqrt(d)), k = GaussianData.Create(n, seed + 1), v = GaussianData.Create(n, seed + 2);
        var inputs = new MethodInputs(new MethodTensor(q, b, t, h, d), new MethodTensor(k, b, t, h, d), new MethodTensor(v, b, t, h, d));
        var rng = new Random(seed);
        float[] Gates(long count)
        {
            var g = new float[count];
            for (long i = 0; i < count; i++) g[i] = (float)Math.Log(0.9 + 0.1 * rng.NextDouble());
            return g;
        }
        if (name is "gla" or "kda") inputs.Add("g", new MethodTensor(Gates(n), b, t, h, d));
        if (name is "gated-deltanet") inputs.Add("g", new MethodTensor(Gates((long)b * t * h), b, t, h));
        if (name is "deltanet" or "gated-deltanet" or "kda")
        {
            var beta = new float[(long)b * t * h];
            for (long i = 0; i < beta.LongLength; i++) beta[i] = (float)(0.2 + 0.8 * rng.NextDouble());
            inputs.Add("beta", new MethodTensor(beta, b, t, h));
        }
        return inputs;
    }

    // ---- report ----

    private static string F(double? v, string format) => v is double x ? x.ToString(format, CultureInfo.InvariantCulture) : "-";

    private static void WriteTable(IAnsiConsole console, Ceilings ceilings, List<LinearRecord> records, TimeSpan wall)
    {
        console.WriteLine($"ceilings: FMA peak {F(ceilings.FmaGflops, "F1")} GFLOP/s ({ceilings.FmaIsa}, {ceilings.Threads} threads)");
        var exact = records.Where(r => r.Method == "exact").ToDictionary(r => r.T, r => r.TokensPerS);
        int exactD = records.FirstOrDefault(r => r.Method == "exact")?.D ?? -1;
        var table = new Table().AddColumn(new TableColumn("method").NoWrap())
            .AddColumns("form", "T / context", "H", "D", "tokens/s", "µs/token", "GFLOP/s", "% peak", "% peak (cpu-time)", "× exact", "max rel err", "spread");
        foreach (LinearRecord r in records)
        {
            string vsExact = r.Form == "chunked" && r.D == exactD && exact.TryGetValue(r.T, out double? e) && e is double ev && r.TokensPerS is double tv ? F(tv / ev, "F2") : "-";
            string err = F(r.MaxRelErr, "0.0E+0");
            table.AddRow(Markup.Escape(r.Method), r.Form, r.T.ToString(CultureInfo.InvariantCulture), r.H.ToString(CultureInfo.InvariantCulture),
                r.D.ToString(CultureInfo.InvariantCulture), F(r.TokensPerS, "N0"), F(r.UsPerToken, "F1"), F(r.Gflops, "F1"),
                r.PeakFraction is double p ? F(100 * p, "F1") + "%" : "-", r.CpuPeakFraction is double cp ? F(100 * cp, "F1") + "%" : "-", vsExact, r.Passed ? err : $"[red]{Markup.Escape(err)}[/]", F(100 * r.Spread, "F0") + "%");
        }
        console.Write(table);
        var cross = new Table().AddColumn("method").AddColumn("crossover vs exact causal (first swept T where linear prefill is faster)");
        foreach (var g in records.Where(r => r.Form == "chunked" && r.Method != "core").GroupBy(r => r.Method))
            cross.AddRow(Markup.Escape(g.Key), g.First().D == exactD ? Crossover(g.ToList(), exact) : $"- (runs at D = {g.First().D}, exact at D = {exactD})");
        console.Write(cross);
        console.WriteLine($"{records.Count(r => r.Passed)}/{records.Count} passed (tolerance {Tolerance:G2} against the float64 naive form); " +
            $"spread = (max − min)/median; total {wall.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture)} s. The machine may be shared: compare within one run.");
    }

    private static string Crossover(List<LinearRecord> rows, Dictionary<int, double?> exact)
    {
        foreach (LinearRecord r in rows.OrderBy(r => r.T))
            if (r.TokensPerS is double l && exact.TryGetValue(r.T, out double? e) && e is double ev && l >= ev)
                return r.T == rows.Min(x => x.T) ? $"≤ {r.T}" : $"{r.T}";
        return $"> {rows.Max(r => r.T)}";
    }

    private static void WriteJson(string path, Ceilings ceilings, List<LinearRecord> records)
    {
        using FileStream stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        w.WriteStartObject();
        w.WriteString("date", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
        w.WriteNumber("cores", Environment.ProcessorCount);
        w.WriteNumber("fma_gflops", ceilings.FmaGflops);
        w.WriteString("flop_convention", "chunked: per head and chunk of L tokens, causal pairs L(L+1)/2 x 2(Df+Dv) + state read/write 4 L Df Dv (+ delta-rule terms); masked work not counted; extra methods (BenchLinearCommand.ExtraFlops): aaren 2T(Dk+Dv), agent-attention 4nT(Dk+Dv), gam T(2WD+4SD), local-linear-attention pairs(6d+4d^2)+T(d^3/3+4d^2) per head; kernelized-rpe and titans-memory none");
        w.WriteStartArray("results");
        foreach (LinearRecord r in records) r.Write(w, "cpu");
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
