using System.Globalization;
using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;

namespace Attend.Cli;

/// <summary>
/// The linear-attention part of <c>attend check --backend cuda</c>: the chunked and recurrent CUDA forms of the additive
/// update (decay none, a fixed γ per head, a scalar gate per token, a gate per key channel) on fresh random inputs
/// (odd T, T = 1, T not a multiple of the chunk, several segments per sequence, grouped-query heads, varlen with a
/// 1-token sequence, initial states), into NaN-poisoned outputs and final states, against the float64 naive form on
/// the same inputs rounded to the element type.
/// </summary>
internal static class CudaLinearCheck
{
    private sealed record LinearCheckCase(string Name, int B, int T, int H, int Hkv, int Dk, int Dv, LinearDecay Decay, bool InitialState,
        LinearForm Form, int[]? Lengths = null, float GateScale = 1f, FeatureMap? Map = null, bool Denominator = false);

    public static (int Passed, int Failed) Run(int seed, TextWriter output, TextWriter error)
    {
        var rng = new Random(unchecked(seed * 29 + 11));
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;
        LinearCheckCase[] cases =
        [
            new("no decay, initial state", 2, Odd(65, 400), 4, 4, 128, 128, LinearDecay.None, true, LinearForm.Chunked),
            new("fixed decay per head, GQA 2:1", 1, Odd(129, 500), 4, 2, 64, 64, LinearDecay.FixedPerHead, false, LinearForm.Chunked),
            new("scalar gate, T = 64m + r, state", 1, 64 * rng.Next(2, 6) + rng.Next(1, 63), 4, 4, 128, 128, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("channel gate (GLA), state", 1, Odd(65, 400), 4, 4, 128, 128, LinearDecay.ChannelGate, true, LinearForm.Chunked),
            new("channel gate, strong gates, Dv 256", 1, Odd(65, 300), 2, 1, 64, 256, LinearDecay.ChannelGate, false, LinearForm.Chunked, GateScale: 8f),
            new("T = 1, initial state", 3, 1, 4, 2, 128, 128, LinearDecay.FixedPerHead, true, LinearForm.Chunked),
            new("many segments (T ~ 1.5k)", 1, Odd(1200, 1700), 4, 4, 128, 128, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("many segments, channel gate", 1, Odd(1200, 1700), 2, 2, 128, 128, LinearDecay.ChannelGate, true, LinearForm.Chunked),
            new("varlen (1-token seq), states", 1, 0, 4, 2, 128, 64, LinearDecay.ScalarGate, true, LinearForm.Chunked, [1, rng.Next(2, 200), rng.Next(300, 900)]),
            new("recurrent, no decay", 2, Odd(20, 200), 4, 4, 128, 128, LinearDecay.None, true, LinearForm.Recurrent),
            new("recurrent, fixed decay, GQA", 1, Odd(20, 200), 4, 1, 64, 96, LinearDecay.FixedPerHead, true, LinearForm.Recurrent),
            new("recurrent, channel gate", 1, Odd(20, 200), 4, 4, 128, 128, LinearDecay.ChannelGate, true, LinearForm.Recurrent),
            new("recurrent decode T = 1, varlen", 1, 0, 8, 2, 128, 128, LinearDecay.ScalarGate, true, LinearForm.Recurrent, [1, 1, 1, 0]),
            // The element-wise feature maps (device pre-pass) and the denominator normalisation (augmented state, z last).
            new("elu+1, denominator, state, GQA", 2, Odd(65, 400), 4, 2, 128, 128, LinearDecay.None, true, LinearForm.Chunked, Map: FeatureMaps.EluPlusOne, Denominator: true),
            new("relu, fixed decay, denominator", 1, Odd(129, 500), 4, 4, 64, 64, LinearDecay.FixedPerHead, true, LinearForm.Chunked, Map: FeatureMaps.Relu, Denominator: true),
            new("elu+1, channel gate, denominator", 1, Odd(65, 300), 2, 2, 64, 128, LinearDecay.ChannelGate, false, LinearForm.Chunked, Map: FeatureMaps.EluPlusOne, Denominator: true),
            new("relu map, scalar gate, varlen", 1, 0, 4, 2, 128, 64, LinearDecay.ScalarGate, true, LinearForm.Chunked, [1, rng.Next(2, 200), rng.Next(300, 700)], Map: FeatureMaps.Relu),
            new("elu+1, denominator, recurrent", 1, Odd(20, 200), 4, 4, 64, 64, LinearDecay.None, true, LinearForm.Recurrent, Map: FeatureMaps.EluPlusOne, Denominator: true),
        ];
        int passed = 0, failed = 0;
        foreach (LinearCheckCase c in cases)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                // The denominator normalisation is bf16 only (fp16's range overflows the running denominator): fp16 must
                // be refused with the reason, before any launch.
                if (c.Denominator && type == ElementType.Float16)
                {
                    var shape = new LinearShape(c.B, Math.Max(1, c.T), c.H, c.Hkv, c.Dk, c.Dv);
                    var denominator = new LinearAttentionOptions
                    {
                        Decay = c.Decay, Form = c.Form, FeatureMap = c.Map, Normalization = LinearNormalization.Denominator,
                    };
                    bool refused = !CudaLinearPlan.IsSupported(shape, type, denominator, out string why) && why.Contains("bf16", StringComparison.Ordinal);
                    (refused ? output : error).WriteLine($"  {(refused ? "ok  " : "FAIL")} {"CudaLinear " + c.Form.ToString().ToLowerInvariant(),-18} {type.ShortName(),-4} {c.Name,-34} refused as expected: {why}");
                    if (refused) passed++;
                    else failed++;
                    continue;
                }
                (double err, double stateErr, string? problem) = type == ElementType.BFloat16 ? One<BFloat16>(c, type, rng) : One<Half>(c, type, rng);
                double tol = CheckCommand.Tolerance(type);
                bool ok = problem is null && err <= tol && stateErr <= tol;
                int t = c.Lengths?.Sum() ?? c.T;
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {"CudaLinear " + c.Form.ToString().ToLowerInvariant(),-18} {type.ShortName(),-4} {c.Name,-34} B={c.B} T={t} H={c.H}/{c.Hkv} Dk={c.Dk} Dv={c.Dv} {c.Decay}{(c.Map is null ? "" : " " + c.Map.Name)}{(c.Denominator ? " denominator" : "")}  rel={err:E2} state={stateErr:E2} (tol {tol:G2}){(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        // The chunked backward (no decay, fixed decay per head, scalar gate, channel gate): dq, dk, dv, dS0 and the gate
        // gradient against the float64 naive form's gradients.
        LinearCheckCase[] backward =
        [
            new("bwd: no decay, S0 and dS_T", 2, Odd(65, 400), 4, 4, 128, 128, LinearDecay.None, true, LinearForm.Chunked),
            new("bwd: fixed decay, GQA 2:1, Dk 64", 1, Odd(129, 500), 4, 2, 64, 64, LinearDecay.FixedPerHead, false, LinearForm.Chunked),
            new("bwd: fixed decay, segments, state", 1, Odd(1200, 1700), 2, 2, 128, 128, LinearDecay.FixedPerHead, true, LinearForm.Chunked),
            new("bwd: varlen (1-token seq), GQA 4:1", 1, 0, 4, 1, 128, 64, LinearDecay.FixedPerHead, true, LinearForm.Chunked, [1, rng.Next(2, 200), rng.Next(300, 900)]),
            new("bwd: T = 1, S0 and dS_T", 3, 1, 4, 2, 64, 128, LinearDecay.None, true, LinearForm.Chunked),
            new("bwd: scalar gate, S0 and dS_T", 2, Odd(65, 400), 4, 4, 128, 128, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("bwd: scalar gate, segments, GQA 2:1", 1, Odd(1200, 1700), 4, 2, 64, 64, LinearDecay.ScalarGate, true, LinearForm.Chunked),
            new("bwd: scalar gate, varlen, strong", 1, 0, 4, 4, 128, 128, LinearDecay.ScalarGate, true, LinearForm.Chunked, [1, rng.Next(2, 200), rng.Next(300, 900)], GateScale: 8f),
            new("bwd: channel gate (GLA), state", 1, Odd(65, 400), 4, 4, 128, 128, LinearDecay.ChannelGate, true, LinearForm.Chunked),
            new("bwd: channel gate, segments, GQA 2:1", 1, Odd(1200, 1700), 4, 2, 128, 128, LinearDecay.ChannelGate, true, LinearForm.Chunked),
            new("bwd: channel gate, Dk 64, varlen, strong", 1, 0, 2, 2, 64, 128, LinearDecay.ChannelGate, true, LinearForm.Chunked, [1, rng.Next(2, 200), rng.Next(300, 700)], GateScale: 8f),
        ];
        foreach (LinearCheckCase c in backward)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                // The channel gate's backward is bf16 only: fp16 must be refused with the reason, before any launch.
                if (c.Decay == LinearDecay.ChannelGate && type == ElementType.Float16)
                {
                    var shape = new LinearShape(c.B, Math.Max(1, c.T), c.H, c.Hkv, c.Dk, c.Dv);
                    bool refused = !CudaLinearPlan.IsBackwardSupported(shape, type, new LinearAttentionOptions { Decay = c.Decay }, out string why) && why.Contains("bf16", StringComparison.Ordinal);
                    (refused ? output : error).WriteLine($"  {(refused ? "ok  " : "FAIL")} {"CudaLinear backward",-18} {type.ShortName(),-4} {c.Name,-34} refused as expected: {why}");
                    if (refused) passed++;
                    else failed++;
                    continue;
                }
                (double[] errs, string? problem) = type == ElementType.BFloat16 ? OneBackward<BFloat16>(c, type, rng) : OneBackward<Half>(c, type, rng);
                double tol = CheckCommand.GradientTolerance(type);
                bool ok = problem is null && errs.All(e => e <= tol);
                int t = c.Lengths?.Sum() ?? c.T;
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {"CudaLinear backward",-18} {type.ShortName(),-4} {c.Name,-34} B={c.B} T={t} H={c.H}/{c.Hkv} Dk={c.Dk} Dv={c.Dv} {c.Decay}  dq={errs[0]:E2} dk={errs[1]:E2} dv={errs[2]:E2} dS0={errs[3]:E2} dg={errs[4]:E2} (tol {tol:G2}){(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        return (passed, failed);
    }

    // Relative L2 errors of dq, dk, dv, dS0 (0 when the case has no initial state) and d log gate (0 without a gate)
    // against the float64 naive form's gradients.
    private static (double[] Errors, string? Problem) OneBackward<T>(LinearCheckCase c, ElementType type, Random rng) where T : unmanaged
    {
        SeqOffsets? offsets = c.Lengths is null ? null : SeqOffsets.FromLengths(c.Lengths);
        int tokens = offsets?.TotalTokens ?? c.T, n = offsets?.Count ?? c.B;
        var shape = new LinearShape(c.B, tokens, c.H, c.Hkv, c.Dk, c.Dv);
        long rows = (long)c.B * tokens;
        float[] q = Rounded<T>(rng, rows * c.H * c.Dk, 1.0), k = Rounded<T>(rng, rows * c.Hkv * c.Dk, 1.0), v = Rounded<T>(rng, rows * c.Hkv * c.Dv, 1.0);
        float[] dO = Rounded<T>(rng, rows * c.H * c.Dv, 1.0);
        float[] gate = c.Decay switch
        {
            LinearDecay.ScalarGate => Gates(rng, rows * c.H, c.GateScale),
            LinearDecay.ChannelGate => Gates(rng, rows * c.H * c.Dk, c.GateScale),
            _ => [],
        };
        float[]? gamma = c.Decay == LinearDecay.FixedPerHead ? Enumerable.Range(0, c.H).Select(_ => (float)(1 - Math.Pow(2, -rng.Next(2, 8)))).ToArray() : null;
        long stateLength = (long)n * c.H * c.Dk * c.Dv;
        float[] s0 = c.InitialState ? Rounded<float>(rng, stateLength, 1.0) : [];
        float[] dST = c.InitialState ? Rounded<float>(rng, stateLength, 1.0) : [];
        var options = new LinearAttentionOptions { Form = c.Form, Decay = c.Decay, HeadDecay = gamma, Scale = 1f / MathF.Sqrt(c.Dk) };
        var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Gate = gate, InitialState = s0, Offsets = offsets };
        float[] rq = new float[q.Length], rk = new float[k.Length], rv = new float[v.Length], rs = new float[stateLength], rg = new float[gate.Length];
        LinearAttention.Backward(inputs, options with { Form = LinearForm.Naive }, dO, dST, new LinearGradients { Q = rq, K = rk, V = rv, Gate = rg, InitialState = rs });

        CudaContext context = CudaContext.Default;
        try
        {
            using var plan = new CudaLinearPlan(context, shape, type, options, offsets);
            using CudaTensor tq = Upload<T>(context, q, c.B, tokens, c.H, c.Dk);
            using CudaTensor tk = Upload<T>(context, k, c.B, tokens, c.Hkv, c.Dk);
            using CudaTensor tv = Upload<T>(context, v, c.B, tokens, c.Hkv, c.Dv);
            using CudaTensor tdO = Upload<T>(context, dO, c.B, tokens, c.H, c.Dv);
            using DeviceBuffer? ds0 = s0.Length == 0 ? null : DeviceBuffer.From<float>(context, s0);
            using DeviceBuffer? ddST = dST.Length == 0 ? null : DeviceBuffer.From<float>(context, dST);
            using DeviceBuffer? dgate = gate.Length == 0 ? null : DeviceBuffer.From<float>(context, gate);
            using DeviceBuffer? gg = gate.Length == 0 ? null : new DeviceBuffer(context, gate.Length * 4L);
            gg?.Fill(0xFF);
            using var gq = new DeviceBuffer(context, Math.Max(4, q.Length * 4L));
            using var gk = new DeviceBuffer(context, Math.Max(4, k.Length * 4L));
            using var gv = new DeviceBuffer(context, Math.Max(4, v.Length * 4L));
            using var gs = new DeviceBuffer(context, Math.Max(4, stateLength * 4));
            gq.Fill(0xFF);
            gk.Fill(0xFF);
            gv.Fill(0xFF);
            gs.Fill(0xFF);
            plan.Backward(tq, tk, tv, dgate, ds0, tdO, ddST, gq, gk, gv, gg, gs);
            context.Synchronize();
            float[] aq = new float[q.Length], ak = new float[k.Length], av = new float[v.Length], aS = new float[stateLength];
            gq.CopyTo<float>(aq);
            gk.CopyTo<float>(ak);
            gv.CopyTo<float>(av);
            gs.CopyTo<float>(aS);
            double eq = Relative<float>(aq, rq, out int n1), ek = Relative<float>(ak, rk, out int n2), ev = Relative<float>(av, rv, out int n3);
            double es = Relative<float>(aS, rs, out int n4);
            float[] ag = new float[gate.Length];
            gg?.CopyTo<float>(ag);
            double eg = Relative<float>(ag, rg, out int n5);
            int nan = n1 + n2 + n3 + n4 + n5;
            return ([eq, ek, ev, es, eg], nan > 0 ? $"{nan} NaN/unwritten gradient entries" : null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return ([double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity], $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
    }

    private static (double Output, double State, string? Problem) One<T>(LinearCheckCase c, ElementType type, Random rng) where T : unmanaged
    {
        SeqOffsets? offsets = c.Lengths is null ? null : SeqOffsets.FromLengths(c.Lengths);
        int tokens = offsets?.TotalTokens ?? c.T, n = offsets?.Count ?? c.B;
        var shape = new LinearShape(c.B, tokens, c.H, c.Hkv, c.Dk, c.Dv);
        long rows = (long)c.B * tokens;
        float[] q = Rounded<T>(rng, rows * c.H * c.Dk, 1.0), k = Rounded<T>(rng, rows * c.Hkv * c.Dk, 1.0), v = Rounded<T>(rng, rows * c.Hkv * c.Dv, 1.0);
        float[] gate = c.Decay switch
        {
            LinearDecay.ScalarGate => Gates(rng, rows * c.H, c.GateScale),
            LinearDecay.ChannelGate => Gates(rng, rows * c.H * c.Dk, c.GateScale),
            _ => [],
        };
        float[]? gamma = c.Decay == LinearDecay.FixedPerHead ? Enumerable.Range(0, c.H).Select(_ => (float)(1 - Math.Pow(2, -rng.Next(2, 8)))).ToArray() : null;
        int columns = c.Dv + (c.Denominator ? 1 : 0);
        long stateLength = (long)n * c.H * c.Dk * columns;
        float[] s0 = c.InitialState ? Rounded<float>(rng, stateLength, 1.0) : [];
        // The denominator's z column (last) sums φ(k) ≥ 0: a positive start keeps φ(q)·z away from zero, as in real use.
        if (c.Denominator) for (long i = columns - 1; i < s0.Length; i += columns) s0[i] = Math.Abs(s0[i]) + 1f;
        var options = new LinearAttentionOptions
        {
            Form = c.Form, Decay = c.Decay, HeadDecay = gamma, Scale = 1f / MathF.Sqrt(c.Dk), FeatureMap = c.Map,
            Normalization = c.Denominator ? LinearNormalization.Denominator : null,
        };

        var refOut = new float[rows * c.H * c.Dv];
        var refState = new float[stateLength];
        var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Gate = gate, InitialState = s0, Offsets = offsets };
        LinearAttention.Forward(inputs, options with { Form = LinearForm.Naive }, refOut, refState);

        CudaContext context = CudaContext.Default;
        try
        {
            using var plan = new CudaLinearPlan(context, shape, type, options, offsets);
            using CudaTensor dq = Upload<T>(context, q, c.B, tokens, c.H, c.Dk);
            using CudaTensor dk = Upload<T>(context, k, c.B, tokens, c.Hkv, c.Dk);
            using CudaTensor dv = Upload<T>(context, v, c.B, tokens, c.Hkv, c.Dv);
            using CudaTensor dout = CudaTensor.Create(context, type, c.B, tokens, c.H, c.Dv);
            using DeviceBuffer? dgate = gate.Length == 0 ? null : DeviceBuffer.From<float>(context, gate);
            using DeviceBuffer? ds0 = s0.Length == 0 ? null : DeviceBuffer.From<float>(context, s0);
            using var dsT = new DeviceBuffer(context, stateLength * 4);
            dout.Buffer.Fill(0xFF);
            dsT.Fill(0xFF);
            plan.Run(dq, dk, dv, dgate, ds0, dout, dsT);
            context.Synchronize();
            var o = new T[dout.Length];
            dout.CopyTo<T>(o);
            var sT = new float[stateLength];
            dsT.CopyTo<float>(sT);
            double err = Relative<T>(o, refOut, out int nanOut);
            double stateErr = Relative<float>(sT, refState, out int nanState);
            string? problem = nanOut + nanState > 0 ? $"{nanOut} NaN/unwritten outputs, {nanState} NaN/unwritten state entries" : null;
            return (err, stateErr, problem);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
    }

    // Log gates ≤ 0: logsigmoid of a standard normal, times `scale` (GLA's normaliser is 1/16; larger scales decay harder).
    internal static float[] Gates(Random rng, long count, float scale)
    {
        var g = new float[count];
        for (long i = 0; i < count; i++)
        {
            double x = Gaussian(rng);
            g[i] = (float)(-scale * Math.Log(1 + Math.Exp(-x)) / 4);
        }
        return g;
    }

    internal static double Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    // Gaussian values rounded to T (so the float64 reference sees exactly what the GPU sees), returned as float32.
    private static float[] Rounded<T>(Random rng, long count, double scale) where T : unmanaged
    {
        var data = new float[count];
        for (long i = 0; i < count; i++) data[i] = ElementConvert.ToSingle(ElementConvert.FromSingle<T>((float)(scale * Gaussian(rng))));
        return data;
    }

    internal static CudaTensor Upload<T>(CudaContext context, float[] data, int b, int t, int h, int d) where T : unmanaged
    {
        var packed = new T[data.Length];
        for (int i = 0; i < data.Length; i++) packed[i] = ElementConvert.FromSingle<T>(data[i]);
        return CudaTensor.FromHost<T>(context, packed, b, t, h, d);
    }

    internal static double Relative<T>(ReadOnlySpan<T> actual, ReadOnlySpan<float> expected, out int nan) where T : unmanaged
    {
        double diff = 0, norm = 0;
        nan = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double a = ElementConvert.ToSingle(actual[i]);
            if (!double.IsFinite(a))
            {
                nan++;
                continue;
            }
            diff += (a - expected[i]) * (a - expected[i]);
            norm += (double)expected[i] * expected[i];
        }
        return norm == 0 ? (diff == 0 ? 0 : double.PositiveInfinity) : Math.Sqrt(diff / norm);
    }
}
