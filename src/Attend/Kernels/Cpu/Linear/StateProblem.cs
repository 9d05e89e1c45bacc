using Attend.Linear;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>
/// One call of the state kernel after the feature map: φ(q)·scale <c>[B, T, H, Df]</c>, φ(k) <c>[B, T, Hkv, Df]</c>,
/// values <c>[B, T, Hkv, Dv']</c> (with a ones column for a denominator), log gates, β, and the states. Pointers stay
/// valid for the duration of the kernel call (the caller pins them).
/// </summary>
internal sealed unsafe class StateProblem
{
    public required LinearConfig Config { get; init; }
    public required float* Q { get; init; }
    public required float* K { get; init; }
    public required float* V { get; init; }
    /// <summary>Log gates [B, T, H] (ScalarGate) or [B, T, H, Df] (ChannelGate); null otherwise.</summary>
    public required float* Gate { get; init; }
    /// <summary>β [B, T, H], or null (β = 1).</summary>
    public required float* Beta { get; init; }
    /// <summary>Initial states [N, H, Df, Dv'], or null (zero).</summary>
    public required float* InitialState { get; init; }
    /// <summary>Raw outputs φ(q)ᵀS <c>[B, T, H, Dv']</c> (before any normalisation).</summary>
    public required float* Output { get; init; }
    /// <summary>Final states [N, H, Df, Dv'], or null (not wanted).</summary>
    public required float* FinalState { get; init; }

    public int Heads => Config.Shape.Heads;
    public int KvHeads => Config.Shape.KvHeads;
    public int Tokens => Config.Shape.Tokens;
    public int Df => Config.FeatureDim;
    public int Dv => Config.StateColumns;
    public int Group => Heads / KvHeads;
    public int Items => Config.Sequences * Heads;

    /// <summary>Log decay of token <paramref name="token"/> (index into [B·T]) for head <paramref name="head"/> when it is one scalar; 0 for no decay.</summary>
    public float ScalarLogGate(long token, int head) => Config.Decay switch
    {
        LinearDecay.FixedPerHead => Config.LogHeadDecay![head],
        LinearDecay.ScalarGate => Gate[token * Heads + head],
        _ => 0f,
    };

    public float BetaAt(long token, int head) => Beta == null ? 1f : Beta[token * Heads + head];
}
