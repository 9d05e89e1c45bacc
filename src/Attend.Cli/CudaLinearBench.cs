using System.Globalization;
using System.Text.Json;
using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;

namespace Attend.Cli;

/// <summary>
/// <c>attend bench linear --backend cuda [--json FILE] [--quick]</c>: the CUDA chunked forward of the additive family
/// (no decay, a fixed γ per head, a scalar gate per token, a gate per key channel) at bf16, B = 1, H = 16, D = 128 for
/// T from 4k to 64k (the issue's headline is T = 16k), device-resident tensors, timed with CUDA events (median of the
/// repetitions after a warm-up); each shape's output is compared with the CUDA recurrent form (float32 state, one token
/// at a time) on the same inputs, and a failed comparison prints no speed. Then forward + backward (dq, dk, dv, and the
/// gate's gradient for simple GLA and GLA), then the recurrent decode step (B = 8 sequences, one token each, state
/// updated in place): microseconds per step. The chunked and fwd+bwd timings clear L2 before each repetition (a
/// 256 MB memset outside the timed region), as Triton's <c>do_bench</c> does for flash-linear-attention's peers.
/// </summary>
internal static class CudaLinearBench
{
    private const double Tolerance = 1e-2;
    private const int Heads = 16, Dim = 128;

    private sealed record Method(string Name, LinearDecay Decay);

    private static readonly Method[] s_methods =
    [
        new("linear_attn", LinearDecay.None),
        new("retnet", LinearDecay.FixedPerHead),
        new("simple_gla", LinearDecay.ScalarGate),
        new("gla", LinearDecay.ChannelGate),
    ];

    public static int Execute(string? jsonPath, bool quick, TextWriter output, TextWriter error)
    {
        if (!CudaBackend.IsAvailable(out string why))
        {
            error.WriteLine($"attend bench linear: the cuda backend cannot run on this machine: {why}.");
            return AttendApp.UsageError;
        }
        CudaContext ctx = CudaContext.Default;
        output.WriteLine($"device: {CudaBackend.Describe()}");
        GpuCeilings ceilings = GpuCeilings.Measure(ctx, quick);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"ceilings: cuBLAS bf16 GEMM {ceilings.GemmTflops:F0} TFLOP/s ({ceilings.GemmSize}^3), device copy {ceilings.CopyGbps:F0} GB/s (read+write)"));
        int[] lengths = quick ? [1024] : [4096, 16384, 65536];
        // ATTEND_BENCH_LINEAR_T=16384[,...] times only those lengths (a short device call next to the peers).
        if (Environment.GetEnvironmentVariable("ATTEND_BENCH_LINEAR_T") is { Length: > 0 } only)
            lengths = only.Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
        var records = new List<LinearRecord>();
        int failed = 0;
        // ATTEND_BENCH_LINEAR_DELTA_ONLY=1 (a development switch) times only the delta rules' rows.
        Method[] methods = Environment.GetEnvironmentVariable("ATTEND_BENCH_LINEAR_DELTA_ONLY") == "1" ? [] : s_methods;
        // ATTEND_BENCH_LINEAR_METHODS=simple_gla,gla (a development switch) times only those rows, no delta rules.
        string? onlyMethods = Environment.GetEnvironmentVariable("ATTEND_BENCH_LINEAR_METHODS");
        if (onlyMethods is { Length: > 0 }) methods = methods.Where(m => onlyMethods.Split(',').Contains(m.Name)).ToArray();
        output.WriteLine($"{"method",-12} {"form",-9} {"T",6} {"ms",9} {"M tok/s",9} {"TFLOP/s",8} {"GB/s",7} {"max rel",9}  (H = {Heads}, D = {Dim}, bf16, B = 1)");
        foreach (int t in lengths)
            foreach (Method m in methods)
            {
                LinearRecord r = Chunked(ctx, m, t, quick, ceilings, out double ms, out double gbps);
                records.Add(r);
                if (!r.Passed) failed++;
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{m.Name,-12} {"chunked",-9} {t,6} {(r.Passed ? ms.ToString("F3", CultureInfo.InvariantCulture) : "-"),9} {(r.Passed ? (r.TokensPerS!.Value / 1e6).ToString("F1", CultureInfo.InvariantCulture) : "FAILED"),9} {r.Gflops / 1e3,8:F1} {gbps,7:F0} {r.MaxRelErr,9:E2}"));
            }
        // Forward + backward, as flash-linear-attention's peers are timed: o = forward, then dq, dk, dv (and d log gate).
        foreach (int t in lengths)
            foreach (Method m in methods)
            {
                if (!CudaLinearPlan.IsBackwardSupported(LinearShape.Mha(1, t, Heads, Dim), ElementType.BFloat16, Options(m, LinearForm.Chunked), out _)) continue;
                LinearRecord r = ForwardBackward(ctx, m, t, quick, out double ms, out double backwardMs);
                records.Add(r);
                if (!r.Passed) failed++;
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{m.Name,-12} {"fwd+bwd",-9} {t,6} {(r.Passed ? ms.ToString("F3", CultureInfo.InvariantCulture) : "-"),9} {(r.Passed ? (r.TokensPerS!.Value / 1e6).ToString("F1", CultureInfo.InvariantCulture) : "FAILED"),9}   (backward alone {backwardMs:F3} ms; gradients {(r.Passed ? "finite" : "NOT finite")})"));
            }
        foreach (Method m in methods)
        {
            const int batch = 8;
            LinearRecord r = Decode(ctx, m, batch, quick);
            records.Add(r);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{m.Name,-12} {"recurrent",-9} {"B=" + batch,6} decode step {r.UsPerToken * batch,8:F2} µs per step ({batch} sequences x {Heads} heads, state read and written in place; {r.UsPerToken:F2} µs per token)"));
        }
        // The delta rules (CudaDeltaRulePlan): delta and gated_delta rows, same lengths, same JSON.
        if (onlyMethods is not { Length: > 0 }) failed += CudaDeltaBench.Run(ctx, lengths, quick, ceilings, records, output);
        foreach (string line in CudaLinearKernels.Describe()) output.WriteLine("  " + line);
        if (jsonPath is not null)
        {
            WriteJson(jsonPath, ctx, ceilings, records);
            output.WriteLine($"wrote {jsonPath}");
        }
        return failed == 0 ? 0 : AttendApp.CheckFailed;
    }

    private static LinearAttentionOptions Options(Method m, LinearForm form) => new()
    {
        Form = form,
        Decay = m.Decay,
        HeadDecay = m.Decay == LinearDecay.FixedPerHead ? Enumerable.Range(0, Heads).Select(h => 1f - MathF.Pow(2f, -5f - h * 0.5f)).ToArray() : null,
        Scale = 1f / MathF.Sqrt(Dim),
    };

    private static LinearRecord Chunked(CudaContext ctx, Method m, int t, bool quick, GpuCeilings ceilings, out double ms, out double gbps)
    {
        var shape = LinearShape.Mha(1, t, Heads, Dim);
        long n = (long)t * Heads * Dim;
        using CudaTensor q = Random(ctx, 1, t, 11), k = Random(ctx, 1, t, 12), v = Random(ctx, 1, t, 13);
        using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, Heads, Dim);
        using CudaTensor oRef = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, Heads, Dim);
        using DeviceBuffer? gate = m.Decay switch
        {
            LinearDecay.ScalarGate => DeviceBuffer.From<float>(ctx, Gates((long)t * Heads, 14)),
            LinearDecay.ChannelGate => DeviceBuffer.From<float>(ctx, Gates(n, 15)),
            _ => null,
        };
        using var sT = new DeviceBuffer(ctx, (long)Heads * Dim * Dim * 4);
        using var plan = new CudaLinearPlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Chunked));
        using var reference = new CudaLinearPlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Recurrent));
        using var stream = new CudaStream(ctx);
        o.Buffer.Fill(0xFF);
        plan.Run(q, k, v, gate, null, o, sT, stream);
        reference.Run(q, k, v, gate, null, oRef, null, stream);
        stream.Synchronize();
        // Pass/fail on the relative L2 error (what attend check uses); the record's max_rel_err is max|a − e| / max|e|,
        // the same measure the CPU bench writes under that name.
        double err = Compare(o, oRef, out int nan, out double maxRelErr);
        bool passed = nan == 0 && err <= Tolerance;
        ms = Median(() => plan.Run(q, k, v, gate, null, o, sT, stream), ctx, stream, quick ? 5 : 20);
        double seconds = ms / 1e3;
        long chunks = (t + 63) / 64;
        double flops = (double)Heads * chunks * (64.0 * 65 * (Dim + Dim) + 4.0 * 64 * Dim * Dim);
        double bytes = 4.0 * n * 2 + (m.Decay == LinearDecay.ChannelGate ? n * 4 : 0);
        gbps = bytes / seconds / 1e9;
        return new LinearRecord(m.Name, "chunked", t, Dim, Heads, passed ? t / seconds : null, null, passed ? flops / seconds / 1e12 / ceilings.GemmTflops : null,
            maxRelErr, 0)
        { Gflops = flops / seconds / 1e9, Passed = passed };
    }

    // Forward (output) then backward (dq, dk, dv float32, and the log gate's gradient for the gates) on device-resident
    // tensors. The gradients' correctness is attend check's (against the float64 reference); here they must be finite and written.
    private static LinearRecord ForwardBackward(CudaContext ctx, Method m, int t, bool quick, out double ms, out double backwardMs)
    {
        var shape = LinearShape.Mha(1, t, Heads, Dim);
        long n = (long)t * Heads * Dim;
        using CudaTensor q = Random(ctx, 1, t, 31), k = Random(ctx, 1, t, 32), v = Random(ctx, 1, t, 33), dO = Random(ctx, 1, t, 34);
        using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, Heads, Dim);
        using var dq = new DeviceBuffer(ctx, n * 4);
        using var dk = new DeviceBuffer(ctx, n * 4);
        using var dv = new DeviceBuffer(ctx, n * 4);
        long gateCount = m.Decay switch { LinearDecay.ScalarGate => (long)t * Heads, LinearDecay.ChannelGate => n, _ => 0 };
        using DeviceBuffer? gate = gateCount == 0 ? null : DeviceBuffer.From<float>(ctx, Gates(gateCount, 35));
        using DeviceBuffer? dg = gateCount == 0 ? null : new DeviceBuffer(ctx, gateCount * 4);
        using var plan = new CudaLinearPlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Chunked));
        using var stream = new CudaStream(ctx);
        dq.Fill(0xFF);
        dk.Fill(0xFF);
        dv.Fill(0xFF);
        dg?.Fill(0xFF);
        plan.Run(q, k, v, gate, null, o, null, stream);
        plan.Backward(q, k, v, gate, null, dO, null, dq, dk, dv, dg, null, stream);
        stream.Synchronize();
        bool passed = true;
        foreach (DeviceBuffer? b in (DeviceBuffer?[])[dq, dk, dv, dg])
        {
            if (b is null) continue;
            var host = new float[b.Bytes / 4];
            b.CopyTo<float>(host);
            foreach (float x in host) if (!float.IsFinite(x)) { passed = false; break; }
        }
        int reps = quick ? 5 : 20;
        ms = Median(() => { plan.Run(q, k, v, gate, null, o, null, stream); plan.Backward(q, k, v, gate, null, dO, null, dq, dk, dv, dg, null, stream); }, ctx, stream, reps);
        backwardMs = Median(() => plan.Backward(q, k, v, gate, null, dO, null, dq, dk, dv, dg, null, stream), ctx, stream, reps);
        if (m.Decay is LinearDecay.ScalarGate or LinearDecay.ChannelGate)
        {
            // The backward's launches: the checkpoints (the forward's pass 2), the state-gradient sweep, the chunk kernel.
            plan.BackwardStages = 1;
            double checkpointMs = Median(() => plan.Backward(q, k, v, gate, null, dO, null, dq, dk, dv, dg, null, stream), ctx, stream, reps);
            plan.BackwardStages = 2;
            double sweepMs = Median(() => plan.Backward(q, k, v, gate, null, dO, null, dq, dk, dv, dg, null, stream), ctx, stream, reps);
            plan.BackwardStages = 3;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {m.Name} backward stages (T = {t}): checkpoints {checkpointMs:F3} ms, state-gradient sweep {sweepMs - checkpointMs:F3} ms, chunk kernel {backwardMs - sweepMs:F3} ms"));
        }
        return new LinearRecord(m.Name, "fwd+bwd", t, Dim, Heads, passed ? t / (ms / 1e3) : null, null, null, null, 0) { Passed = passed };
    }

    private static LinearRecord Decode(CudaContext ctx, Method m, int batch, bool quick)
    {
        var shape = LinearShape.Mha(batch, 1, Heads, Dim);
        long n = (long)batch * Heads * Dim;
        using CudaTensor q = Random(ctx, batch, 1, 21), k = Random(ctx, batch, 1, 22), v = Random(ctx, batch, 1, 23);
        using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, batch, 1, Heads, Dim);
        using DeviceBuffer? gate = m.Decay switch
        {
            LinearDecay.ScalarGate => DeviceBuffer.From<float>(ctx, Gates((long)batch * Heads, 24)),
            LinearDecay.ChannelGate => DeviceBuffer.From<float>(ctx, Gates(n, 25)),
            _ => null,
        };
        using DeviceBuffer state = DeviceBuffer.From<float>(ctx, GaussianData.Create((long)batch * Heads * Dim * Dim, 26));
        using var plan = new CudaLinearPlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Recurrent));
        using var stream = new CudaStream(ctx);
        double ms = Median(() => plan.Run(q, k, v, gate, state, o, state, stream), ctx, stream, quick ? 5 : 50, clearL2: false);
        // One step advances `batch` sequences by a token each: µs per token is the step's time over the batch (as
        // 1e6 / tokens_per_s, the CPU bench's meaning of the field); the table prints the step's own time.
        return new LinearRecord(m.Name, "recurrent", 1, Dim, Heads, batch / (ms / 1e3), ms * 1e3 / batch, null, null, 0);
    }

    // Triton's do_bench zeroes a 256 MB buffer before each repetition so no input stays in L2; the same here (the
    // memset runs on the legacy stream, which the blocking bench stream waits for, so it lies before the start event).
    private const long L2ClearBytes = 256_000_000;
    private static DeviceBuffer? s_l2Clear;

    internal static double Median(Action run, CudaContext ctx, CudaStream? stream, int reps, bool clearL2 = true)
    {
        using var start = new CudaEvent(ctx);
        using var end = new CudaEvent(ctx);
        for (int i = 0; i < 3; i++) run();
        // A null stream: the run queues on the legacy default stream, and the events are recorded there.
        if (stream is null) ctx.Synchronize();
        else stream.Synchronize();
        if (clearL2) s_l2Clear ??= new DeviceBuffer(ctx, L2ClearBytes);
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            if (clearL2) s_l2Clear!.Fill(0);
            start.Record(stream);
            run();
            end.Record(stream);
            times[i] = CudaEvent.ElapsedMilliseconds(start, end);
        }
        Array.Sort(times);
        return times[reps / 2];
    }

    private static CudaTensor Random(CudaContext ctx, int batch, int t, int seed)
    {
        long count = (long)batch * t * Heads * Dim;
        float[] data = GaussianData.Create(count, seed);
        var packed = new BFloat16[count];
        for (long i = 0; i < count; i++) packed[i] = (BFloat16)data[i];
        return CudaTensor.FromHost<BFloat16>(ctx, packed, batch, t, Heads, Dim);
    }

    // GLA-style log gates: logsigmoid(x) / 16 for standard normal x.
    private static float[] Gates(long count, int seed)
    {
        float[] x = GaussianData.Create(count, seed);
        var g = new float[count];
        for (long i = 0; i < count; i++) g[i] = -MathF.Log(1f + MathF.Exp(-x[i])) / 16f;
        return g;
    }

    internal static double Compare(CudaTensor actual, CudaTensor expected, out int nan, out double maxRelErr)
    {
        var a = new BFloat16[actual.Length];
        var e = new BFloat16[expected.Length];
        actual.CopyTo<BFloat16>(a);
        expected.CopyTo<BFloat16>(e);
        double diff = 0, norm = 0, maxDiff = 0, maxRef = 0;
        nan = 0;
        for (long i = 0; i < a.Length; i++)
        {
            double x = a[i], y = e[i];
            if (!double.IsFinite(x) || !double.IsFinite(y))
            {
                nan++;
                continue;
            }
            diff += (x - y) * (x - y);
            norm += y * y;
            maxDiff = Math.Max(maxDiff, Math.Abs(x - y));
            maxRef = Math.Max(maxRef, Math.Abs(y));
        }
        maxRelErr = maxRef == 0 ? maxDiff : maxDiff / maxRef;
        return norm == 0 ? 0 : Math.Sqrt(diff / norm);
    }

    private static void WriteJson(string path, CudaContext ctx, GpuCeilings ceilings, List<LinearRecord> records)
    {
        using FileStream stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        w.WriteStartObject();
        w.WriteString("date", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
        w.WriteString("device", CudaBackend.Describe());
        w.WriteNumber("gemm_tflops", ceilings.GemmTflops);
        w.WriteNumber("copy_gbps", ceilings.CopyGbps);
        w.WriteString("dtype", "bf16");
        w.WriteNumber("B", 1);
        w.WriteString("flop_convention", "chunked: per head and 64-token chunk, 64*65*(Dk+Dv) + 4*64*Dk*Dv; peak_fraction is against the cuBLAS bf16 GEMM ceiling");
        w.WriteString("max_rel_err_against", "max|a - e| / max|e| against the CUDA recurrent form (float32 state, token by token) on the same bf16 inputs; attend check --backend cuda compares both forms with the float64 naive form");
        w.WriteStartArray("results");
        foreach (LinearRecord r in records) r.Write(w, "cuda");
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
