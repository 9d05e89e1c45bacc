using System.Numerics;

namespace Attend;

/// <summary>Applies <typeparamref name="TFirst"/>, then <typeparamref name="TSecond"/>.</summary>
public readonly struct ComposedScoreMod<TFirst, TSecond> : IScoreMod<ComposedScoreMod<TFirst, TSecond>>
    where TFirst : struct, IScoreMod<TFirst>
    where TSecond : struct, IScoreMod<TSecond>
{
    private readonly TFirst _first;
    private readonly TSecond _second;

    /// <summary>Composes two score mods.</summary>
    public ComposedScoreMod(TFirst first, TSecond second) { _first = first; _second = second; }

    /// <summary>The mod applied first (backends that translate score mods into their own form read it).</summary>
    internal TFirst First => _first;

    /// <summary>The mod applied second.</summary>
    internal TSecond Second => _second;

    /// <inheritdoc/>
    public T Apply<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> =>
        _second.Apply(_first.Apply(score, batch, head, q, k), batch, head, q, k);

    /// <inheritdoc/>
    public T Derivative<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T>
    {
        T inner = _first.Apply(score, batch, head, q, k);
        return _second.Derivative(inner, batch, head, q, k) * _first.Derivative(score, batch, head, q, k);
    }

    /// <inheritdoc/>
    public bool IsIdentity => _first.IsIdentity && _second.IsIdentity;

    /// <inheritdoc/>
    public override string ToString() => $"{_first} then {_second}";
}
