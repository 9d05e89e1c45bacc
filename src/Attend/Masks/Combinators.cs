namespace Attend;

/// <summary>Both masks must allow the pair.</summary>
public readonly struct AndMask<TA, TB> : IMaskMod<AndMask<TA, TB>>
    where TA : struct, IMaskMod<TA>
    where TB : struct, IMaskMod<TB>
{
    private readonly TA _a;
    private readonly TB _b;

    /// <summary>Combines two masks.</summary>
    public AndMask(TA a, TB b) { _a = a; _b = b; }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => _a.IsVisible(batch, head, q, k) && _b.IsVisible(batch, head, q, k);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        BlockKind a = _a.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (a == BlockKind.Empty) return BlockKind.Empty;
        BlockKind b = _b.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (b == BlockKind.Empty) return BlockKind.Empty;
        if (a == BlockKind.Full && b == BlockKind.Full) return BlockKind.Full;
        // Two partial halves may still have an empty intersection; decide by evaluation only then.
        return a == BlockKind.Partial && b == BlockKind.Partial
            ? BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd)
            : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => _a.DependsOnHead || _b.DependsOnHead;

    /// <inheritdoc/>
    public bool DependsOnBatch => _a.DependsOnBatch || _b.DependsOnBatch;

    /// <inheritdoc/>
    public override string ToString() => $"({_a} & {_b})";
}

/// <summary>Either mask may allow the pair.</summary>
public readonly struct OrMask<TA, TB> : IMaskMod<OrMask<TA, TB>>
    where TA : struct, IMaskMod<TA>
    where TB : struct, IMaskMod<TB>
{
    private readonly TA _a;
    private readonly TB _b;

    /// <summary>Combines two masks.</summary>
    public OrMask(TA a, TB b) { _a = a; _b = b; }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => _a.IsVisible(batch, head, q, k) || _b.IsVisible(batch, head, q, k);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        BlockKind a = _a.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (a == BlockKind.Full) return BlockKind.Full;
        BlockKind b = _b.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (b == BlockKind.Full) return BlockKind.Full;
        if (a == BlockKind.Empty && b == BlockKind.Empty) return BlockKind.Empty;
        // Two partial halves may together cover the block; decide by evaluation only then.
        return a == BlockKind.Partial && b == BlockKind.Partial
            ? BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd)
            : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => _a.DependsOnHead || _b.DependsOnHead;

    /// <inheritdoc/>
    public bool DependsOnBatch => _a.DependsOnBatch || _b.DependsOnBatch;

    /// <inheritdoc/>
    public override string ToString() => $"({_a} | {_b})";
}

/// <summary>The complement of a mask.</summary>
public readonly struct NotMask<TA> : IMaskMod<NotMask<TA>>
    where TA : struct, IMaskMod<TA>
{
    private readonly TA _a;

    /// <summary>Negates a mask.</summary>
    public NotMask(TA a) => _a = a;

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => !_a.IsVisible(batch, head, q, k);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        _a.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd) switch
        {
            BlockKind.Full => BlockKind.Empty,
            BlockKind.Empty => BlockKind.Full,
            _ => BlockKind.Partial,
        };

    /// <inheritdoc/>
    public bool DependsOnHead => _a.DependsOnHead;

    /// <inheritdoc/>
    public bool DependsOnBatch => _a.DependsOnBatch;

    /// <inheritdoc/>
    public override string ToString() => $"!{_a}";
}

/// <summary>Factories for the built-in masks and their combinations.</summary>
public static class Masks
{
    /// <summary>No masking.</summary>
    public static FullMask Full => default;

    /// <summary>Causal, bottom-right aligned.</summary>
    public static CausalMask Causal => default;

    /// <summary>Sliding window [q − left, q + right]; null sides are unbounded.</summary>
    public static SlidingWindowMask SlidingWindow(int? left, int? right) => new(left, right);

    /// <summary>Prefix LM: the first <paramref name="prefixLength"/> keys are bidirectional, the rest causal.</summary>
    public static PrefixLmMask PrefixLm(int prefixLength) => new(prefixLength);

    /// <summary>Block-causal chunks of <paramref name="chunkSize"/>.</summary>
    public static BlockCausalMask BlockCausal(int chunkSize) => new(chunkSize);

    /// <summary>Attention within documents packed at <paramref name="documents"/>.</summary>
    public static DocumentMask Document(SeqOffsets documents) => new(documents);

    /// <summary>Intersection of two masks.</summary>
    public static AndMask<TA, TB> And<TA, TB>(TA a, TB b) where TA : struct, IMaskMod<TA> where TB : struct, IMaskMod<TB> => new(a, b);

    /// <summary>Union of two masks.</summary>
    public static OrMask<TA, TB> Or<TA, TB>(TA a, TB b) where TA : struct, IMaskMod<TA> where TB : struct, IMaskMod<TB> => new(a, b);

    /// <summary>Complement of a mask.</summary>
    public static NotMask<TA> Not<TA>(TA a) where TA : struct, IMaskMod<TA> => new(a);
}
