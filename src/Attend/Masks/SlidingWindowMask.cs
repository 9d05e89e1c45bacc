namespace Attend;

/// <summary>
/// Sliding window (FlashAttention's <c>window_size=(left, right)</c>): a query at position q sees keys in
/// [q − left, q + right]. A null side is unbounded. <c>(left, 0)</c> is causal sliding-window attention.
/// </summary>
public readonly struct SlidingWindowMask : IMaskMod<SlidingWindowMask>
{
    /// <summary>Creates a window; each bound, when given, must be ≥ 0.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative bound.</exception>
    public SlidingWindowMask(int? left, int? right)
    {
        if (left < 0) throw new ArgumentOutOfRangeException(nameof(left), left, "The left window must be ≥ 0 (null for unbounded).");
        if (right < 0) throw new ArgumentOutOfRangeException(nameof(right), right, "The right window must be ≥ 0 (null for unbounded).");
        Left = left;
        Right = right;
    }

    /// <summary>Keys visible to the left of the query (null: all).</summary>
    public int? Left { get; }

    /// <summary>Keys visible to the right of the query (null: all).</summary>
    public int? Right { get; }

    private long Lo(int q) => Left is int l ? (long)q - l : long.MinValue;

    private long Hi(int q) => Right is int r ? (long)q + r : long.MaxValue;

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => k >= Lo(q) && k <= Hi(q);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        // The visible interval of row q is [q - left, q + right]; it slides monotonically with q, so the union over
        // the block's rows is [qStart - left, qEnd - 1 + right] and the intersection is [qEnd - 1 - left, qStart + right].
        if (kEnd - 1 < Lo(qStart) || kStart > Hi(qEnd - 1)) return BlockKind.Empty;
        if (kStart >= Lo(qEnd - 1) && kEnd - 1 <= Hi(qStart)) return BlockKind.Full;
        return BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"window({Left?.ToString() ?? "∞"},{Right?.ToString() ?? "∞"})";
}
