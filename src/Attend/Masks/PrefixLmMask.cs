namespace Attend;

/// <summary>
/// Prefix language model: the first <see cref="PrefixLength"/> keys are visible to every query (bidirectional
/// prefix); the rest are causal (k ≤ q).
/// </summary>
public readonly struct PrefixLmMask : IMaskMod<PrefixLmMask>
{
    /// <summary>Creates a prefix mask.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative prefix length.</exception>
    public PrefixLmMask(int prefixLength)
    {
        if (prefixLength < 0) throw new ArgumentOutOfRangeException(nameof(prefixLength), prefixLength, "The prefix length must be ≥ 0.");
        PrefixLength = prefixLength;
    }

    /// <summary>Number of leading keys every query sees.</summary>
    public int PrefixLength { get; }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => k < PrefixLength || k <= q;

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        if (kEnd <= PrefixLength || kEnd - 1 <= qStart) return BlockKind.Full;
        if (kStart >= PrefixLength && kStart > qEnd - 1) return BlockKind.Empty;
        return BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"prefix({PrefixLength})";
}
