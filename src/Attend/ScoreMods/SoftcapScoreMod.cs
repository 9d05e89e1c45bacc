using System.Numerics;

namespace Attend;

/// <summary>Logit soft-capping (Gemma 2, Grok): <c>cap · tanh(score / cap)</c>.</summary>
public readonly struct SoftcapScoreMod : IScoreMod<SoftcapScoreMod>
{
    /// <summary>Creates a soft cap.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A cap that is not finite and positive.</exception>
    public SoftcapScoreMod(float cap)
    {
        if (!float.IsFinite(cap) || cap <= 0)
            throw new ArgumentOutOfRangeException(nameof(cap), cap, "The soft cap must be finite and > 0.");
        Cap = cap;
    }

    /// <summary>The cap.</summary>
    public float Cap { get; }

    /// <inheritdoc/>
    public T Apply<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T>
    {
        T cap = T.CreateTruncating(Cap);
        return cap * T.Tanh(score / cap);
    }

    /// <inheritdoc/>
    public T Derivative<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T>
    {
        T t = T.Tanh(score / T.CreateTruncating(Cap));
        return T.One - t * t;
    }

    /// <inheritdoc/>
    public bool IsIdentity => false;

    /// <inheritdoc/>
    public override string ToString() => $"softcap({Cap})";
}
