using System.Globalization;
using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;

namespace Attend.Cli;

/// <summary>
/// The delta-rule part of <c>attend check --backend cuda</c>: <see cref="CudaDeltaRulePlan"/>'s chunked and recurrent
/// forms of the delta rule and the gated delta rule (scalar gate per token, fixed γ per head) on fresh random inputs
/// (L2-normalised keys, β in (0, 1), odd T, T = 1, T not a multiple of the chunk, grouped-query heads, varlen with a
/// 1-token and an empty sequence, initial states, a CTA of two warp groups), into NaN-poisoned outputs and final states,
/// against the float64 naive form on the same inputs rounded to the element type.
/// </summary>
internal static class CudaDeltaCheck
{
    private sealed record DeltaCase(string Name, int B, int T, int H, int Hkv, int Dk, int Dv, LinearUpdate Update, LinearDecay Decay, bool InitialState,
        LinearForm Form, int[]? Lengths = null, bool Beta = true, int? ValueBlock = null, int? ValueGroups = null);

    public static (int Passed, int Failed) Run(int seed, TextWriter output, TextWriter error)
    {
        var rng = new Random(unchecked(seed * 31 + 17));
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;
        const LinearUpdate D = LinearUpdate.Delta, G = LinearUpdate.GatedDelta;
        DeltaCase[] cases =
        [
            new("delta, initial state", 2, Odd(65, 400), 4, 4, 128, 128, D, LinearDecay.None, true, LinearForm.Chunked),
            new("delta, GQA 2:1, Dk 64, beta = 1", 1, Odd(129, 500), 4, 2, 64, 64, D, LinearDecay.None, false, LinearForm.Chunked, Beta: false),
            new("gated, T = 64m + r, state", 1, 64 * rng.Next(2, 6) + rng.Next(1, 63), 4, 4, 128, 128, G, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("gated, fixed decay, GQA 4:1, Dv 256", 1, Odd(65, 300), 4, 1, 128, 256, G, LinearDecay.FixedPerHead, true, LinearForm.Chunked),
            new("gated, T = 1, initial state", 3, 1, 4, 2, 128, 128, G, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("gated, long (T ~ 1.5k), state", 1, Odd(1200, 1700), 2, 2, 128, 128, G, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("gated, varlen (1-token, empty)", 1, 0, 4, 2, 128, 64, G, LinearDecay.ScalarGate, true, LinearForm.Chunked, [1, rng.Next(2, 200), 0, rng.Next(300, 900)]),
            // Specialisations cost NVRTC time in every check: the cases share them (Dk 64 gated with the recurrent case below),
            // and one non-default CTA shape (2 warp groups, the gated path's group-split loads) stands for the others.
            new("gated, value block 16 x 2", 1, Odd(65, 300), 2, 2, 128, 128, G, LinearDecay.ScalarGate, true, LinearForm.Chunked, ValueBlock: 16, ValueGroups: 2),
            new("gated, Dk 64, GQA 2:1, Dv 128", 1, Odd(65, 300), 4, 2, 64, 128, G, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("recurrent delta", 2, Odd(20, 200), 4, 4, 128, 128, D, LinearDecay.None, true, LinearForm.Recurrent),
            new("recurrent gated, GQA, Dk 64 Dv 96", 1, Odd(20, 200), 4, 1, 64, 96, G, LinearDecay.ScalarGate, true, LinearForm.Recurrent),
            new("recurrent gated decode T = 1, varlen", 1, 0, 8, 2, 128, 128, G, LinearDecay.FixedPerHead, true, LinearForm.Recurrent, [1, 1, 1, 0]),
        ];
        int passed = 0, failed = 0;
        foreach (DeltaCase c in cases)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                (double err, double stateErr, string? problem) = type == ElementType.BFloat16 ? One<BFloat16>(c, type, rng) : One<Half>(c, type, rng);
                double tol = CheckCommand.Tolerance(type);
                bool ok = problem is null && err <= tol && stateErr <= tol;
                int t = c.Lengths?.Sum() ?? c.T;
                string label = c.Update == D ? "CudaDelta" : "CudaGatedDelta";
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {label + " " + c.Form.ToString().ToLowerInvariant(),-24} {type.ShortName(),-4} {c.Name,-36} B={c.B} T={t} H={c.H}/{c.Hkv} Dk={c.Dk} Dv={c.Dv} {c.Decay}  rel={err:E2} state={stateErr:E2} (tol {tol:G2}){(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        (int bp, int bf) = RunBackward(rng, output, error);
        return (passed + bp, failed + bf);
    }

    /// <summary>
    /// Only the backward problems (ATTEND_CHECK_CUDA_PARTS=delta-bwd), or only those with value dims past 128
    /// (<paramref name="wideOnly"/>, ATTEND_CHECK_CUDA_PARTS=delta-bwd-wide: the chunk kernel's value-column blocks).
    /// </summary>
    public static (int Passed, int Failed) RunBackwardOnly(int seed, TextWriter output, TextWriter error, bool wideOnly = false) =>
        RunBackward(new Random(unchecked(seed * 31 + 19)), output, error, wideOnly);

    /// <summary>
    /// The KDA (channel gate) backward problems (ATTEND_CHECK_CUDA_PARTS=kda-bwd): attend_kda_bwd_chunk and the GATE 2
    /// reverse chain, every gradient (d log α per channel) against the float64 naive form's, NaN-poisoned.
    /// </summary>
    public static (int Passed, int Failed) RunKdaBackward(int seed, TextWriter output, TextWriter error)
    {
        var rng = new Random(unchecked(seed * 31 + 23));
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;
        const LinearUpdate G = LinearUpdate.GatedDelta;
        const LinearDecay C = LinearDecay.ChannelGate;
        // Dk 64/128 × Dv 64/128, GQA, varlen with a 1-token and an empty sequence, β absent, T = 1, T = 64m + r, and gates
        // weak (×0.05), mid, strong (×8) and past e^-80 within 16 tokens (×40: d log α's cancellation rule).
        BackwardCase[] cases =
        [
            new("bwd kda, S0 and dS_T", 2, Odd(65, 400), 4, 4, 128, 128, G, C, true, true),
            new("bwd kda, GQA 2:1, Dk 64, beta = 1", 1, Odd(129, 500), 4, 2, 64, 64, G, C, false, false, Beta: false),
            new("bwd kda, T = 64m + r, strong", 1, 64 * rng.Next(2, 6) + rng.Next(1, 63), 4, 4, 128, 128, G, C, true, true, GateScale: 8f),
            new("bwd kda, gates past e^-80 in 16 tokens", 1, Odd(65, 300), 2, 2, 128, 128, G, C, true, true, GateScale: 40f),
            new("bwd kda, weak gates, GQA 4:1, Dv 64", 1, Odd(65, 300), 4, 1, 128, 64, G, C, true, true, GateScale: 0.05f),
            new("bwd kda, T = 1, GQA 2:1", 3, 1, 4, 2, 128, 128, G, C, true, true),
            new("bwd kda, varlen (1, empty), Dk 64 Dv 128", 1, 0, 4, 2, 64, 128, G, C, true, true, [1, rng.Next(2, 200), 0, rng.Next(300, 700)], ExtremeBeta: true),
            new("bwd kda, long, no dS_T", 1, Odd(1100, 1500), 2, 2, 128, 128, G, C, true, false),
            // On a caller's non-blocking stream: the recomputed chain on the plan's side stream overlaps the reverse chain, and
            // GQA's dk and dv are zeroed on the caller's stream.
            new("bwd kda, GQA 2:1, non-blocking stream", 1, Odd(300, 700), 4, 2, 128, 128, G, C, true, true, OnStream: true, NonBlocking: true),
        ];
        int passed = 0, failed = 0;
        foreach (BackwardCase c in cases)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                (double[] errs, string? problem) = type == ElementType.BFloat16 ? OneBackward<BFloat16>(c, type, rng) : OneBackward<Half>(c, type, rng);
                double tol = CheckCommand.GradientTolerance(type);
                bool ok = problem is null && errs.All(e => e <= tol);
                int t = c.Lengths?.Sum() ?? c.T;
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {"CudaKda backward",-24} {type.ShortName(),-4} {c.Name,-40} B={c.B} T={t} H={c.H}/{c.Hkv} Dk={c.Dk} Dv={c.Dv} gate x{c.GateScale:G3}  dq={errs[0]:E2} dk={errs[1]:E2} dv={errs[2]:E2} dbeta={errs[3]:E2} dg={errs[4]:E2} dS0={errs[5]:E2} (tol {tol:G2}){(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        return (passed, failed);
    }

    private sealed record BackwardCase(string Name, int B, int T, int H, int Hkv, int Dk, int Dv, LinearUpdate Update, LinearDecay Decay, bool InitialState,
        bool StateGradient, int[]? Lengths = null, bool Beta = true, float GateScale = 1f, bool ExtremeBeta = false, CudaDeltaKeep Keep = CudaDeltaKeep.None,
        bool OnStream = false, bool NonBlocking = false);

    // The chunked backward (CudaDeltaRulePlan.Backward): dq, dk, dv, dβ, d log α and dS0 against the float64 naive form's
    // gradients on the same inputs rounded to the element type, into NaN-poisoned gradients. wideOnly: only the problems
    // with Dv > 128.
    private static (int Passed, int Failed) RunBackward(Random rng, TextWriter output, TextWriter error, bool wideOnly = false)
    {
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;
        const LinearUpdate D = LinearUpdate.Delta, G = LinearUpdate.GatedDelta;
        // Six specialisations per element type ((Dk, the chunk kernel's value block, gate): (128, 128, 0), (64, 64, 0),
        // (128, 128, 1), (64, 128, 1), and for the wide cases (64, 64, 1) and (128, 64, 0)).
        BackwardCase[] cases =
        [
            new("bwd delta, S0 and dS_T", 2, Odd(65, 400), 4, 4, 128, 128, D, LinearDecay.None, true, true),
            new("bwd delta, GQA 2:1, Dk 64, beta = 1", 1, Odd(129, 500), 4, 2, 64, 64, D, LinearDecay.None, false, false, Beta: false),
            new("bwd delta, long, beta near 0 and 1", 1, Odd(1100, 1500), 2, 2, 128, 128, D, LinearDecay.None, true, true, ExtremeBeta: true),
            new("bwd gated, T = 64m + r, S0 and dS_T", 1, 64 * rng.Next(2, 6) + rng.Next(1, 63), 4, 4, 128, 128, G, LinearDecay.ScalarGate, true, true),
            new("bwd gated, fixed decay, GQA 4:1", 1, Odd(65, 300), 4, 1, 128, 128, G, LinearDecay.FixedPerHead, true, true),
            new("bwd gated, T = 1, GQA 2:1", 3, 1, 4, 2, 128, 128, G, LinearDecay.ScalarGate, true, true),
            new("bwd gated, varlen (1, empty), strong", 1, 0, 4, 2, 64, 128, G, LinearDecay.ScalarGate, true, true, [1, rng.Next(2, 200), 0, rng.Next(300, 700)], GateScale: 8f, ExtremeBeta: true),
            new("bwd gated, weak gates, no dS_T", 1, Odd(200, 600), 2, 2, 64, 128, G, LinearDecay.ScalarGate, true, false, GateScale: 0.02f),
            // KeepForBackward: a Run keeps T (the backward recomputes w, u, A and the chain from it) or also the checkpoints
            // and δ (the backward recomputes nothing).
            new("bwd delta, kept T, GQA 2:1", 1, Odd(65, 400), 4, 2, 128, 128, D, LinearDecay.None, true, true, Keep: CudaDeltaKeep.Inverse),
            new("bwd gated, kept T, T = 64m + r", 1, 64 * rng.Next(2, 6) + rng.Next(1, 63), 4, 4, 128, 128, G, LinearDecay.ScalarGate, true, true, Keep: CudaDeltaKeep.Inverse),
            new("bwd gated, kept all, varlen (empty)", 1, 0, 4, 4, 128, 128, G, LinearDecay.ScalarGate, true, true, [rng.Next(1, 100), 0, rng.Next(100, 400)], Keep: CudaDeltaKeep.All),
            // On a stream of the caller's: the recomputed chain then runs on the plan's side stream at the same time as the
            // reverse chain, ordered only by the fork and join events (on the legacy stream the two are serialised), so
            // these cases check the events themselves.
            new("bwd gated, on a stream, GQA 2:1", 1, 64 * rng.Next(3, 8) + rng.Next(1, 63), 4, 2, 128, 128, G, LinearDecay.ScalarGate, true, true, OnStream: true),
            new("bwd delta, on a stream, kept T", 1, Odd(300, 700), 4, 4, 128, 128, D, LinearDecay.None, true, true, Keep: CudaDeltaKeep.Inverse, OnStream: true),
            // Value dims past 128: the chunk kernel runs Dv / 128 (or Dv / 64) CTAs per (chunk, head), whose shares of dq, dk,
            // dβ and d log α are added atomically into zeroed gradients (dv: each block's own columns); the checkpoints and the
            // state gradients have rows of Dv, the tiles the block's width.
            new("bwd delta, Dv 256 (2 x 128), S0, dS_T", 2, Odd(65, 300), 4, 4, 128, 256, D, LinearDecay.None, true, true),
            new("bwd gated, Dv 192 (3 x 64), GQA, varlen", 1, 0, 4, 2, 64, 192, G, LinearDecay.ScalarGate, true, true, [1, rng.Next(2, 200), 0, rng.Next(200, 500)], ExtremeBeta: true),
            new("bwd gated, Dv 256, fixed decay, GQA 4:1, kept all", 1, Odd(65, 300), 4, 1, 128, 256, G, LinearDecay.FixedPerHead, true, true, Keep: CudaDeltaKeep.All),
            new("bwd gated, Dv 256, Dk 64, kept T, stream", 1, 64 * rng.Next(2, 5) + rng.Next(1, 63), 4, 4, 64, 256, G, LinearDecay.ScalarGate, true, true, GateScale: 4f, Keep: CudaDeltaKeep.Inverse, OnStream: true),
            new("bwd delta, Dv 320 (5 x 64), beta = 1, no dS_T", 1, Odd(65, 300), 2, 2, 128, 320, D, LinearDecay.None, false, false, Beta: false),
            // On a non-blocking stream of the caller's: the zeroing of the atomically summed gradients (GQA's dk and dv, the
            // value blocks' dq, dk, dβ, d log α) must be queued on that stream, as a legacy-stream memset is not ordered with it.
            new("bwd gated, Dv 192, GQA 2:1, non-blocking", 1, Odd(200, 500), 4, 2, 128, 192, G, LinearDecay.ScalarGate, true, true, OnStream: true, NonBlocking: true),
        ];
        int passed = 0, failed = 0;
        foreach (BackwardCase c in cases)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                if (wideOnly && c.Dv <= 128) continue;
                (double[] errs, string? problem) = type == ElementType.BFloat16 ? OneBackward<BFloat16>(c, type, rng) : OneBackward<Half>(c, type, rng);
                double tol = CheckCommand.GradientTolerance(type);
                bool ok = problem is null && errs.All(e => e <= tol);
                int t = c.Lengths?.Sum() ?? c.T;
                string label = (c.Update == D ? "CudaDelta" : "CudaGatedDelta") + " backward";
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {label,-24} {type.ShortName(),-4} {c.Name,-36} B={c.B} T={t} H={c.H}/{c.Hkv} Dk={c.Dk} Dv={c.Dv} {c.Decay}  dq={errs[0]:E2} dk={errs[1]:E2} dv={errs[2]:E2} dbeta={errs[3]:E2} dg={errs[4]:E2} dS0={errs[5]:E2} (tol {tol:G2}){(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        return (passed, failed);
    }

    // Relative L2 errors of dq, dk, dv, dβ (0 without β), d log α (0 without a gate) and dS0 (0 without an initial state).
    private static (double[] Errors, string? Problem) OneBackward<T>(BackwardCase c, ElementType type, Random rng) where T : unmanaged
    {
        SeqOffsets? offsets = c.Lengths is null ? null : SeqOffsets.FromLengths(c.Lengths);
        int tokens = offsets?.TotalTokens ?? c.T, n = offsets?.Count ?? c.B;
        var shape = new LinearShape(c.B, tokens, c.H, c.Hkv, c.Dk, c.Dv);
        long rows = (long)c.B * tokens;
        float[] q = Rounded<T>(rng, rows * c.H * c.Dk, 1, 1.0), k = Rounded<T>(rng, rows * c.Hkv, c.Dk, 0), v = Rounded<T>(rng, rows * c.Hkv * c.Dv, 1, 1.0);
        float[] dO = Rounded<T>(rng, rows * c.H * c.Dv, 1, 1.0);
        float[] beta = !c.Beta ? [] : c.ExtremeBeta ? ExtremeBetas(rng, rows * c.H) : Betas(rng, rows * c.H);
        float[] gate = c.Decay switch
        {
            LinearDecay.ScalarGate => CudaLinearCheck.Gates(rng, rows * c.H, c.GateScale),
            LinearDecay.ChannelGate => CudaLinearCheck.Gates(rng, rows * c.H * c.Dk, c.GateScale),   // KDA: [B, T, H, Dk]
            _ => [],
        };
        float[]? gamma = c.Decay == LinearDecay.FixedPerHead ? Enumerable.Range(0, c.H).Select(_ => (float)(1 - Math.Pow(2, -rng.Next(2, 8)))).ToArray() : null;
        long stateLength = (long)n * c.H * c.Dk * c.Dv;
        float[] s0 = c.InitialState ? Rounded<float>(rng, stateLength, 1, 0.3) : [];
        float[] dST = c.StateGradient ? Rounded<float>(rng, stateLength, 1, 0.3) : [];
        var options = new LinearAttentionOptions { Form = LinearForm.Chunked, Update = c.Update, Decay = c.Decay, HeadDecay = gamma, Scale = 1f / MathF.Sqrt(c.Dk) };
        var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Beta = beta, Gate = gate, InitialState = s0, Offsets = offsets };
        float[] rq = new float[q.Length], rk = new float[k.Length], rv = new float[v.Length], rb = new float[beta.Length], rg = new float[gate.Length];
        float[] rs = new float[c.InitialState ? stateLength : 0];
        LinearAttention.Backward(inputs, options with { Form = LinearForm.Naive }, dO, dST,
            new LinearGradients { Q = rq, K = rk, V = rv, Beta = rb, Gate = rg, InitialState = rs });

        CudaContext context = CudaContext.Default;
        try
        {
            using var plan = new CudaDeltaRulePlan(context, shape, type, options, offsets);
            // ATTEND_CHECK_DELTA_BWD_WARPS (a development switch, 4 or 8): the chunk kernel's warps, to check both variants.
            if (int.TryParse(Environment.GetEnvironmentVariable("ATTEND_CHECK_DELTA_BWD_WARPS"), out int warps)) plan.ChunkWarps = warps;
            using CudaTensor tq = CudaLinearCheck.Upload<T>(context, q, c.B, tokens, c.H, c.Dk);
            using CudaTensor tk = CudaLinearCheck.Upload<T>(context, k, c.B, tokens, c.Hkv, c.Dk);
            using CudaTensor tv = CudaLinearCheck.Upload<T>(context, v, c.B, tokens, c.Hkv, c.Dv);
            using CudaTensor tdO = CudaLinearCheck.Upload<T>(context, dO, c.B, tokens, c.H, c.Dv);
            using DeviceBuffer? dbeta = beta.Length == 0 ? null : DeviceBuffer.From<float>(context, beta);
            using DeviceBuffer? dgate = gate.Length == 0 ? null : DeviceBuffer.From<float>(context, gate);
            using DeviceBuffer? ds0 = s0.Length == 0 ? null : DeviceBuffer.From<float>(context, s0);
            using DeviceBuffer? ddST = dST.Length == 0 ? null : DeviceBuffer.From<float>(context, dST);
            using var gq = new DeviceBuffer(context, Math.Max(4, q.Length * 4L));
            using var gk = new DeviceBuffer(context, Math.Max(4, k.Length * 4L));
            using var gv = new DeviceBuffer(context, Math.Max(4, v.Length * 4L));
            using DeviceBuffer? gb = beta.Length == 0 ? null : new DeviceBuffer(context, beta.Length * 4L);
            using DeviceBuffer? gg = gate.Length == 0 ? null : new DeviceBuffer(context, gate.Length * 4L);
            using DeviceBuffer? gs = rs.Length == 0 ? null : new DeviceBuffer(context, Math.Max(4, stateLength * 4));
            foreach (DeviceBuffer? poisoned in (DeviceBuffer?[])[gq, gk, gv, gb, gg, gs]) poisoned?.Fill(0xFF);
            // A non-blocking stream is not ordered with the legacy stream's uploads and poison: wait for them, as its caller must.
            if (c.NonBlocking) context.Synchronize();
            using CudaStream? stream = c.OnStream ? new CudaStream(context, c.NonBlocking) : null;
            using CudaTensor output = CudaTensor.Create(context, type, c.B, tokens, c.H, c.Dv);
            if (c.Keep != CudaDeltaKeep.None)
            {
                plan.KeepForBackward = c.Keep;
                plan.Run(tq, tk, tv, dbeta, dgate, ds0, output, null, stream);
            }
            plan.Backward(tq, tk, tv, dbeta, dgate, ds0, tdO, ddST, gq, gk, gv, gb, gg, gs, stream);
            context.Synchronize();
            double Error(DeviceBuffer? buffer, float[] expected, ref int nan)
            {
                if (buffer is null || expected.Length == 0) return 0;
                var actual = new float[expected.Length];
                buffer.CopyTo<float>(actual);
                double e = CudaLinearCheck.Relative<float>(actual, expected, out int bad);
                nan += bad;
                return e;
            }
            int nanCount = 0;
            double[] errs = [Error(gq, rq, ref nanCount), Error(gk, rk, ref nanCount), Error(gv, rv, ref nanCount), Error(gb, rb, ref nanCount),
                Error(gg, rg, ref nanCount), Error(gs, rs, ref nanCount)];
            return (errs, nanCount > 0 ? $"{nanCount} NaN/unwritten gradient entries" : null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return ([.. Enumerable.Repeat(double.PositiveInfinity, 6)], $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
    }

    // β near its ends: half the tokens in (0.001, 0.03), half in (0.97, 1].
    private static float[] ExtremeBetas(Random rng, long count)
    {
        var b = new float[count];
        for (long i = 0; i < count; i++) b[i] = (float)(rng.Next(2) == 0 ? 0.001 + 0.029 * rng.NextDouble() : 1 - 0.03 * rng.NextDouble());
        return b;
    }

    private static (double Output, double State, string? Problem) One<T>(DeltaCase c, ElementType type, Random rng) where T : unmanaged
    {
        SeqOffsets? offsets = c.Lengths is null ? null : SeqOffsets.FromLengths(c.Lengths);
        int tokens = offsets?.TotalTokens ?? c.T, n = offsets?.Count ?? c.B;
        var shape = new LinearShape(c.B, tokens, c.H, c.Hkv, c.Dk, c.Dv);
        long rows = (long)c.B * tokens;
        float[] q = Rounded<T>(rng, rows * c.H * c.Dk, 1, 1.0), k = Rounded<T>(rng, rows * c.Hkv, c.Dk, 0), v = Rounded<T>(rng, rows * c.Hkv * c.Dv, 1, 1.0);
        float[] beta = c.Beta ? Betas(rng, rows * c.H) : [];
        float[] gate = c.Decay == LinearDecay.ScalarGate ? CudaLinearCheck.Gates(rng, rows * c.H, 1f) : [];
        float[]? gamma = c.Decay == LinearDecay.FixedPerHead ? Enumerable.Range(0, c.H).Select(_ => (float)(1 - Math.Pow(2, -rng.Next(2, 8)))).ToArray() : null;
        long stateLength = (long)n * c.H * c.Dk * c.Dv;
        float[] s0 = c.InitialState ? Rounded<float>(rng, stateLength, 1, 0.3) : [];
        var options = new LinearAttentionOptions { Form = c.Form, Update = c.Update, Decay = c.Decay, HeadDecay = gamma, Scale = 1f / MathF.Sqrt(c.Dk) };

        var refOut = new float[rows * c.H * c.Dv];
        var refState = new float[stateLength];
        var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Beta = beta, Gate = gate, InitialState = s0, Offsets = offsets };
        LinearAttention.Forward(inputs, options with { Form = LinearForm.Naive }, refOut, refState);

        return RunAndCompare<T>(context => new CudaDeltaRulePlan(context, shape, type, options, offsets, c.ValueBlock, c.ValueGroups), type, shape,
            q, k, v, beta, gate, s0, refOut, refState);
    }

    /// <summary>
    /// Runs the plan <paramref name="makePlan"/> builds on the inputs (output and final state poisoned with NaN first) and
    /// compares both with the float64 naive form's <paramref name="refOut"/> and <paramref name="refState"/>: the relative
    /// errors, and a problem (NaN or unwritten entries, or the exception) or null. The delta-rule and KDA checks share it.
    /// </summary>
    internal static (double Output, double State, string? Problem) RunAndCompare<T>(Func<CudaContext, CudaDeltaRulePlan> makePlan, ElementType type,
        LinearShape shape, float[] q, float[] k, float[] v, float[] beta, float[] gate, float[] s0, float[] refOut, float[] refState) where T : unmanaged
    {
        CudaContext context = CudaContext.Default;
        try
        {
            using CudaDeltaRulePlan plan = makePlan(context);
            using CudaTensor dq = CudaLinearCheck.Upload<T>(context, q, shape.Batch, shape.Tokens, shape.Heads, shape.KeyDim);
            using CudaTensor dk = CudaLinearCheck.Upload<T>(context, k, shape.Batch, shape.Tokens, shape.KvHeads, shape.KeyDim);
            using CudaTensor dv = CudaLinearCheck.Upload<T>(context, v, shape.Batch, shape.Tokens, shape.KvHeads, shape.ValueDim);
            using CudaTensor dout = CudaTensor.Create(context, type, shape.Batch, shape.Tokens, shape.Heads, shape.ValueDim);
            using DeviceBuffer? dbeta = beta.Length == 0 ? null : DeviceBuffer.From<float>(context, beta);
            using DeviceBuffer? dgate = gate.Length == 0 ? null : DeviceBuffer.From<float>(context, gate);
            using DeviceBuffer? ds0 = s0.Length == 0 ? null : DeviceBuffer.From<float>(context, s0);
            using var dsT = new DeviceBuffer(context, Math.Max(4, refState.Length * 4L));
            dout.Buffer.Fill(0xFF);
            dsT.Fill(0xFF);
            plan.Run(dq, dk, dv, dbeta, dgate, ds0, dout, dsT);
            context.Synchronize();
            var o = new T[dout.Length];
            dout.CopyTo<T>(o);
            var sT = new float[refState.Length];
            dsT.CopyTo<float>(sT);
            double err = CudaLinearCheck.Relative<T>(o, refOut, out int nanOut);
            double stateErr = CudaLinearCheck.Relative<float>(sT, refState, out int nanState);
            string? problem = nanOut + nanState > 0 ? $"{nanOut} NaN/unwritten outputs, {nanState} NaN/unwritten state entries" : null;
            return (err, stateErr, problem);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
    }

    // β = sigmoid(x) for uniform x in [0, 1), as flash-linear-attention's tests draw it, spread to (0.1, 1) here.
    internal static float[] Betas(Random rng, long count)
    {
        var b = new float[count];
        for (long i = 0; i < count; i++) b[i] = (float)(0.1 + 0.9 / (1 + Math.Exp(-4 * (rng.NextDouble() - 0.3))));
        return b;
    }

    // `count` rows of `width` Gaussian values rounded to T; scale 0 L2-normalises each row (the delta rule's keys).
    internal static float[] Rounded<T>(Random rng, long count, int width, double scale) where T : unmanaged
    {
        var data = new float[count * width];
        var row = new double[width];
        for (long r = 0; r < count; r++)
        {
            double norm = 0;
            for (int i = 0; i < width; i++)
            {
                row[i] = CudaLinearCheck.Gaussian(rng);
                norm += row[i] * row[i];
            }
            double f = scale == 0 ? 1 / Math.Sqrt(norm) : scale;
            for (int i = 0; i < width; i++)
                data[r * width + i] = ElementConvert.ToSingle(ElementConvert.FromSingle<T>((float)(f * row[i])));
        }
        return data;
    }
}
