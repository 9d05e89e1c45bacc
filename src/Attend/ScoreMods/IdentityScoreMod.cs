using System.Numerics;

namespace Attend;

/// <summary>The identity score mod.</summary>
public readonly struct IdentityScoreMod : IScoreMod<IdentityScoreMod>
{
    /// <inheritdoc/>
    public T Apply<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> => score;

    /// <inheritdoc/>
    public T Derivative<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> => T.One;

    /// <inheritdoc/>
    public bool IsIdentity => true;

    /// <inheritdoc/>
    public override string ToString() => "none";
}
