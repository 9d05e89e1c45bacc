using System.Numerics;

namespace Attend;

/// <summary>
/// How a score changes: a function of the scaled score <c>scale·q·k</c> and of (batch, head, query position,
/// key position), applied before the mask and the softmax. Positions are on the key axis, as for
/// <see cref="IMaskMod"/>.
/// </summary>
/// <remarks>
/// Implement as a struct deriving from <see cref="IScoreMod{TSelf}"/>. <see cref="Apply{T}"/> is generic so the same
/// definition runs in float32 kernels and in the float64 reference; <see cref="Derivative{T}"/> is its derivative with
/// respect to the score, used by the backward pass.
/// </remarks>
public interface IScoreMod
{
    /// <summary>The modified score.</summary>
    T Apply<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T>;

    /// <summary>d Apply / d score at <paramref name="score"/>.</summary>
    T Derivative<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T>;

    /// <summary>True for the identity, which kernels skip entirely.</summary>
    bool IsIdentity { get; }

    /// <summary>Calls <paramref name="visitor"/> with the concrete score-mod type.</summary>
    TResult Accept<TVisitor, TResult>(ref TVisitor visitor) where TVisitor : struct, IScoreModVisitor<TResult>;
}

/// <summary>Base interface of score-mod structs; supplies <see cref="IScoreMod.Accept{TVisitor, TResult}"/>.</summary>
public interface IScoreMod<TSelf> : IScoreMod where TSelf : struct, IScoreMod<TSelf>
{
    TResult IScoreMod.Accept<TVisitor, TResult>(ref TVisitor visitor) => visitor.Visit((TSelf)this);
}

/// <summary>Receives a score mod as its concrete struct type.</summary>
public interface IScoreModVisitor<TResult>
{
    /// <summary>Called with the concrete score mod.</summary>
    TResult Visit<TScore>(TScore scoreMod) where TScore : struct, IScoreMod<TScore>;
}
