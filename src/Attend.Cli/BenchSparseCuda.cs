using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Attend.Cuda;
using Attend.Cuda.Sparse;
using Attend.Methods;
using Attend.Methods.Softmax;
using Attend.Workloads;
using static Attend.Cli.JsonNumbers;

namespace Attend.Cli;

/// <summary>
/// <c>attend bench sparse --backend cuda</c>: the sparse and approximate methods × workloads × lengths (default 16k,
/// 64k, 128k) with their selectors on the CPU and their kernels on the GPU (<see cref="MethodRunner"/> with backend
/// <c>cuda</c>: the float32 inputs are rounded to bf16 on the host, the kernel accumulates in float32). Per case:
/// density and attention recall (as on the CPU), relative L2 error against exact causal attention run the same way on
/// the GPU (so both sides carry bf16 rounding), the selector's time (CPU), the kernel's device time (CUDA events
/// around every launch of the run, <see cref="CudaKernelClock"/>), the rest of the run's wall time (host packing,
/// bf16 conversion, copies, flattening the plan: <c>host_ms</c>), and two speed-ups: the kernel's over the exact
/// kernel's device time, and the exact kernel's over selector + kernel. Then a density sweep at the longest length: causal
/// sliding windows on the flash kernel, the same pairs as a band of slash offsets on the token-level kernel, and the 5%
/// band plus 1000 scattered diagonals. Results are written to <c>--json</c> after every case, so a run cut short keeps what it measured.
/// </summary>
internal static class BenchSparseCuda
{
    /// <summary>One row: the CPU bench's fields plus the GPU's split of the time.</summary>
    internal sealed record Row(string Method, string Workload, int T, double? Density, double Recall, double RelErr, double SelectorMs,
        double KernelMs, double KernelSpreadMs, double HostMs, double WallMs, double ExactMs, double ExactWallMs, string? Error)
    {
        public double Speedup => ExactMs / Math.Max(1e-9, KernelMs);

        public double SpeedupWithSelector => ExactMs / Math.Max(1e-9, KernelMs + SelectorMs);
    }

    public static int Execute(string? jsonPath, bool quick, string? methodList, string? workloadList, string? lengthList, int? runCount,
        bool noSweep, BenchSparseCommand.Shape shape, TextWriter output, TextWriter error)
    {
        if (shape.Heads < 1 || shape.KvHeads < 1 || shape.Heads % shape.KvHeads != 0)
            throw new UserError($"--heads {shape.Heads} and --kv-heads {shape.KvHeads}: the KV heads must divide the query heads.");
        if (!CudaBackend.IsAvailable(out string why))
        {
            error.WriteLine($"attend bench sparse: the cuda backend cannot run on this machine: {why}.");
            return AttendApp.UsageError;
        }
        CudaBackend.Register();
        List<IAttentionMethod> methods = BenchSparseCommand.SelectMethods(methodList);
        List<string> workloads = BenchSparseCommand.SelectWorkloads(workloadList, quick);
        List<int> lengths = string.IsNullOrWhiteSpace(lengthList) ? quick ? [4096] : [16384, 65536, 131072] : BenchSparseCommand.SelectLengths(lengthList, quick);
        int runs = runCount ?? (quick ? 1 : 2);
        if (runs < 1) throw new UserError("--runs must be ≥ 1.");
        string device = CudaBackend.Describe();
        output.WriteLine($"device: {device}");
        output.WriteLine($"shape: B=1 H={shape.Heads}/{shape.KvHeads} D={shape.HeadDim}, causal prefill, float32 inputs computed in bf16 on the GPU; {Environment.ProcessorCount} CPU cores for the selectors");
        CudaKernelClock.Enabled = true;
        var rows = new List<Row>();
        var wall = Stopwatch.StartNew();
        foreach (int t in lengths)
        {
            double exactMs = double.NaN, exactWall = double.NaN;
            foreach (string name in workloads)
            {
                Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(name, t, shape.Heads, shape.KvHeads, shape.HeadDim), seed: 1234 + t);
                MethodInputs inputs = w.ToInputs();
                var exact = new ExactAttentionMethod();
                // The exact kernel's time does not depend on the values: timed on the first workload of each length.
                (MethodResult reference, double kMs, _, double wMs) = Time(exact, inputs, ["mask=causal"], double.IsNaN(exactMs) ? runs : 1, warm: t <= 16384);
                if (double.IsNaN(exactMs)) (exactMs, exactWall) = (kMs, wMs);
                float[] exactOut = reference.Output.Data;
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name} T={t}: exact causal {exactMs:F2} ms on the GPU ({exactWall:F0} ms wall)"));
                var sampler = new BenchSparseCommand.RecallSampler(w);
                foreach (IAttentionMethod m in methods)
                {
                    Row row = RunCase(m, w, inputs, exactOut, exactMs, exactWall, sampler, runs, warm: t <= 16384);
                    rows.Add(row);
                    output.WriteLine(Line(row));
                    if (jsonPath is not null) WriteJson(jsonPath, rows, shape, device);
                }
            }
        }
        if (lengths.Count > 0 && !quick && !noSweep)
        {
            foreach (Row r in Sweep(lengths.Max(), shape, runs))
            {
                rows.Add(r);
                output.WriteLine(Line(r));
            }
            if (jsonPath is not null) WriteJson(jsonPath, rows, shape, device);
        }
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{rows.Count} cases in {wall.Elapsed.TotalSeconds:F0} s; NVRTC {KernelCompiler.TotalCompileSeconds:F1} s ({KernelCompiler.Compiled} compiled, {KernelCompiler.CacheHits} cached)"));
        if (jsonPath is not null) output.WriteLine($"wrote {jsonPath}");
        int failed = 0;
        foreach (Row r in rows.Where(r => r.Error is not null))
        {
            failed++;
            error.WriteLine($"attend bench sparse --backend cuda: {r.Method} on {r.Workload} T={r.T} FAILED: {r.Error}");
        }
        return failed > 0 ? AttendApp.CheckFailed : 0;
    }

    // Runs a method `runs` times (after a warm-up when asked): its first result, and the medians of device, selector and wall time.
    private static (MethodResult First, double KernelMs, double SelectorMs, double WallMs) Time(IAttentionMethod method, MethodInputs inputs, string[] args, int runs, bool warm)
    {
        MethodResult? first = warm ? method.Run(inputs, MethodArguments.Parse(args), CudaBackend.Name) : null;
        var kernel = new List<double>();
        var selector = new List<double>();
        var wallTimes = new List<double>();
        for (int i = 0; i < runs; i++)
        {
            CudaKernelClock.Reset();
            long start = Stopwatch.GetTimestamp();
            MethodResult r = method.Run(inputs, MethodArguments.Parse(args), CudaBackend.Name);
            wallTimes.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            kernel.Add(CudaKernelClock.TotalMilliseconds);
            selector.Add(r.SelectorMs ?? 0);
            first ??= r;
        }
        return (first!, BenchSparseCommand.Median(kernel), BenchSparseCommand.Median(selector), BenchSparseCommand.Median(wallTimes));
    }

    private static Row RunCase(IAttentionMethod method, Workload w, MethodInputs inputs, float[] exactOut, double exactMs, double exactWall,
        BenchSparseCommand.RecallSampler sampler, int runs, bool warm)
    {
        try
        {
            (MethodResult first, double kMs, double sMs, double wMs) = Time(method, inputs, [], runs, warm);
            double relErr = BenchSparseCommand.RelativeError(first.Output.Data, exactOut);
            string? problem = double.IsFinite(relErr) ? null : "the output has NaN or infinite values";
            if (problem is null && CudaKernelClock.Launches == 0) problem = "no kernel ran on the GPU";
            double recall = first.Coverage is null ? double.NaN : sampler.Recall(first.Coverage);
            return new Row(method.Info.Name, w.Name, w.Length, first.Density, recall, relErr, sMs, kMs, 0, Math.Max(0, wMs - sMs - kMs), wMs, exactMs, exactWall, problem);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new Row(method.Info.Name, w.Name, w.Length, null, double.NaN, double.NaN, 0, 0, 0, 0, 0, exactMs, exactWall, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
    }

    private static readonly double[] SweepDensities = [0.05, 0.1, 0.25, 0.5];

    // Causal sliding windows of several densities on random inputs: the kernel's device time must follow the density.
    private static List<Row> Sweep(int t, BenchSparseCommand.Shape shape, int runs)
    {
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(WorkloadPresets.Random, t, shape.Heads, shape.KvHeads, shape.HeadDim), seed: 99);
        MethodInputs inputs = w.ToInputs();
        var exact = new ExactAttentionMethod();
        (MethodResult full, double exactMs, _, double exactWall) = Time(exact, inputs, ["mask=causal"], runs, warm: false);
        var rows = new List<Row>();
        foreach (double density in SweepDensities)
        {
            int width = Math.Max(1, (int)Math.Round(t * (1 - Math.Sqrt(1 - density))));
            try
            {
                (MethodResult r, double kMs, _, double wMs) = Time(exact, inputs, [$"mask=causal+window:{width - 1},0"], runs, warm: false);
                double d = ((double)t * width - (double)width * (width - 1) / 2) / ((double)t * (t + 1) / 2);
                rows.Add(new Row("sliding-window", $"sweep:window={width}", t, d, double.NaN, BenchSparseCommand.RelativeError(r.Output.Data, full.Output.Data),
                    0, kMs, 0, Math.Max(0, wMs - kMs), wMs, exactMs, exactWall, null));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                rows.Add(new Row("sliding-window", $"sweep:window={width}", t, null, double.NaN, double.NaN, 0, 0, 0, 0, 0, exactMs, exactWall, $"{e.GetType().Name}: {AttendApp.OneLine(e)}"));
            }
            // The same pairs as a token-level plan (a band of slash offsets 0 .. width − 1) on column_sparse_forward.cu,
            // and the band plus scattered diagonals (MInference-like): how the token-level kernel follows density.
            rows.Add(TokenSweepRow(w, full.Output.Data, width, 0, exactMs, exactWall));
            if (density == SweepDensities[0]) rows.Add(TokenSweepRow(w, full.Output.Data, width, 1000, exactMs, exactWall));
        }
        return rows;
    }

    private static Row TokenSweepRow(Workload w, float[] exactOut, int width, int scattered, double exactMs, double exactWall)
    {
        int t = w.Length, h = w.Heads, hkv = w.KvHeads, d = w.HeadDim;
        string label = scattered == 0 ? $"sweep:band={width}" : $"sweep:band={width}+{scattered}diag";
        try
        {
            var plan = new Attend.Methods.Sparse.VerticalSlashPlan(1, h, t, t);
            var rng = new Random(5);
            for (int head = 0; head < h; head++)
            {
                var offsets = new List<int>(width + scattered);
                for (int o = 0; o < width; o++) offsets.Add(o);
                for (int i = 0; i < scattered; i++) offsets.Add(rng.Next(width, t));
                plan.SetSlash(0, head, offsets.ToArray());
            }
            var o32 = new float[(long)t * h * d];
            // A warm-up run (module load, first touch of the host buffers), then the median of three, as Time(...) does.
            const int runs = 3;
            var kernelMs = new double[runs];
            var wallMs = new double[runs];
            for (int run = -1; run < runs; run++)
            {
                CudaKernelClock.Reset();
                long start = Stopwatch.GetTimestamp();
                Attend.Methods.Sparse.VerticalSlashAttention.Forward<float>(AttentionLayout.Bthd<float>(w.Q, 1, t, h, d), AttentionLayout.Bthd<float>(w.K, 1, t, hkv, d),
                    AttentionLayout.Bthd<float>(w.V, 1, t, hkv, d), plan, new AttentionOptions { Backend = CudaBackend.Name }, AttentionLayout.Bthd<float>(o32, 1, t, h, d));
                if (run < 0) continue;
                wallMs[run] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                kernelMs[run] = CudaKernelClock.TotalMilliseconds;
            }
            Array.Sort(kernelMs);
            Array.Sort(wallMs);
            double wMs = wallMs[runs / 2], kMs = kernelMs[runs / 2];
            return new Row("vertical-slash", label, t, plan.Density, double.NaN, BenchSparseCommand.RelativeError(o32, exactOut), 0, kMs, 0,
                Math.Max(0, wMs - kMs), wMs, exactMs, exactWall, null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new Row("vertical-slash", label, t, null, double.NaN, double.NaN, 0, 0, 0, 0, 0, exactMs, exactWall, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
    }

    private static string F(double v, string format) => double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "-";

    private static string Line(Row r) => r.Error is not null
        ? $"  {r.Method,-20} {r.Workload,-16} T={r.T,-6} FAILED: {r.Error}"
        : $"  {r.Method,-20} {r.Workload,-16} T={r.T,-6} density {F(r.Density ?? double.NaN, "F4")} recall {F(r.Recall, "F4")} rel_err {F(r.RelErr, "E2")} " +
          $"selector {F(r.SelectorMs, "F1")} ms  kernel {F(r.KernelMs, "F2")} ms  host {F(r.HostMs, "F0")} ms  exact {F(r.ExactMs, "F2")} ms  " +
          $"speed-up {F(r.Speedup, "F2")}x (with selector {F(r.SpeedupWithSelector, "F2")}x)";

    private static void WriteJson(string path, IReadOnlyList<Row> rows, BenchSparseCommand.Shape shape, string device)
    {
        using FileStream stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteStartObject("machine");
        w.WriteNumber("cores", Environment.ProcessorCount);
        w.WriteString("device", device);
        w.WriteString("date", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
        w.WriteString("shape", $"B=1 H={shape.Heads} Hkv={shape.KvHeads} D={shape.HeadDim} float32 inputs, bf16 on the GPU, causal");
        w.WriteString("timing", "ms_median and exact_ms: device time of the run's kernel launches (CUDA events), median; selector_ms: CPU; host_ms: wall - selector - kernel");
        w.WriteEndObject();
        w.WriteStartArray("results");
        foreach (Row r in rows)
        {
            w.WriteStartObject();
            SparseRecordJson.WriteCommon(w, r.Method, r.Workload, "cuda", r.T, r.Density, r.Recall, r.RelErr, r.SelectorMs, r.KernelMs, r.ExactMs);
            Number(w, "host_ms", r.HostMs);
            Number(w, "wall_ms", r.WallMs);
            Number(w, "exact_wall_ms", r.ExactWallMs);
            Number(w, "speedup", r.Error is null ? r.Speedup : double.NaN);
            Number(w, "speedup_with_selector", r.Error is null ? r.SpeedupWithSelector : double.NaN);
            if (r.Error is not null) w.WriteString("error", r.Error);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
