namespace Attend;

/// <summary>
/// The mask of a frozen <see cref="BlockSelection"/>: a pair is visible when its (query block, key block) cell was
/// chosen. Intersect it with the base mask (causal, window, document) to get a dynamic sparse plan:
/// <c>BlockMask.Create(Masks.And(Masks.Causal, selection.ToMask()), …)</c>.
/// </summary>
public readonly struct BlockSelectionMask : IMaskMod<BlockSelectionMask>, IMaskRowWords
{
    private readonly BlockSelection.Table? _table;

    internal BlockSelectionMask(BlockSelection.Table table) => _table = table;

    private BlockSelection.Table Table => _table ?? throw new InvalidOperationException("default(BlockSelectionMask) selects nothing; create it with BlockSelection.ToMask().");

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        BlockSelection.Table t = Table;
        int e = t.Entry(batch);
        // Masks receive key-axis positions (bottom-right aligned); the table counts query rows.
        int row = q - (t.KeyLengths[e] - t.QueryLengths[e]);
        return t.Cell(e, t.Heads == 1 ? 0 : head, row, k);
    }

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        BlockSelection.Table t = Table;
        int e = t.Entry(batch);
        int row = q - (t.KeyLengths[e] - t.QueryLengths[e]);
        int tk = t.KeyLengths[e];
        if ((uint)row >= (uint)t.QueryLengths[e] || k0 < 0 || k0 >= tk) return 0;
        int kbs = t.KeyBlockSize, hh = t.Heads == 1 ? 0 : head;
        ulong word = 0;
        // The key blocks that overlap keys [k0, k0 + 64) (cut at the sequence's end).
        for (int kb = k0 / kbs; kb * kbs < Math.Min(k0 + 64, tk); kb++)
            if (t.Cell(e, hh, row, kb * kbs < k0 ? k0 : kb * kbs))
                word |= MaskRowWords.Range((long)kb * kbs, Math.Min((long)(kb + 1) * kbs, tk), k0);
        return word;
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        BlockSelection.Table t = Table;
        int e = t.Entry(batch), h = t.Heads == 1 ? 0 : head;
        int shift = t.KeyLengths[e] - t.QueryLengths[e];
        int r0 = qStart - shift, r1 = qEnd - shift; // rows [r0, r1)
        if (r1 <= r0 || kEnd <= kStart) return BlockKind.Empty;
        bool inside = r0 >= 0 && r1 <= t.QueryLengths[e] && kStart >= 0 && kEnd <= t.KeyLengths[e];
        int qb0 = Math.Max(r0, 0) / t.QueryBlockSize, qb1 = (Math.Min(r1, t.QueryLengths[e]) - 1) / t.QueryBlockSize;
        int kb0 = Math.Max(kStart, 0) / t.KeyBlockSize, kb1 = (Math.Min(kEnd, t.KeyLengths[e]) - 1) / t.KeyBlockSize;
        if (qb1 < qb0 || kb1 < kb0) return BlockKind.Empty;
        int any = 0, all = 1;
        for (int qb = qb0; qb <= qb1; qb++)
        {
            for (int kb = kb0; kb <= kb1; kb++)
            {
                bool chosen = t.Cell(e, h, qb * t.QueryBlockSize, kb * t.KeyBlockSize);
                any |= chosen ? 1 : 0;
                all &= chosen ? 1 : 0;
            }
        }
        if (any == 0) return BlockKind.Empty;
        return all == 1 && inside ? BlockKind.Full : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => Table.Heads > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => Table.QueryLengths.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => _table is null ? "selection(empty)" : $"selection({_table.QueryBlockSize}x{_table.KeyBlockSize} cells)";
}
