using System.Buffers;

namespace Attend.Methods.Linear;

/// <summary>
/// Where a backward pass writes one gradient: the caller's span when it passed one (no full-size copy), else pooled
/// scratch returned by <see cref="Dispose"/> (the kernels write every gradient whatever the caller asked for, so an
/// absent one still needs room). Cleared either way: the kernels accumulate. A caller's span is written during the
/// pass, so it must not overlap the inputs.
/// </summary>
internal ref struct GradientTarget
{
    private float[]? _rented;

    /// <summary>The caller's span, or <paramref name="count"/> pooled floats; zeroed.</summary>
    public GradientTarget(Span<float> given, long count)
    {
        if (given.IsEmpty && count > 0)
        {
            _rented = ArrayPool<float>.Shared.Rent(checked((int)count));
            Span = _rented.AsSpan(0, (int)count);
        }
        else Span = given;
        Span.Clear();
    }

    /// <summary>The gradient's storage for the pass.</summary>
    public Span<float> Span { get; }

    /// <summary>Returns pooled scratch (a caller's span is left as written).</summary>
    public void Dispose()
    {
        if (_rented is not null) ArrayPool<float>.Shared.Return(_rented);
        _rented = null;
    }
}
