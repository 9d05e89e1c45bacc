using System.Globalization;
using System.Text.Json;
using Attend.Cuda;
using Attend.Cuda.Interop;

namespace Attend.Cli;

/// <summary>
/// <c>attend bench --backend cuda</c>: the protocol's GPU shapes (B = 1, 64 query heads over 8 KV heads, head dim 128,
/// bf16; 4k to 32k; causal, full, sliding window, documents; head dim 64 too) on device-resident tensors. Measures the
/// ceilings first (cuBLAS bf16 matrix product, device-to-device copy), times each case with CUDA events (median and
/// spread of ≥ 10 runs after a warm-up, on random Gaussian data, never zeros), checks sampled rows against the float64
/// reference and that every output element was written (outputs poisoned with NaN), and refuses to print a speed for a
/// wrong result. NVRTC compile time is reported apart.
/// </summary>
internal static class CudaBench
{
    public const double Tolerance = 1e-2;

    internal sealed record GpuCase(string Name, int Tokens, int Heads, int KvHeads, int Dim, string Mask);

    internal sealed record GpuResult(string Name, string Mask, int Tokens, int Heads, int KvHeads, int Dim, double MedianMs, double SpreadMs, int Runs,
        double Tflops, double SampledError, bool Passed, string? Error)
    {
        /// <summary>forward or decode.</summary>
        public string Kind { get; init; } = "forward";

        /// <summary>Decode: batch.</summary>
        public int Batch { get; init; } = 1;

        /// <summary>Decode: bytes of K and V read per second, in GB/s.</summary>
        public double Gbps { get; init; }

        /// <summary>Forward: TFLOP/s counted on the computed blocks (every 128 × 64 tile the plan visits, whole, whatever
        /// the kernel skips inside it) instead of the visible pairs; the window target of issue 3 compares these.</summary>
        public double ComputedTflops { get; init; }
    }

    public static IReadOnlyList<GpuCase> Cases(bool quick)
    {
        if (quick) return [new("causal", 1024, 16, 4, 128, "causal"), new("full", 1024, 16, 4, 64, "full")];
        var list = new List<GpuCase>();
        foreach (int t in (int[])[4096, 8192, 16384, 32768])
        {
            list.Add(new("causal", t, 64, 8, 128, "causal"));
            list.Add(new("full", t, 64, 8, 128, "full"));
        }
        list.Add(new("window 1024 causal", 16384, 64, 8, 128, "window:1024,0"));
        list.Add(new("window 1024 causal", 32768, 64, 8, 128, "window:1024,0"));
        list.Add(new("documents causal", 16384, 64, 8, 128, "causal+doc:0,1000,4096,4200,9000,16384"));
        list.Add(new("block-causal 512", 16384, 64, 8, 128, "blockcausal:512"));
        list.Add(new("causal D=64", 16384, 64, 8, 64, "causal"));
        list.Add(new("causal 16/16 heads", 16384, 16, 16, 128, "causal"));
        return list;
    }

    public static int Execute(string? jsonPath, bool quick, TextWriter output, TextWriter error)
    {
        if (!CudaBackend.IsAvailable(out string why))
        {
            error.WriteLine($"attend bench: the cuda backend cannot run on this machine: {why}.");
            return AttendApp.UsageError;
        }
        CudaContext ctx = CudaContext.Default;
        output.WriteLine($"device: {CudaBackend.Describe()}");
        output.WriteLine($"kernel cache: {KernelCompiler.CacheDirectory}");
        GpuCeilings ceilings = GpuCeilings.Measure(ctx, quick);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"ceilings: cuBLAS bf16 GEMM {ceilings.GemmTflops:F0} TFLOP/s ({ceilings.GemmSize}^3), device copy {ceilings.CopyGbps:F0} GB/s (read+write)"));
        IReadOnlyList<GpuCase> cases = Cases(quick);
        int maxT = cases.Max(c => c.Tokens);
        int maxH = cases.Max(c => c.Heads), maxHkv = cases.Max(c => c.KvHeads), maxD = cases.Max(c => c.Dim);
        // One random set at the largest size; each case uses a prefix (a [1, T, H, D] tensor is the first T·H·D values).
        BFloat16[] hostQ = Bf16(GaussianData.Create((long)maxT * maxH * maxD, 101));
        BFloat16[] hostK = Bf16(GaussianData.Create((long)maxT * maxHkv * maxD, 102));
        BFloat16[] hostV = Bf16(GaussianData.Create((long)maxT * maxHkv * maxD, 103));
        var results = new List<GpuResult>();
        // ATTEND_BENCH_PART=backward runs only the backward rows, =core the causal forward rows at 4k and 16k and the
        // backward rows, =fcore those forward rows alone, =fwin the sliding-window forward rows alone, =wtarget the rows of
        // the window target (dense causal and window 1024 causal at 16k and 32k, forward only) (kernel development on a
        // device-time budget).
        string? part = Environment.GetEnvironmentVariable("ATTEND_BENCH_PART");
        bool backwardOnly = part == "backward", core = part is "core" or "fcore", windows = part == "fwin", target = part == "wtarget";
        bool skipBackward = part is "fcore" or "fwin" or "wtarget";
        foreach (GpuCase c in backwardOnly ? [] : cases)
        {
            if (core && !(c.Mask == "causal" && (c.Tokens is 4096 or 16384))) continue;
            if (windows && !c.Mask.StartsWith("window", StringComparison.Ordinal)) continue;
            if (target && !((c.Mask == "causal" || c.Mask.StartsWith("window", StringComparison.Ordinal)) && c.Dim == 128 && c.Heads == 64 && c.Tokens >= 16384)) continue;
            GpuResult r = Run(ctx, c, hostQ, hostK, hostV, quick);
            results.Add(r);
            output.WriteLine(Format(r));
        }
        output.WriteLine($"  bwd kernels (D=128 bf16): {CudaFlashBackwardMma.Describe(ctx, 128, ElementType.BFloat16)}");
        output.WriteLine($"  bwd kernels (D=64 bf16): {CudaFlashBackwardMma.Describe(ctx, 64, ElementType.BFloat16)}");
        // Rows: (T, D, deterministic). Deterministic = false may take the atomic dQ path (a development switch, see
        // CudaFlashBackwardMma); by default both run the same deterministic kernels.
        foreach (var (t, dim, det) in skipBackward ? [] : quick ? (IEnumerable<(int, int, bool)>)[(1024, 128, false)]
                     : [(4096, 128, false), (16384, 128, false), (16384, 64, false)])
        {
            GpuResult r = CudaBackwardBench.Run(ctx, t, quick ? 16 : 64, quick ? 4 : 8, dim, hostQ, hostK, hostV, quick, det);
            results.Add(r);
            output.WriteLine(r.Passed
                ? string.Create(CultureInfo.InvariantCulture,
                    $"  bwd causal{(det ? " deterministic" : "              ")} T={t,6} H={r.Heads}/{r.KvHeads} D={dim,3}: {r.MedianMs,9:F3} ms ± {r.SpreadMs:F3} ({r.Runs} runs)  {r.Tflops,6:F1} TFLOP/s  dQ err={r.SampledError:E2}")
                : $"  bwd causal T={t}: FAILED {r.Error}");
        }
        foreach (int t in backwardOnly || core || windows || target ? [] : quick ? (int[])[4096] : [4096, 32768, 131072])
        {
            GpuResult r = CudaDecodeBench.Run(ctx, batch: 8, heads: 32, kvHeads: 8, dim: 128, tokens: t, pageSize: 16, quick);
            results.Add(r);
            output.WriteLine(r.Passed
                ? string.Create(CultureInfo.InvariantCulture,
                    $"  decode B=8 H=32/8 D=128 cache={t,6} page=16: {r.MedianMs,9:F3} ms ± {r.SpreadMs:F3} ({r.Runs} runs)  {r.Gbps,6:F0} GB/s of K+V ({r.Gbps / ceilings.CopyGbps:P0} of copy)  err={r.SampledError:E2}")
                : $"  decode cache={t}: FAILED {r.Error}");
        }
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"NVRTC: {KernelCompiler.Compiled} specialisation(s) compiled in {KernelCompiler.TotalCompileSeconds:F2} s, {KernelCompiler.CacheHits} read from the disk cache (not in the times above)"));
        foreach (string line in CudaFlashForward.Describe()) output.WriteLine("  " + line);
        foreach (string line in CudaDecode.Describe()) output.WriteLine("  " + line);
        if (jsonPath is not null)
        {
            WriteJson(jsonPath, ceilings, results);
            output.WriteLine($"wrote {jsonPath}");
        }
        int failed = results.Count(r => !r.Passed);
        foreach (GpuResult r in results.Where(r => !r.Passed)) error.WriteLine($"attend bench: {r.Name} T={r.Tokens} FAILED: {r.Error}");
        return failed == 0 ? 0 : AttendApp.CheckFailed;
    }

    // Written field by field (no reflection), so the trimmed self-contained build the GPU machine runs can write it.
    private static void WriteJson(string path, GpuCeilings ceilings, IReadOnlyList<GpuResult> results)
    {
        using FileStream file = File.Create(path);
        using var w = new Utf8JsonWriter(file, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteString("device", CudaBackend.Describe());
        w.WriteString("date", DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture));
        w.WriteNumber("gemm_tflops", ceilings.GemmTflops);
        w.WriteNumber("copy_gbps", ceilings.CopyGbps);
        w.WriteNumber("compile_seconds", KernelCompiler.TotalCompileSeconds);
        w.WriteStartArray("results");
        foreach (GpuResult r in results)
        {
            w.WriteStartObject();
            w.WriteString("kind", r.Kind);
            w.WriteNumber("batch", r.Batch);
            w.WriteNumber("gbps", r.Gbps);
            w.WriteString("name", r.Name);
            w.WriteString("mask", r.Mask);
            w.WriteNumber("tokens", r.Tokens);
            w.WriteNumber("heads", r.Heads);
            w.WriteNumber("kv_heads", r.KvHeads);
            w.WriteNumber("dim", r.Dim);
            w.WriteBoolean("passed", r.Passed);
            if (r.Passed)
            {
                w.WriteNumber("median_ms", r.MedianMs);
                w.WriteNumber("spread_ms", r.SpreadMs);
                w.WriteNumber("runs", r.Runs);
                w.WriteNumber("tflops", r.Tflops);
                if (r.Kind == "forward") w.WriteNumber("computed_tflops", r.ComputedTflops);
                w.WriteNumber("sampled_error", r.SampledError);
            }
            else
            {
                w.WriteString("error", r.Error);
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static string Format(GpuResult r) => r.Passed
        ? string.Create(CultureInfo.InvariantCulture,
            $"  fwd {r.Name,-20} T={r.Tokens,6} H={r.Heads}/{r.KvHeads} D={r.Dim}: {r.MedianMs,9:F3} ms ± {r.SpreadMs:F3} ({r.Runs} runs)  {r.Tflops,6:F1} TFLOP/s  err={r.SampledError:E2}  ({r.ComputedTflops:F1} on computed blocks)")
        : $"  fwd {r.Name,-20} T={r.Tokens,6}: FAILED {r.Error}";

    private static BFloat16[] Bf16(float[] data)
    {
        var r = new BFloat16[data.Length];
        Parallel.For(0, (data.Length + (1 << 20) - 1) >> 20, c =>
        {
            int start = c << 20, end = Math.Min(start + (1 << 20), data.Length);
            for (int i = start; i < end; i++) r[i] = (BFloat16)data[i];
        });
        return r;
    }

    private static GpuResult Run(CudaContext ctx, GpuCase c, BFloat16[] hq, BFloat16[] hk, BFloat16[] hv, bool quick)
    {
        int t = c.Tokens;
        IMaskMod? mask = MaskSpec.Parse(c.Mask, t);
        var options = new AttentionOptions { Mask = mask };
        try
        {
            using CudaTensor q = CudaTensor.FromHost<BFloat16>(ctx, hq.AsSpan(0, t * c.Heads * c.Dim), 1, t, c.Heads, c.Dim);
            using CudaTensor k = CudaTensor.FromHost<BFloat16>(ctx, hk.AsSpan(0, t * c.KvHeads * c.Dim), 1, t, c.KvHeads, c.Dim);
            using CudaTensor v = CudaTensor.FromHost<BFloat16>(ctx, hv.AsSpan(0, t * c.KvHeads * c.Dim), 1, t, c.KvHeads, c.Dim);
            using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, c.Heads, c.Dim);
            using var lse = new DeviceBuffer(ctx, (long)c.Heads * t * sizeof(float));
            using CudaAttentionPlan plan = CudaAttention.Plan(q, k, v, options, ctx);
            using var stream = new CudaStream(ctx);
            o.Buffer.Fill(0xFF); // NaN everywhere: every element must be written
            lse.Fill(0xFF);
            plan.Run(q, k, v, o, lse, stream);
            stream.Synchronize();
            var result = new BFloat16[(long)t * c.Heads * c.Dim];
            o.CopyTo<BFloat16>(result);
            long nan = CountNaN(result);
            double err = SampledError(hq, hk, hv, result, c, mask, options.Scale ?? 1f / MathF.Sqrt(c.Dim), rows: 48);
            if (nan > 0 || !(err <= Tolerance))
                return new GpuResult(c.Name, c.Mask, t, c.Heads, c.KvHeads, c.Dim, 0, 0, 0, 0, err, false,
                    nan > 0 ? $"{nan} outputs left unwritten (NaN)" : $"sampled relative error {err:E2} exceeds {Tolerance:G2}");
            // Warm-up, then timed runs, each between two events.
            for (int i = 0; i < 3; i++) plan.Run(q, k, v, o, lse, stream);
            using var start = new CudaEvent(ctx);
            using var end = new CudaEvent(ctx);
            var times = new List<double>();
            double total = 0;
            while (times.Count < 10 || (total < (quick ? 50 : 1000) && times.Count < 200))
            {
                start.Record(stream);
                plan.Run(q, k, v, o, lse, stream);
                end.Record(stream);
                double ms = CudaEvent.ElapsedMilliseconds(start, end);
                times.Add(ms);
                total += ms;
            }
            stream.Synchronize();
            times.Sort();
            double median = times[times.Count / 2], spread = times[^1] - times[0];
            double flops = 4.0 * c.Heads * c.Dim * VisiblePairs(mask, t);
            double computed = 4.0 * c.Heads * c.Dim * ComputedPairs(mask, t);
            return new GpuResult(c.Name, c.Mask, t, c.Heads, c.KvHeads, c.Dim, median, spread, times.Count, flops / (median / 1e3) / 1e12, err, true, null)
            {
                ComputedTflops = computed / (median / 1e3) / 1e12,
            };
        }
        catch (Exception e) when (e is CudaException or NotSupportedException or ArgumentException)
        {
            return new GpuResult(c.Name, c.Mask, t, c.Heads, c.KvHeads, c.Dim, 0, 0, 0, 0, double.NaN, false, $"{e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>Visible (query, key) pairs of one head (the protocol's effective-FLOP count).</summary>
    private static double VisiblePairs(IMaskMod? mask, int t) => BlockMask.Create(mask ?? new FullMask(), t, t).VisiblePairs();

    /// <summary>(query, key) pairs of the computed blocks of one head: every tile of the kernel's plan (128 query rows ×
    /// 64 keys, full or partial) counted whole. A skip inside the kernel does not change this count.</summary>
    private static double ComputedPairs(IMaskMod? mask, int t)
    {
        BlockMask blocks = BlockMask.Create(mask ?? new FullMask(), t, t, queryBlockSize: FlashBlockPlan.QueryBlock, keyBlockSize: FlashBlockPlan.KeyBlock);
        return (double)(blocks.FullBlockCount + blocks.PartialBlockCount) * FlashBlockPlan.QueryBlock * FlashBlockPlan.KeyBlock;
    }

    private static long CountNaN(BFloat16[] data)
    {
        long n = 0;
        foreach (BFloat16 x in data) if (float.IsNaN(x)) n++;
        return n;
    }

    // ‖o − ref‖ / ‖ref‖ over sampled (row, head) pairs, the first and last rows always among them; reference in float64 from the bf16 inputs.
    private static double SampledError(BFloat16[] q, BFloat16[] k, BFloat16[] v, BFloat16[] o, GpuCase c, IMaskMod? mask, float scale, int rows)
    {
        var rng = new Random(c.Tokens * 31 + c.Heads);
        int t = c.Tokens, d = c.Dim, group = c.Heads / c.KvHeads;
        double diff = 0, norm = 0;
        var scores = new double[t];
        var exact = new double[d];
        for (int r = 0; r < rows; r++)
        {
            int row = r == 0 ? 0 : r == 1 ? t - 1 : rng.Next(t), h = rng.Next(c.Heads), hk = h / group;
            double max = double.NegativeInfinity;
            for (int j = 0; j < t; j++)
            {
                if (mask is not null && !mask.IsVisible(0, h, row, j))
                {
                    scores[j] = double.NegativeInfinity;
                    continue;
                }
                double s = 0;
                long qa = ((long)row * c.Heads + h) * d, ka = ((long)j * c.KvHeads + hk) * d;
                for (int x = 0; x < d; x++) s += (double)(float)q[qa + x] * (float)k[ka + x];
                scores[j] = s * scale;
                max = Math.Max(max, scores[j]);
            }
            Array.Clear(exact);
            double sum = 0;
            for (int j = 0; j < t; j++)
            {
                if (double.IsNegativeInfinity(scores[j])) continue;
                double p = Math.Exp(scores[j] - max);
                sum += p;
                long va = ((long)j * c.KvHeads + hk) * d;
                for (int x = 0; x < d; x++) exact[x] += p * (float)v[va + x];
            }
            long oa = ((long)row * c.Heads + h) * d;
            for (int x = 0; x < d; x++)
            {
                double e = sum > 0 ? exact[x] / sum : 0;
                double a = (float)o[oa + x];
                diff += (a - e) * (a - e);
                norm += e * e;
            }
        }
        return norm == 0 ? (diff == 0 ? 0 : double.PositiveInfinity) : Math.Sqrt(diff / norm);
    }
}

/// <summary>The GPU's ceilings, measured in the same run: a cuBLAS bf16 matrix product and a device-to-device copy.</summary>
internal sealed unsafe record GpuCeilings(double GemmTflops, int GemmSize, double CopyGbps)
{
    public static GpuCeilings Measure(CudaContext ctx, bool quick)
    {
        int n = quick ? 2048 : 8192;
        BFloat16[] host = new BFloat16[(long)n * n];
        var rng = new Random(5);
        for (int i = 0; i < host.Length; i++) host[i] = (BFloat16)(float)(rng.NextDouble() * 2 - 1);
        using DeviceBuffer a = DeviceBuffer.From<BFloat16>(ctx, host), b = DeviceBuffer.From<BFloat16>(ctx, host);
        using var c = new DeviceBuffer(ctx, (long)n * n * 4);
        using var stream = new CudaStream(ctx);
        using var start = new CudaEvent(ctx);
        using var end = new CudaEvent(ctx);
        CudaException.CheckCublas(Cublas.cublasCreate(out nint handle), "cublasCreate_v2");
        double gemmMs;
        try
        {
            CudaException.CheckCublas(Cublas.cublasSetStream(handle, stream.Handle), "cublasSetStream_v2");
            float* scalars = stackalloc float[2] { 1f, 0f }; // alpha, beta
            float* alpha = scalars, beta = scalars + 1;
            void Gemm() => CudaException.CheckCublas(Cublas.cublasGemmEx(handle, Cublas.OpN, Cublas.OpN, n, n, n, alpha, a.Pointer, Cublas.DataR16BF, n,
                b.Pointer, Cublas.DataR16BF, n, beta, c.Pointer, Cublas.DataR32F, n, Cublas.ComputeR32F, Cublas.GemmDefault), "cublasGemmEx");
            gemmMs = Median(() => Gemm(), start, end, stream, 10);
        }
        finally
        {
            Cublas.cublasDestroy(handle);
        }
        long bytes = quick ? 64L << 20 : 1L << 30;
        using var src = new DeviceBuffer(ctx, bytes);
        using var dst = new DeviceBuffer(ctx, bytes);
        src.Fill(1);
        double copyMs = Median(() => CudaException.CheckDriver(Driver.cuMemcpyDtoD(dst.Pointer, src.Pointer, (nuint)bytes), "cuMemcpyDtoD_v2"), start, end, null, 10);
        return new GpuCeilings(2.0 * n * n * n / (gemmMs / 1e3) / 1e12, n, 2.0 * bytes / (copyMs / 1e3) / 1e9);
    }

    private static double Median(Action work, CudaEvent start, CudaEvent end, CudaStream? stream, int runs)
    {
        for (int i = 0; i < 3; i++) work();
        var times = new List<double>();
        for (int i = 0; i < runs; i++)
        {
            start.Record(stream);
            work();
            end.Record(stream);
            times.Add(CudaEvent.ElapsedMilliseconds(start, end));
        }
        times.Sort();
        return times[runs / 2];
    }
}
