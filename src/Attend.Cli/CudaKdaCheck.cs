using System.Globalization;
using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;

namespace Attend.Cli;

/// <summary>
/// The Kimi Delta Attention part of <c>attend check --backend cuda</c> (<c>ATTEND_CHECK_CUDA_PARTS=kda</c>):
/// <see cref="CudaDeltaRulePlan"/>'s chunked and recurrent forms of the gated delta rule with a log gate per key channel
/// (<see cref="LinearDecay.ChannelGate"/>, <c>[B, T, H, Dk]</c>) on fresh random inputs — L2-normalised keys, β in (0, 1)
/// or absent, gates from weak to strong enough that a channel's decay over 16 tokens passes e^−80 (where a split of the
/// in-chunk decay at one reference row would need factors above e^80), odd T, T = 1, T not a multiple of the chunk,
/// grouped-query heads, varlen with a 1-token and an empty sequence, initial states, Dk 64/128, Dv 64/128/256 — into
/// NaN-poisoned outputs and final states, against the float64 naive form on the same inputs rounded to the element type;
/// and one call through <see cref="LinearAttention.Forward"/> with <c>Backend = "cuda"</c> and the l2norm map (the
/// route of <c>attend run --method kda --backend cuda</c>).
/// </summary>
internal static class CudaKdaCheck
{
    private sealed record KdaCase(string Name, int B, int T, int H, int Hkv, int Dk, int Dv, bool InitialState, LinearForm Form,
        int[]? Lengths = null, bool Beta = true, float GateScale = 1f);

    public static (int Passed, int Failed) Run(int seed, TextWriter output, TextWriter error)
    {
        var rng = new Random(unchecked(seed * 31 + 23));
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;
        // Two specialisations per element type (Dk 128 and 64); the recurrent cases share them.
        KdaCase[] cases =
        [
            new("kda, initial state", 2, Odd(65, 400), 4, 4, 128, 128, true, LinearForm.Chunked),
            new("kda, GQA 2:1, Dk 64, beta = 1", 1, Odd(129, 500), 4, 2, 64, 64, false, LinearForm.Chunked, Beta: false),
            new("kda, T = 64m + r, strong gates", 1, 64 * rng.Next(2, 6) + rng.Next(1, 63), 4, 4, 128, 128, true, LinearForm.Chunked, GateScale: 8f),
            new("kda, gates past e^-80 in 16 tokens", 1, Odd(65, 300), 2, 2, 128, 128, true, LinearForm.Chunked, GateScale: 40f),
            new("kda, weak gates, GQA 4:1, Dv 256", 1, Odd(65, 300), 4, 1, 128, 256, true, LinearForm.Chunked, GateScale: 0.05f),
            new("kda, T = 1, initial state", 3, 1, 4, 2, 128, 128, true, LinearForm.Chunked),
            new("kda, long (T ~ 1.5k), state", 1, Odd(1200, 1700), 2, 2, 128, 128, true, LinearForm.Chunked),
            new("kda, varlen (1-token, empty)", 1, 0, 4, 2, 128, 64, true, LinearForm.Chunked, [1, rng.Next(2, 200), 0, rng.Next(300, 700)]),
            new("kda, Dk 64, Dv 128, strong", 1, Odd(65, 300), 4, 2, 64, 128, true, LinearForm.Chunked, GateScale: 8f),
            new("recurrent kda, GQA 2:1", 2, Odd(20, 200), 4, 2, 128, 128, true, LinearForm.Recurrent),
            new("recurrent kda decode T = 1, varlen, Dk 64 Dv 96", 1, 0, 8, 2, 64, 96, true, LinearForm.Recurrent, [1, 1, 1, 0]),
        ];
        int passed = 0, failed = 0;
        foreach (KdaCase c in cases)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                (double err, double stateErr, string? problem) = type == ElementType.BFloat16 ? One<BFloat16>(c, type, rng) : One<Half>(c, type, rng);
                double tol = CheckCommand.Tolerance(type);
                bool ok = problem is null && err <= tol && stateErr <= tol;
                int t = c.Lengths?.Sum() ?? c.T;
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {"CudaKda " + c.Form.ToString().ToLowerInvariant(),-24} {type.ShortName(),-4} {c.Name,-40} B={c.B} T={t} H={c.H}/{c.Hkv} Dk={c.Dk} Dv={c.Dv} gate x{c.GateScale:G3}  rel={err:E2} state={stateErr:E2} (tol {tol:G2}){(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        (double routeErr, double routeState, string? routeProblem) = Route(rng);
        double rtol = CheckCommand.Tolerance(ElementType.BFloat16);
        bool rok = routeProblem is null && routeErr <= rtol && routeState <= rtol;
        string rline = string.Create(CultureInfo.InvariantCulture,
            $"  {(rok ? "ok  " : "FAIL")} {"LinearAttention cuda",-24} {"bf16",-4} {"kda route: l2norm map on the host",-40} rel={routeErr:E2} state={routeState:E2} (tol {rtol:G2}){(routeProblem is null ? "" : "  " + routeProblem)}");
        (rok ? output : error).WriteLine(rline);
        return (passed + (rok ? 1 : 0), failed + (rok ? 0 : 1));
    }

    private static (double Output, double State, string? Problem) One<T>(KdaCase c, ElementType type, Random rng) where T : unmanaged
    {
        SeqOffsets? offsets = c.Lengths is null ? null : SeqOffsets.FromLengths(c.Lengths);
        int tokens = offsets?.TotalTokens ?? c.T, n = offsets?.Count ?? c.B;
        var shape = new LinearShape(c.B, tokens, c.H, c.Hkv, c.Dk, c.Dv);
        long rows = (long)c.B * tokens;
        float[] q = CudaDeltaCheck.Rounded<T>(rng, rows * c.H * c.Dk, 1, 1.0), k = CudaDeltaCheck.Rounded<T>(rng, rows * c.Hkv, c.Dk, 0);
        float[] v = CudaDeltaCheck.Rounded<T>(rng, rows * c.Hkv * c.Dv, 1, 1.0);
        float[] beta = c.Beta ? CudaDeltaCheck.Betas(rng, rows * c.H) : [];
        float[] gate = CudaLinearCheck.Gates(rng, rows * c.H * c.Dk, c.GateScale);
        long stateLength = (long)n * c.H * c.Dk * c.Dv;
        float[] s0 = c.InitialState ? CudaDeltaCheck.Rounded<float>(rng, stateLength, 1, 0.3) : [];
        var options = new LinearAttentionOptions
        {
            Form = c.Form, Update = LinearUpdate.GatedDelta, Decay = LinearDecay.ChannelGate, Scale = 1f / MathF.Sqrt(c.Dk),
        };
        var refOut = new float[rows * c.H * c.Dv];
        var refState = new float[stateLength];
        var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Beta = beta, Gate = gate, InitialState = s0, Offsets = offsets };
        LinearAttention.Forward(inputs, options with { Form = LinearForm.Naive }, refOut, refState);

        return CudaDeltaCheck.RunAndCompare<T>(context => new CudaDeltaRulePlan(context, shape, type, options, offsets), type, shape,
            q, k, v, beta, gate, s0, refOut, refState);
    }

    // LinearAttention.Forward with Backend = "cuda" as KimiDeltaAttentionMethod configures it (l2norm map, channel gate, β,
    // GQA 2:1, an initial state) against the float64 naive form on the CPU on the same float32 inputs.
    private static (double Output, double State, string? Problem) Route(Random rng)
    {
        const int b = 1, h = 4, hkv = 2, dk = 128, dv = 128;
        int t = rng.Next(100, 300);
        var shape = new LinearShape(b, t, h, hkv, dk, dv);
        float[] q = CudaDeltaCheck.Rounded<float>(rng, (long)t * h * dk, 1, 1.0), k = CudaDeltaCheck.Rounded<float>(rng, (long)t * hkv * dk, 1, 1.0);
        float[] v = CudaDeltaCheck.Rounded<float>(rng, (long)t * hkv * dv, 1, 1.0);
        float[] beta = CudaDeltaCheck.Betas(rng, (long)t * h), gate = CudaLinearCheck.Gates(rng, (long)t * h * dk, 2f);
        float[] s0 = CudaDeltaCheck.Rounded<float>(rng, (long)h * dk * dv, 1, 0.3);
        var options = new LinearAttentionOptions
        {
            FeatureMap = FeatureMaps.L2Norm, Decay = LinearDecay.ChannelGate, Update = LinearUpdate.GatedDelta, Scale = 1f / MathF.Sqrt(dk),
        };
        var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Beta = beta, Gate = gate, InitialState = s0 };
        var refOut = new float[(long)t * h * dv];
        var refState = new float[h * dk * dv];
        LinearAttention.Forward(inputs, options with { Form = LinearForm.Naive }, refOut, refState);
        var o = new float[refOut.Length];
        var sT = new float[refState.Length];
        Array.Fill(o, float.NaN);
        Array.Fill(sT, float.NaN);
        try
        {
            LinearAttention.Forward(inputs, options with { Form = LinearForm.Chunked, Backend = CudaBackend.Name }, o, sT);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
        double err = CudaLinearCheck.Relative<float>(o, refOut, out int nanOut);
        double stateErr = CudaLinearCheck.Relative<float>(sT, refState, out int nanState);
        return (err, stateErr, nanOut + nanState > 0 ? $"{nanOut} NaN outputs, {nanState} NaN state entries" : null);
    }
}
