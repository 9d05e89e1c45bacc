namespace Attend;

/// <summary>
/// Causal: a query at position q sees keys k ≤ q. With bottom-right alignment (see <see cref="IMaskMod"/>),
/// the last query row always sees every key; when Tq &gt; Tk the first Tq − Tk rows see nothing.
/// </summary>
public readonly struct CausalMask : IMaskMod<CausalMask>, IMaskRowWords
{
    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => k <= q;

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates) => MaskRowWords.AtMost(q, k0);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        if (kStart > qEnd - 1) return BlockKind.Empty;
        if (kEnd - 1 <= qStart) return BlockKind.Full;
        return BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => "causal";
}
