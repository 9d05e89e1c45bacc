using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Attend.Methods;
using Attend.Methods.Softmax;
using Attend.Workloads;
using Spectre.Console;
using static Attend.Cli.JsonNumbers;

namespace Attend.Cli;

/// <summary>One row of <c>attend bench sparse</c>.</summary>
internal sealed record SparseBenchResult(
    string Method, string Workload, int T, double? Density, double Recall, double RelErr, double SelectorMs,
    double KernelMs, double KernelSpreadMs, double ExactMs, string? Error, double CpuMs = double.NaN, double ExactCpuMs = double.NaN)
{
    /// <summary>Exact time over the method's whole time (selector + kernel).</summary>
    public double Speedup => ExactMs / Math.Max(1e-9, KernelMs + SelectorMs);
}

/// <summary>
/// <c>attend bench sparse</c>: every runnable method of the <c>sparse</c> and <c>approximation</c> families × workloads
/// (<see cref="WorkloadPresets"/>, <c>random</c> always included) × lengths, causal prefill, B=1, by default H=4 over 1 KV
/// head (grouped 4:1 like 8:2, at half the cost on two cores), D=128, float32. Per case: density (from the method), attention recall (exact softmax mass on the pairs the method's
/// coverage computes, float64, on sampled query rows of every head), relative L2 error against the exact kernel's
/// output, selector time, kernel time (median and spread), and speed-up over the exact causal kernel on the same
/// inputs. Then a density sweep (sliding window at several widths at the longest length) that checks the kernel's time
/// follows its density.
/// </summary>
internal static class BenchSparseCommand
{
    private const int RecallRows = 16;

    public static Command Create(TextWriter output, TextWriter error)
    {
        var json = new Option<string?>("--json") { Description = "Also write the results as JSON to this file." };
        var quick = new Option<bool>("--quick") { Description = "T=1024, workloads random and llm, one timed run: seconds." };
        var methods = new Option<string?>("--methods") { Description = "Comma-separated method names (default: every sparse and approximation method); name[key=value;key=value] runs a method with those parameters, e.g. minference[coverage=blocks]." };
        var workloads = new Option<string?>("--workloads") { Description = $"Comma-separated workloads from: {string.Join(", ", WorkloadPresets.Names)} (default: random, llm, needle)." };
        var lengths = new Option<string?>("--lengths") { Description = "Comma-separated sequence lengths (default: 4096,8192,16384)." };
        var runs = new Option<int?>("--runs") { Description = "Timed runs per case after one warm-up (default 3)." };
        var noSweep = new Option<bool>("--no-sweep") { Description = "Skip the density sweep." };
        var heads = new Option<int?>("--heads") { Description = "Query heads (default 4)." };
        var kvHeads = new Option<int?>("--kv-heads") { Description = "Key/value heads (default 1)." };
        var headDim = new Option<int?>("--head-dim") { Description = "Head dimension (default 128; the workloads' structure needs room, see WorkloadGenerator)." };
        var backend = new Option<string?>("--backend") { Description = "cpu (default) or cuda: selectors on the CPU, kernels on the GPU in bf16 (BenchSparseCuda; defaults H=8/2)." };
        var command = new Command("sparse",
            "Sparse and approximate methods x workloads x lengths: density, attention recall, relative error vs exact, selector and kernel time, " +
            "speed-up over the exact causal kernel; then a sliding-window density sweep (kernel time must follow density).")
        { json, quick, methods, workloads, lengths, runs, noSweep, heads, kvHeads, headDim, backend };
        command.SetAction(parse => parse.GetValue(backend)?.ToLowerInvariant() is "cuda"
            ? BenchSparseCuda.Execute(parse.GetValue(json), parse.GetValue(quick), parse.GetValue(methods), parse.GetValue(workloads),
                parse.GetValue(lengths), parse.GetValue(runs), parse.GetValue(noSweep),
                new Shape(parse.GetValue(heads) ?? 8, parse.GetValue(kvHeads) ?? 2, parse.GetValue(headDim) ?? 128), output, error)
            : parse.GetValue(backend) is { } other && !other.Equals("cpu", StringComparison.OrdinalIgnoreCase)
                ? throw new UserError($"--backend: unknown backend '{other}' (cpu or cuda).")
                : Execute(parse.GetValue(json), parse.GetValue(quick), parse.GetValue(methods), parse.GetValue(workloads),
            parse.GetValue(lengths), parse.GetValue(runs), parse.GetValue(noSweep),
            new Shape(parse.GetValue(heads) ?? 4, parse.GetValue(kvHeads) ?? 1, parse.GetValue(headDim) ?? 128), output, error));
        return command;
    }

    /// <summary>The attention shape of every case.</summary>
    internal readonly record struct Shape(int Heads, int KvHeads, int HeadDim);

    internal static int Execute(string? jsonPath, bool quick, string? methodList, string? workloadList, string? lengthList, int? runCount,
        bool noSweep, Shape shape, TextWriter output, TextWriter error)
    {
        if (shape.Heads < 1 || shape.KvHeads < 1 || shape.Heads % shape.KvHeads != 0)
            throw new UserError($"--heads {shape.Heads} and --kv-heads {shape.KvHeads}: the KV heads must divide the query heads.");
        if (shape.HeadDim < 16) throw new UserError($"--head-dim {shape.HeadDim}: the workloads need at least 16.");
        int Heads = shape.Heads, KvHeads = shape.KvHeads, HeadDim = shape.HeadDim;
        if (jsonPath is not null)
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(jsonPath));
            if (dir is not null && !Directory.Exists(dir)) throw new UserError($"--json: directory of '{jsonPath}' does not exist.");
        }
        List<IAttentionMethod> methods = SelectMethods(methodList);
        List<string> workloads = SelectWorkloads(workloadList, quick);
        List<int> lengths = SelectLengths(lengthList, quick);
        int runs = runCount ?? (quick ? 1 : 3);
        if (runs < 1) throw new UserError("--runs must be ≥ 1.");

        IAnsiConsole console = Terminal.For(output);
        var results = new List<SparseBenchResult>();
        var sweep = new List<SparseBenchResult>();
        var wall = Stopwatch.StartNew();
        int total = lengths.Count * workloads.Count * (methods.Count + 1) + (noSweep ? 0 : runs);
        console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                ProgressTask task = ctx.AddTask("sparse", maxValue: total);
                foreach (int t in lengths)
                {
                    double exactMs = double.NaN, exactCpuMs = double.NaN;
                    foreach (string name in workloads)
                    {
                        task.Description = Markup.Escape($"{name} T={t}: exact");
                        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(name, t, Heads, KvHeads, HeadDim), seed: 1234 + t);
                        MethodInputs inputs = w.ToInputs();
                        // The exact kernel's time does not depend on the values: time it on the first workload of each
                        // length, and only compute the reference output on the others.
                        (float[] exactOut, double ms, double cpuMs) = TimeExact(inputs, double.IsNaN(exactMs) ? runs : 0);
                        if (double.IsNaN(exactMs)) (exactMs, exactCpuMs) = (ms, cpuMs);
                        task.Increment(1);
                        var sampler = new RecallSampler(w);
                        foreach (IAttentionMethod m in methods)
                        {
                            task.Description = Markup.Escape($"{name} T={t}: {m.Info.Name}");
                            results.Add(RunCase(m, [], w, inputs, exactOut, exactMs, sampler, runs) with { ExactCpuMs = exactCpuMs });
                            task.Increment(1);
                        }
                    }
                }
                if (!noSweep)
                {
                    int t = lengths.Max();
                    task.Description = Markup.Escape($"sweep T={t}");
                    sweep.AddRange(Sweep(t, shape, runs, () => task.Increment(1)));
                }
                task.Description = "done";
            });

        WriteTable(console, results, $"methods x workloads x lengths (causal prefill, B=1, H={Heads}/{KvHeads}, D={HeadDim}, float32)");
        if (sweep.Count > 0)
        {
            WriteTable(console, sweep, "density sweep: sliding window on random inputs (kernel time must be <= 1.2 x density x exact)");
            foreach (SparseBenchResult r in sweep)
                if (r.Density is double d)
                    console.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                        $"  {r.Workload}: density {d:P1}: wall {r.KernelMs:F1} ms = {r.KernelMs / (d * r.ExactMs):F2} x density x exact ({r.ExactMs:F1} ms); " +
                        $"CPU time {r.CpuMs:F1} ms = {r.CpuMs / (d * r.ExactCpuMs):F2} x density x exact ({r.ExactCpuMs:F1} ms)")));
        }
        console.MarkupLine(Markup.Escape($"{results.Count + sweep.Count} cases in {wall.Elapsed.TotalSeconds:F0} s; {Environment.ProcessorCount} cores; timings on a shared machine are noisy."));
        if (jsonPath is not null)
        {
            WriteJson(jsonPath, [.. results, .. sweep], shape);
            output.WriteLine($"wrote {jsonPath}");
        }
        int failed = results.Count(r => r.Error is not null) + sweep.Count(r => r.Error is not null);
        foreach (SparseBenchResult r in results.Concat(sweep).Where(r => r.Error is not null))
            error.WriteLine($"attend bench sparse: {r.Method} on {r.Workload} T={r.T} FAILED: {r.Error}");
        return failed > 0 ? AttendApp.CheckFailed : 0;
    }

    private static readonly double[] SweepDensities = [0.05, 0.1, 0.25, 0.5];

    /// <summary>
    /// The density sweep: the kernel alone (<see cref="Attention.Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions?, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{float})"/>
    /// with a prebuilt block mask and preallocated outputs) on exact causal attention and on a causal sliding window at
    /// each of <see cref="SweepDensities"/>, timed in interleaved rounds (exact, then each window, repeated) so that the
    /// load of a shared machine falls on all of them alike; wall and process CPU time are both kept.
    /// </summary>
    private static List<SparseBenchResult> Sweep(int t, Shape shape, int runs, Action progress)
    {
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(WorkloadPresets.Random, t, shape.Heads, shape.KvHeads, shape.HeadDim), seed: 99);
        int h = w.Heads, hkv = w.KvHeads, d = w.HeadDim;
        var configs = new List<(IMaskMod Mask, string Label)> { (new CausalMask(), "exact") };
        foreach (double density in SweepDensities)
        {
            // A causal window of w keys covers about T·w − w²/2 of the T²/2 causal pairs: solve for the density.
            int width = Math.Max(1, (int)Math.Round(t * (1 - Math.Sqrt(1 - density))));
            configs.Add((MaskSpec.Intersect(new Methods.Sparse.Static.SinkWindowMask(0, width), new CausalMask()), $"sweep:window={width}"));
        }
        var plans = configs.Select(c => BlockMask.Create(c.Mask, t, t, 1, h)).ToArray();
        var outputs = configs.Select(_ => new float[(long)t * h * d]).ToArray();
        var lse = new float[(long)h * t];
        var wall = configs.Select(_ => new List<double>()).ToArray();
        var cpu = configs.Select(_ => new List<double>()).ToArray();
        for (int round = 0; round < Math.Max(1, runs); round++)
        {
            for (int c = 0; c < configs.Count; c++)
            {
                var options = new AttentionOptions { Mask = configs[c].Mask, BlockMask = plans[c] };
                TimeSpan cpu0 = ProcessCpu();
                long start = Stopwatch.GetTimestamp();
                Attention.Forward<float>(AttentionLayout.Bthd<float>(w.Q, 1, t, h, d), AttentionLayout.Bthd<float>(w.K, 1, t, hkv, d),
                    AttentionLayout.Bthd<float>(w.V, 1, t, hkv, d), options, AttentionLayout.Bthd<float>(outputs[c], 1, t, h, d), AttentionLayout.Lse(lse, 1, h, t));
                wall[c].Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                cpu[c].Add((ProcessCpu() - cpu0).TotalMilliseconds);
            }
            progress();
        }
        var sampler = new RecallSampler(w);
        double exactMs = Median(wall[0]), exactCpu = Median(cpu[0]);
        var results = new List<SparseBenchResult>();
        for (int c = 1; c < configs.Count; c++)
        {
            results.Add(new SparseBenchResult("streaming-llm", configs[c].Label, t, Methods.Sparse.Static.StaticPatternMethod.Density(plans[c], causal: true),
                sampler.Recall(new MaskCoverage(configs[c].Mask, t, t)), RelativeError(outputs[c], outputs[0]),
                0, Median(wall[c]), wall[c].Max() - wall[c].Min(), exactMs, null, Median(cpu[c]), exactCpu));
        }
        return results;
    }

    internal static List<IAttentionMethod> SelectMethods(string? list)
    {
        var all = MethodCatalog.Runnable.Where(m => m.Info.Family is "sparse" or "approximation").ToList();
        if (string.IsNullOrWhiteSpace(list)) return all;
        var chosen = new List<IAttentionMethod>();
        foreach (string raw in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // name[k=v;k2=v2]: the method with those parameters, reported under that label.
            int open = raw.IndexOf('[');
            string name = open < 0 ? raw : raw[..open];
            IAttentionMethod method = all.FirstOrDefault(m => string.Equals(m.Info.Name, name, StringComparison.OrdinalIgnoreCase))
                ?? throw new UserError($"--methods: unknown sparse method '{name}' (known: {string.Join(", ", all.Select(m => m.Info.Name))}).");
            if (open >= 0)
            {
                if (!raw.EndsWith(']') || raw.Length == open + 2)
                    throw new UserError($"--methods: '{raw}' must read name[key=value;key=value].");
                string[] pairs = raw[(open + 1)..^1].Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                foreach (string pair in pairs)
                {
                    if (!pair.Contains('=')) throw new UserError($"--methods: '{pair}' in '{raw}' is not key=value.");
                    // A misspelt key fails here, not after the exact runs at every length (minutes at 128k).
                    string key = pair[..pair.IndexOf('=')].Trim();
                    if (!method.Info.Parameters.Any(p => string.Equals(p.Name, key, StringComparison.OrdinalIgnoreCase)))
                        throw new UserError($"--methods: '{name}' has no parameter '{key}' (it takes: {string.Join(", ", method.Info.Parameters.Select(p => p.Name))}).");
                }
                method = new FixedArgumentsMethod(method, pairs, raw);
            }
            chosen.Add(method);
        }
        return chosen;
    }

    // A method run with fixed parameters (the bench passes none of its own), named by its spec.
    private sealed class FixedArgumentsMethod(IAttentionMethod inner, string[] pairs, string label) : IAttentionMethod
    {
        public MethodInfo Info { get; } = inner.Info with { Name = label };

        public MethodResult Run(MethodInputs inputs, MethodArguments arguments) => inner.Run(inputs, MethodArguments.Parse(pairs));
    }

    internal static List<string> SelectWorkloads(string? list, bool quick)
    {
        List<string> names = string.IsNullOrWhiteSpace(list)
            ? quick ? [WorkloadPresets.Random, WorkloadPresets.Llm] : [WorkloadPresets.Random, WorkloadPresets.Llm, WorkloadPresets.Needle]
            : [.. list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(n => n.ToLowerInvariant())];
        foreach (string n in names)
            if (!WorkloadPresets.IsKnown(n)) throw new UserError($"--workloads: unknown workload '{n}' (known: {string.Join(", ", WorkloadPresets.Names)}).");
        // The plain random case is always reported beside the structured ones.
        if (!names.Contains(WorkloadPresets.Random)) names.Insert(0, WorkloadPresets.Random);
        return names;
    }

    internal static List<int> SelectLengths(string? list, bool quick)
    {
        if (string.IsNullOrWhiteSpace(list)) return quick ? [1024] : [4096, 8192, 16384];
        var lengths = new List<int>();
        foreach (string raw in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(raw, NumberStyles.None, CultureInfo.InvariantCulture, out int t) || t < 64)
                throw new UserError($"--lengths: '{raw}' is not a length ≥ 64.");
            lengths.Add(t);
        }
        return lengths;
    }

    private static (float[] Output, double Ms, double CpuMs) TimeExact(MethodInputs inputs, int runs)
    {
        var exact = new ExactAttentionMethod();
        MethodArguments Args() => new MethodArguments().Set("mask", "causal");
        // The first run's output is the reference.
        var times = new List<double>();
        var cpu = new List<double>();
        TimeSpan firstCpu = ProcessCpu();
        long firstStart = Stopwatch.GetTimestamp();
        MethodResult result = exact.Run(inputs, Args());
        double firstMs = Stopwatch.GetElapsedTime(firstStart).TotalMilliseconds;
        // A short first run is a warm-up (JIT tiers, thread pool); a long one (≥ 2 s) counts as the first timed run.
        if (firstMs >= 2000 || runs == 0)
        {
            times.Add(firstMs);
            cpu.Add((ProcessCpu() - firstCpu).TotalMilliseconds);
        }
        while (times.Count < runs)
        {
            TimeSpan cpu0 = ProcessCpu();
            long start = Stopwatch.GetTimestamp();
            exact.Run(inputs, Args());
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            cpu.Add((ProcessCpu() - cpu0).TotalMilliseconds);
        }
        return (result.Output.Data, Median(times), Median(cpu));
    }

    private static SparseBenchResult RunCase(IAttentionMethod method, string[] template, Workload w, MethodInputs inputs,
        float[] exactOut, double exactMs, RecallSampler sampler, int runs)
    {
        try
        {
            // A warm-up only where a run is short (it brings the JIT's tiers and the thread pool up); every later run is timed.
            MethodResult? first = null;
                        if (exactMs < 2000) first = method.Run(inputs, Copy(template));
            var kernel = new List<double>();
            var selector = new List<double>();
            var cpu = new List<double>();
            for (int i = 0; i < runs; i++)
            {
                TimeSpan cpu0 = ProcessCpu();
                long start = Stopwatch.GetTimestamp();
                MethodResult r = method.Run(inputs, Copy(template));
                double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                cpu.Add((ProcessCpu() - cpu0).TotalMilliseconds);
                double sel = r.SelectorMs ?? 0;
                selector.Add(sel);
                kernel.Add(Math.Max(0, ms - sel));
                first ??= r;
            }
            double relErr = RelativeError(first!.Output.Data, exactOut);
            string? problem = double.IsFinite(relErr) ? null : "the output has NaN or infinite values";
            double recall = first.Coverage is null ? double.NaN : sampler.Recall(first.Coverage);
            return new SparseBenchResult(method.Info.Name, w.Name, w.Length, first.Density, recall, relErr, Median(selector),
                Median(kernel), kernel.Max() - kernel.Min(), exactMs, problem, Median(cpu));
        }
        catch (Exception e)
        {
            // Any failure of one method (a bad default, a bug) becomes a FAILED row and a non-zero exit, not the end of
            // the sweep over the other methods.
            return new SparseBenchResult(method.Info.Name, w.Name, w.Length, null, double.NaN, double.NaN, 0, 0, 0, exactMs, $"{e.GetType().Name}: {e.Message}");
        }
    }

    // MethodArguments tracks what was read, so every run parses a fresh copy of the same pairs.
    private static MethodArguments Copy(string[] pairs) => MethodArguments.Parse(pairs);

    internal static double RelativeError(float[] actual, float[] expected)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = (double)actual[i] - expected[i];
            num += diff * diff;
            den += (double)expected[i] * expected[i];
        }
        return den == 0 ? (num == 0 ? 0 : double.PositiveInfinity) : Math.Sqrt(num / den);
    }

    // CPU time of the whole process (all worker threads): on a machine shared with other jobs it follows the work done
    // more closely than the wall clock, which also counts the time the cores were lent to others.
    private static TimeSpan ProcessCpu()
    {
        using var p = Process.GetCurrentProcess();
        return p.TotalProcessorTime;
    }

    internal static double Median(List<double> values)
    {
        var v = values.Order().ToList();
        int n = v.Count;
        return n == 0 ? 0 : n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    }

    /// <summary>Exact causal softmax rows in float64 for a fixed sample of (head, query) pairs, reused across methods.</summary>
    internal sealed class RecallSampler
    {
        private readonly List<(int Head, int Query, double[] P)> _rows = [];
        private readonly int _length;

        public RecallSampler(Workload w)
        {
            _length = w.Length;
            var rng = new Random(7);
            int group = w.Heads / w.KvHeads, d = w.HeadDim;
            // Rows of every head: half spread over the sequence, half at needle queries when there are any.
            var picks = new List<(int, int)>();
            for (int h = 0; h < w.Heads; h++)
                for (int r = 0; r < RecallRows / 2; r++) picks.Add((h, w.Length / 2 + rng.Next(w.Length - w.Length / 2)));
            foreach (PlantedNeedle n in w.Needles.Where(n => n.Batch == 0)) picks.Add((n.Head, n.Query));
            foreach ((int h, int q) in picks)
            {
                var p = new double[q + 1];
                double max = double.NegativeInfinity;
                long qo = ((long)q * w.Heads + h) * d;
                for (int k = 0; k <= q; k++)
                {
                    long ko = ((long)k * w.KvHeads + h / group) * d;
                    double dot = 0;
                    for (int i = 0; i < d; i++) dot += (double)w.Q[qo + i] * w.K[ko + i];
                    p[k] = dot * w.Scale;
                    max = Math.Max(max, p[k]);
                }
                double sum = 0;
                for (int k = 0; k <= q; k++) { p[k] = Math.Exp(p[k] - max); sum += p[k]; }
                for (int k = 0; k <= q; k++) p[k] /= sum;
                _rows.Add((h, q, p));
            }
        }

        public double Recall(IPairCoverage coverage)
        {
            var covered = new bool[_length];
            double total = 0;
            foreach ((int h, int q, double[] p) in _rows)
            {
                coverage.CoveredKeys(0, h, q, covered);
                double kept = 0;
                for (int k = 0; k < p.Length; k++) if (covered[k]) kept += p[k];
                total += kept;
            }
            return _rows.Count == 0 ? double.NaN : total / _rows.Count;
        }
    }

    private static string F(double v, string format) => double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "-";

    private static void WriteTable(IAnsiConsole console, IReadOnlyList<SparseBenchResult> rows, string title)
    {
        var table = new Table().Title(Markup.Escape(title));
        foreach (string c in (string[])["method", "workload", "T", "density", "recall", "rel_err", "selector ms", "kernel ms", "± spread", "exact ms", "speed-up"])
            table.AddColumn(c);
        foreach (SparseBenchResult r in rows)
        {
            if (r.Error is not null)
            {
                table.AddRow(Markup.Escape(r.Method), Markup.Escape(r.Workload), r.T.ToString(CultureInfo.InvariantCulture), "[red]FAILED[/]",
                    Markup.Escape(r.Error.Length > 60 ? r.Error[..60] + "…" : r.Error), "", "", "", "", "", "");
                continue;
            }
            table.AddRow(Markup.Escape(r.Method), Markup.Escape(r.Workload), r.T.ToString(CultureInfo.InvariantCulture),
                F(r.Density ?? double.NaN, "F4"), F(r.Recall, "F4"), F(r.RelErr, "E2"), F(r.SelectorMs, "F1"), F(r.KernelMs, "F1"),
                F(r.KernelSpreadMs, "F1"), F(r.ExactMs, "F1"), F(r.Speedup, "F2") + "x");
        }
        console.Write(table);
    }

    private static void WriteJson(string path, IReadOnlyList<SparseBenchResult> rows, Shape shape)
    {
        using FileStream stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteStartObject("machine");
        w.WriteNumber("cores", Environment.ProcessorCount);
        w.WriteString("date", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
        w.WriteString("shape", $"B=1 H={shape.Heads} Hkv={shape.KvHeads} D={shape.HeadDim} float32 causal");
        w.WriteEndObject();
        w.WriteStartArray("results");
        foreach (SparseBenchResult r in rows)
        {
            w.WriteStartObject();
            SparseRecordJson.WriteCommon(w, r.Method, r.Workload, "cpu", r.T, r.Density, r.Recall, r.RelErr, r.SelectorMs, r.KernelMs, r.ExactMs);
            Number(w, "ms_spread", r.KernelSpreadMs);
            Number(w, "cpu_ms", r.CpuMs);
            Number(w, "exact_cpu_ms", r.ExactCpuMs);
            Number(w, "speedup", r.Error is null ? r.Speedup : double.NaN);
            if (r.Error is not null) w.WriteString("error", r.Error);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
