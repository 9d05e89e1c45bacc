using System.Globalization;
using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;

namespace Attend.Cli;

/// <summary>
/// The delta rules' rows of <c>attend bench linear --backend cuda</c>: <see cref="CudaDeltaRulePlan"/>'s chunked forward
/// of the delta rule (<c>delta</c>), the gated delta rule with a scalar gate per token (<c>gated_delta</c>) and with a gate
/// per token and key channel (Kimi Delta Attention, <c>kda</c>: log gates <c>[T, H, Dk]</c>, same draw) at bf16,
/// B = 1, H = 16, D = 128, on flash-linear-attention's benchmark inputs (q, v standard normal, k L2-normalised,
/// β = sigmoid(uniform), log gates logsigmoid(normal) / 16), device-resident, timed with CUDA events (median after a
/// warm-up). Each shape's output is compared with the recurrent form (float32 state, token by token) on the same inputs;
/// a failed comparison prints no speed. At T = 16k two other shapes of the sequential kernel's CTA are timed too (rows
/// <c>delta/16x2</c>: 16 value columns per warp group, 2 groups; <c>delta/32x1</c>), and every row prints the first
/// kernel's (w, u, A) time alone. Then the decode step (B = 8 sequences, one token each, state in place).
/// </summary>
internal static class CudaDeltaBench
{
    private const double Tolerance = 1e-2;
    private const int Heads = 16, Dim = 128;

    private sealed record Method(string Name, LinearUpdate Update, LinearDecay Decay);

    private static readonly Method[] s_methods =
    [
        new("delta", LinearUpdate.Delta, LinearDecay.None),
        new("gated_delta", LinearUpdate.GatedDelta, LinearDecay.ScalarGate),
        new("kda", LinearUpdate.GatedDelta, LinearDecay.ChannelGate),
    ];

    // The method's log gates for `rows` (token, head) rows: [rows] for a scalar gate, [rows, Dk] for the channel gate; null without.
    private static DeviceBuffer? GateBuffer(CudaContext ctx, Method m, long rows, int seed) => m.Decay switch
    {
        LinearDecay.ScalarGate => DeviceBuffer.From<float>(ctx, Gates(rows, seed)),
        LinearDecay.ChannelGate => DeviceBuffer.From<float>(ctx, Gates(rows * Dim, seed)),
        _ => null,
    };

    /// <summary>Times the rows into <paramref name="records"/>; returns the number of failed comparisons.</summary>
    public static int Run(CudaContext ctx, int[] lengths, bool quick, GpuCeilings ceilings, List<LinearRecord> records, TextWriter output)
    {
        int failed = 0;
        // ATTEND_BENCH_DELTA_METHODS (a development switch: a comma list of delta, gated_delta, kda) times only those rows.
        string? only = Environment.GetEnvironmentVariable("ATTEND_BENCH_DELTA_METHODS");
        Method[] methods = only is null ? s_methods : Array.FindAll(s_methods, m => only.Split(',', StringSplitOptions.TrimEntries).Contains(m.Name));
        foreach (int t in lengths)
            foreach (Method m in methods)
            {
                // (columns per warp group, groups per CTA): the default first, then the others at T = 16k.
                // ATTEND_BENCH_DELTA_NO_BLOCKS=1 (a development switch) times the default shape alone.
                bool blocksToo = t == 16384 && !quick && m.Decay != LinearDecay.ChannelGate && Environment.GetEnvironmentVariable("ATTEND_BENCH_DELTA_NO_BLOCKS") != "1";
                (int, int)[] blocks = blocksToo ? [(0, 0), (16, 2), (32, 1)] : [(0, 0)];
                foreach ((int bv, int groups) in blocks)
                {
                    string name = bv == 0 ? m.Name : $"{m.Name}/{bv}x{groups}";
                    LinearRecord r = Chunked(ctx, m, name, t, bv == 0 ? null : bv, bv == 0 ? null : groups, quick, ceilings, out double ms, out double gbps, out double prepareMs);
                    records.Add(r);
                    if (!r.Passed) failed++;
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{name,-12} {"chunked",-9} {t,6} {(r.Passed ? ms.ToString("F3", CultureInfo.InvariantCulture) : "-"),9} {(r.Passed ? (r.TokensPerS!.Value / 1e6).ToString("F1", CultureInfo.InvariantCulture) : "FAILED"),9} {r.Gflops / 1e3,8:F1} {gbps,7:F0} {r.MaxRelErr,9:E2}  (w, u, A kernel {prepareMs:F3} ms)"));
                }
            }
        // Forward + backward, as flash-linear-attention's peers are timed: o, then dq, dk, dv, dβ (and d log α). At T = 16k
        // three variants follow the default: KeepForBackward Inverse (/keepT: the forward keeps T, as fla's keeps its A; the
        // backward recomputes w, u, A and the chain from it), All (/keep: the forward also keeps the checkpoints and δ, the
        // backward recomputes nothing; more memory held from the forward to the backward), and the chunk kernel at 4 warps
        // (/cw4, the previous default), and the default on the legacy default stream (/legacy: a null stream, the path of
        // LinearAttention.Backward, where the recomputed chain overlaps the reverse chain only because the plan's side stream
        // is non-blocking).
        foreach (int t in lengths)
            foreach (Method m in methods)
            {
                if (!CudaDeltaRulePlan.IsBackwardSupported(LinearShape.Mha(1, t, Heads, Dim), ElementType.BFloat16, Options(m, LinearForm.Chunked), out _)) continue;
                const int cw = CudaDeltaRulePlan.DefaultChunkWarps;
                // KDA's backward keeps nothing and has no warp variant (attend_kda_bwd_chunk v0): its default row only.
                (string Suffix, int Warps, CudaDeltaKeep Keep, bool Legacy)[] variants = t == 16384 && !quick && m.Decay != LinearDecay.ChannelGate
                    ? [("", cw, CudaDeltaKeep.None, false), ("/keepT", cw, CudaDeltaKeep.Inverse, false), ("/keep", cw, CudaDeltaKeep.All, false),
                       ("/cw4", 4, CudaDeltaKeep.None, false), ("/legacy", cw, CudaDeltaKeep.None, true)]
                    : [("", cw, CudaDeltaKeep.None, false)];
                foreach ((string suffix, int warps, CudaDeltaKeep keep, bool legacy) in variants)
                {
                    LinearRecord r = ForwardBackward(ctx, m, m.Name + suffix, t, quick, warps, keep, legacy, out double ms, out double backwardMs, out double recomputeMs,
                        out double chainMs, out long keptBytes);
                    records.Add(r);
                    if (!r.Passed) failed++;
                    string kept = keep != CudaDeltaKeep.None ? string.Create(CultureInfo.InvariantCulture, $"; backward buffers {keptBytes / 1e6:F1} MB, allocated by the forward") : "";
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{m.Name + suffix,-12} {"fwd+bwd",-9} {t,6} {(r.Passed ? ms.ToString("F3", CultureInfo.InvariantCulture) : "-"),9} {(r.Passed ? (r.TokensPerS!.Value / 1e6).ToString("F1", CultureInfo.InvariantCulture) : "FAILED"),9}   (backward alone {backwardMs:F3} ms: recompute {recomputeMs:F3}, reverse chain {chainMs:F3}, chunk kernel {backwardMs - recomputeMs - chainMs:F3}; gradients {(r.Passed ? "finite" : "NOT finite")}{kept})"));
                }
            }
        foreach (Method m in methods)
        {
            const int batch = 8;
            LinearRecord r = Decode(ctx, m, batch, quick);
            records.Add(r);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{m.Name,-12} {"recurrent",-9} {"B=" + batch,6} decode step {r.UsPerToken * batch,8:F2} µs per step ({batch} sequences x {Heads} heads, state read and written in place; {r.UsPerToken:F2} µs per token)"));
        }
        foreach (string line in CudaDeltaRulePlan.Describe()) output.WriteLine("  " + line);
        foreach (string line in CudaDeltaRulePlan.DescribeBackward()) output.WriteLine("  " + line);
        return failed;
    }

    private static LinearAttentionOptions Options(Method m, LinearForm form) => new()
    {
        Form = form, Update = m.Update, Decay = m.Decay, Scale = 1f / MathF.Sqrt(Dim),
    };

    private static LinearRecord Chunked(CudaContext ctx, Method m, string name, int t, int? valueBlock, int? groups, bool quick, GpuCeilings ceilings,
        out double ms, out double gbps, out double prepareMs)
    {
        var shape = LinearShape.Mha(1, t, Heads, Dim);
        long n = (long)t * Heads * Dim;
        using CudaTensor q = Random(ctx, 1, t, 41, false), k = Random(ctx, 1, t, 42, true), v = Random(ctx, 1, t, 43, false);
        using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, Heads, Dim);
        using CudaTensor oRef = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, Heads, Dim);
        using DeviceBuffer beta = DeviceBuffer.From<float>(ctx, Betas((long)t * Heads, 44));
        using DeviceBuffer? gate = GateBuffer(ctx, m, (long)t * Heads, 45);
        using var sT = new DeviceBuffer(ctx, (long)Heads * Dim * Dim * 4);
        using var plan = new CudaDeltaRulePlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Chunked), null, valueBlock, groups);
        using var reference = new CudaDeltaRulePlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Recurrent));
        using var stream = new CudaStream(ctx);
        o.Buffer.Fill(0xFF);
        plan.Run(q, k, v, beta, gate, null, o, sT, stream);
        reference.Run(q, k, v, beta, gate, null, oRef, null, stream);
        stream.Synchronize();
        double err = CudaLinearBench.Compare(o, oRef, out int nan, out double maxRelErr);
        bool passed = nan == 0 && err <= Tolerance;
        ms = CudaLinearBench.Median(() => plan.Run(q, k, v, beta, gate, null, o, sT, stream), ctx, stream, quick ? 5 : 20);
        prepareMs = CudaLinearBench.Median(() => plan.RunPrepareOnly(q, k, v, beta, gate, stream), ctx, stream, quick ? 5 : 20);
        double seconds = ms / 1e3;
        long chunks = (t + 63) / 64;
        // Per head and chunk: K Kᵀ and Q Kᵀ (2·64·64·Dk), the triangular solve (64³/3), w and u (2·64·64·(Dk + Dv) / 2
        // over the lower triangle, counted whole), w S and q S (2·2·64·Dk·Dv), A δ (2·64·64·Dv), Kᵀ δ (2·64·Dk·Dv).
        double flops = (double)Heads * chunks * (2.0 * 2 * 64 * 64 * Dim + 64.0 * 64 * 64 / 3 + 2.0 * 64 * 64 * 2 * Dim + 3 * 2.0 * 64 * Dim * Dim + 2.0 * 64 * 64 * Dim);
        // Bytes: q, k, v, o once (bf16), β and g (float32), plus the scratch w, u, A written once and read once per value block.
        double bytes = 4.0 * n * 2 + (double)t * Heads * 8 + 2.0 * (2.0 * n + (double)t * Heads * 64) * 2;
        // KDA: the gate is [T, H, Dk] float32, and Q̃, K̂ go through scratch (written once, read once) in place of q, k.
        if (m.Decay == LinearDecay.ChannelGate) bytes += 4.0 * n - (double)t * Heads * 4 + 2.0 * 2.0 * n * 2;
        gbps = bytes / seconds / 1e9;
        return new LinearRecord(name, "chunked", t, Dim, Heads, passed ? t / seconds : null, null, passed ? flops / seconds / 1e12 / ceilings.GemmTflops : null,
            maxRelErr, 0)
        { Gflops = flops / seconds / 1e9, Passed = passed };
    }

    // Forward (output) then backward (dq, dk, dv, dβ float32, and d log α for the gated rule) on device-resident tensors.
    // The gradients' correctness is attend check's (against the float64 reference); here they must be finite and written.
    private static LinearRecord ForwardBackward(CudaContext ctx, Method m, string name, int t, bool quick, int chunkWarps, CudaDeltaKeep keep, bool legacyStream, out double ms,
        out double backwardMs, out double recomputeMs, out double chainMs, out long keptBytes)
    {
        var shape = LinearShape.Mha(1, t, Heads, Dim);
        long n = (long)t * Heads * Dim;
        using CudaTensor q = Random(ctx, 1, t, 61, false), k = Random(ctx, 1, t, 62, true), v = Random(ctx, 1, t, 63, false), dO = Random(ctx, 1, t, 64, false);
        using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, Heads, Dim);
        using DeviceBuffer beta = DeviceBuffer.From<float>(ctx, Betas((long)t * Heads, 65));
        using DeviceBuffer? gate = GateBuffer(ctx, m, (long)t * Heads, 66);
        using var dq = new DeviceBuffer(ctx, n * 4);
        using var dk = new DeviceBuffer(ctx, n * 4);
        using var dv = new DeviceBuffer(ctx, n * 4);
        using var dbeta = new DeviceBuffer(ctx, (long)t * Heads * 4);
        using DeviceBuffer? dg = gate is null ? null : new DeviceBuffer(ctx, gate.Bytes);
        using var plan = new CudaDeltaRulePlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Chunked)) { KeepForBackward = keep, ChunkWarps = chunkWarps };
        keptBytes = plan.BackwardBufferBytes;
        using var ownStream = new CudaStream(ctx);
        CudaStream? stream = legacyStream ? null : ownStream;
        foreach (DeviceBuffer? b in (DeviceBuffer?[])[dq, dk, dv, dbeta, dg]) b?.Fill(0xFF);
        plan.Run(q, k, v, beta, gate, null, o, null, stream);
        plan.Backward(q, k, v, beta, gate, null, dO, null, dq, dk, dv, dbeta, dg, null, stream);
        ctx.Synchronize();
        bool passed = true;
        foreach (DeviceBuffer? b in (DeviceBuffer?[])[dq, dk, dv, dbeta, dg])
        {
            if (b is null) continue;
            var host = new float[b.Bytes / 4];
            b.CopyTo<float>(host);
            foreach (float x in host)
                if (!float.IsFinite(x))
                {
                    passed = false;
                    break;
                }
        }
        int reps = quick ? 5 : 20;
        ms = CudaLinearBench.Median(() =>
        {
            plan.Run(q, k, v, beta, gate, null, o, null, stream);
            plan.Backward(q, k, v, beta, gate, null, dO, null, dq, dk, dv, dbeta, dg, null, stream);
        }, ctx, stream, reps);
        backwardMs = CudaLinearBench.Median(() => plan.Backward(q, k, v, beta, gate, null, dO, null, dq, dk, dv, dbeta, dg, null, stream), ctx, stream, reps);
        // The backward's stages: the forward recomputed (w, u, A, T, the chain's checkpoints), then the reverse chain.
        plan.BackwardStages = 1;
        recomputeMs = CudaLinearBench.Median(() => plan.Backward(q, k, v, beta, gate, null, dO, null, dq, dk, dv, dbeta, dg, null, stream), ctx, stream, reps);
        plan.BackwardStages = 2;
        chainMs = CudaLinearBench.Median(() => plan.Backward(q, k, v, beta, gate, null, dO, null, dq, dk, dv, dbeta, dg, null, stream), ctx, stream, reps) - recomputeMs;
        plan.BackwardStages = 3;
        return new LinearRecord(name, "fwd+bwd", t, Dim, Heads, passed ? t / (ms / 1e3) : null, null, null, null, 0) { Passed = passed };
    }

    private static LinearRecord Decode(CudaContext ctx, Method m, int batch, bool quick)
    {
        var shape = LinearShape.Mha(batch, 1, Heads, Dim);
        using CudaTensor q = Random(ctx, batch, 1, 51, false), k = Random(ctx, batch, 1, 52, true), v = Random(ctx, batch, 1, 53, false);
        using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, batch, 1, Heads, Dim);
        using DeviceBuffer beta = DeviceBuffer.From<float>(ctx, Betas((long)batch * Heads, 54));
        using DeviceBuffer? gate = GateBuffer(ctx, m, (long)batch * Heads, 55);
        using DeviceBuffer state = DeviceBuffer.From<float>(ctx, GaussianData.Create((long)batch * Heads * Dim * Dim, 56));
        using var plan = new CudaDeltaRulePlan(ctx, shape, ElementType.BFloat16, Options(m, LinearForm.Recurrent));
        using var stream = new CudaStream(ctx);
        double ms = CudaLinearBench.Median(() => plan.Run(q, k, v, beta, gate, state, o, state, stream), ctx, stream, quick ? 5 : 50, clearL2: false);
        return new LinearRecord(m.Name, "recurrent", 1, Dim, Heads, batch / (ms / 1e3), ms * 1e3 / batch, null, null, 0);
    }

    // [batch, t, H, D] bf16: standard normal, or with each row L2-normalised (the delta rule's keys).
    private static CudaTensor Random(CudaContext ctx, int batch, int t, int seed, bool normalise)
    {
        long count = (long)batch * t * Heads * Dim;
        float[] data = GaussianData.Create(count, seed);
        var packed = new BFloat16[count];
        for (long r = 0; r < count / Dim; r++)
        {
            double norm = 0;
            for (int i = 0; i < Dim; i++) norm += (double)data[r * Dim + i] * data[r * Dim + i];
            float f = normalise ? (float)(1 / Math.Sqrt(norm)) : 1f;
            for (int i = 0; i < Dim; i++) packed[r * Dim + i] = (BFloat16)(data[r * Dim + i] * f);
        }
        return CudaTensor.FromHost<BFloat16>(ctx, packed, batch, t, Heads, Dim);
    }

    // β = sigmoid(u), u uniform in [0, 1) (fla's benchmark draws torch.rand(...).sigmoid()).
    private static float[] Betas(long count, int seed)
    {
        var rng = new Random(seed);
        var b = new float[count];
        for (long i = 0; i < count; i++) b[i] = 1f / (1f + MathF.Exp(-(float)rng.NextDouble()));
        return b;
    }

    // Log gates logsigmoid(x) / 16 for standard normal x.
    private static float[] Gates(long count, int seed)
    {
        float[] x = GaussianData.Create(count, seed);
        var g = new float[count];
        for (long i = 0; i < count; i++) g[i] = -MathF.Log(1f + MathF.Exp(-x[i])) / 16f;
        return g;
    }
}
