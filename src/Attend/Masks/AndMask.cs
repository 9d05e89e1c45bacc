namespace Attend;

/// <summary>Both masks must allow the pair.</summary>
public readonly struct AndMask<TA, TB> : IMaskMod<AndMask<TA, TB>>, IMaskRowWords
    where TA : struct, IMaskMod<TA>
    where TB : struct, IMaskMod<TB>
{
    private readonly TA _a;
    private readonly TB _b;
    private readonly IMaskRowWords? _wordsA, _wordsB; // the parts boxed once, when they have row words

    /// <summary>Combines two masks.</summary>
    public AndMask(TA a, TB b)
    {
        _a = a;
        _b = b;
        _wordsA = a as IMaskRowWords;
        _wordsB = b as IMaskRowWords;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The part with row words first; the other is evaluated only where the first allows, and neither outside
    /// <paramref name="candidates"/> (a part's <see cref="IMaskMod.IsVisible"/> need not answer for keys past the end).
    /// </remarks>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        if (_wordsA is null && _wordsB is not null)
            return MaskRowWords.Row(_a, null, batch, head, q, k0, MaskRowWords.Row(_b, _wordsB, batch, head, q, k0, candidates));
        return MaskRowWords.Row(_b, _wordsB, batch, head, q, k0, MaskRowWords.Row(_a, _wordsA, batch, head, q, k0, candidates));
    }

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
