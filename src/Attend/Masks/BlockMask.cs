using System.Text;

namespace Attend;

/// <summary>
/// The block-sparse structure of a mask, the plan every softmax kernel runs on: for each (sequence, head, query
/// block) the key blocks to visit, split into <em>partial</em> blocks (the mask is evaluated per element) and
/// <em>full</em> blocks (the mask is skipped), plus the transposed lists (for each key block, the query blocks that
/// see it) that the backward pass walks. Empty blocks appear in no list and are never visited.
/// </summary>
/// <remarks>
/// Built by classifying blocks (<see cref="IMaskMod.ClassifyBlock"/>), never by materialising a T×T matrix. A block
/// mask is immutable and can be reused across layers and calls with the same shape. When the mask depends on neither
/// head nor batch entry and all sequences have one length, one structure is shared by all of them.
/// </remarks>
public sealed class BlockMask
{
    private readonly int[] _queryLengths;
    private readonly int[] _keyLengths;
    private readonly int[] _rowBase;
    private readonly int[] _colBase;
    private readonly int[] _partialStart, _partialIndex, _fullStart, _fullIndex;
    private readonly int[] _partialQStart, _partialQIndex, _fullQStart, _fullQIndex;
    private long _visiblePairs = -1;

    private BlockMask(IMaskMod mask, int queryBlockSize, int keyBlockSize, int[] queryLengths, int[] keyLengths, int heads, bool perSequence,
        int[] rowBase, int[] colBase, int[] partialStart, int[] partialIndex, int[] fullStart, int[] fullIndex)
    {
        Mask = mask;
        QueryBlockSize = queryBlockSize;
        KeyBlockSize = keyBlockSize;
        _queryLengths = queryLengths;
        _keyLengths = keyLengths;
        Heads = heads;
        PerSequence = perSequence;
        _rowBase = rowBase;
        _colBase = colBase;
        _partialStart = partialStart;
        _partialIndex = partialIndex;
        _fullStart = fullStart;
        _fullIndex = fullIndex;
        (_partialQStart, _partialQIndex) = Transpose(partialStart, partialIndex);
        (_fullQStart, _fullQIndex) = Transpose(fullStart, fullIndex);
        PartialBlockCount = partialIndex.Length;
        FullBlockCount = fullIndex.Length;
    }

    /// <summary>The mask this structure was built from (evaluated inside partial blocks).</summary>
    public IMaskMod Mask { get; }

    /// <summary>Query rows per block.</summary>
    public int QueryBlockSize { get; }

    /// <summary>Keys per block.</summary>
    public int KeyBlockSize { get; }

    /// <summary>Number of sequences described (all batch entries share entry 0 when <see cref="PerSequence"/> is false).</summary>
    public int Sequences => _queryLengths.Length;

    /// <summary>True when each batch entry (or varlen sequence) has its own structure.</summary>
    public bool PerSequence { get; }

    /// <summary>Number of head structures: 1 when the mask does not depend on the head (shared by all heads).</summary>
    public int Heads { get; }

    /// <summary>Partial blocks over all sequences and heads stored.</summary>
    public long PartialBlockCount { get; }

    /// <summary>Full blocks over all sequences and heads stored.</summary>
    public long FullBlockCount { get; }

    /// <summary>All blocks (visited or not) over all sequences and heads stored.</summary>
    public long TotalBlockCount
    {
        get
        {
            long total = 0;
            for (int s = 0; s < Sequences; s++) total += (long)QueryBlocks(s) * KeyBlocks(s) * Heads;
            return total;
        }
    }

    /// <summary>Fraction of blocks the kernel visits: (partial + full) / all.</summary>
    public double Density => TotalBlockCount == 0 ? 0 : (double)(PartialBlockCount + FullBlockCount) / TotalBlockCount;

    /// <summary>Query length of stored sequence <paramref name="sequence"/>.</summary>
    public int QueryLength(int sequence) => _queryLengths[sequence];

    /// <summary>Key length of stored sequence <paramref name="sequence"/>.</summary>
    public int KeyLength(int sequence) => _keyLengths[sequence];

    /// <summary>Query blocks of stored sequence <paramref name="sequence"/>.</summary>
    public int QueryBlocks(int sequence) => (_queryLengths[sequence] + QueryBlockSize - 1) / QueryBlockSize;

    /// <summary>Key blocks of stored sequence <paramref name="sequence"/>.</summary>
    public int KeyBlocks(int sequence) => (_keyLengths[sequence] + KeyBlockSize - 1) / KeyBlockSize;

    private int Entry(int sequence) => PerSequence ? sequence : 0;

    private int HeadEntry(int head) => Heads == 1 ? 0 : head;

    private int Row(int sequence, int head, int queryBlock) => _rowBase[Entry(sequence) * Heads + HeadEntry(head)] + queryBlock;

    private int Col(int sequence, int head, int keyBlock) => _colBase[Entry(sequence) * Heads + HeadEntry(head)] + keyBlock;

    /// <summary>Key blocks of query block <paramref name="queryBlock"/> where the mask must be evaluated, ascending.</summary>
    public ReadOnlySpan<int> PartialKeyBlocks(int sequence, int head, int queryBlock)
    {
        int r = Row(sequence, head, queryBlock);
        return _partialIndex.AsSpan(_partialStart[r], _partialStart[r + 1] - _partialStart[r]);
    }

    /// <summary>Key blocks of query block <paramref name="queryBlock"/> that are entirely visible, ascending.</summary>
    public ReadOnlySpan<int> FullKeyBlocks(int sequence, int head, int queryBlock)
    {
        int r = Row(sequence, head, queryBlock);
        return _fullIndex.AsSpan(_fullStart[r], _fullStart[r + 1] - _fullStart[r]);
    }

    /// <summary>Query blocks that see key block <paramref name="keyBlock"/> partially, ascending (for the backward pass).</summary>
    public ReadOnlySpan<int> PartialQueryBlocks(int sequence, int head, int keyBlock)
    {
        int c = Col(sequence, head, keyBlock);
        return _partialQIndex.AsSpan(_partialQStart[c], _partialQStart[c + 1] - _partialQStart[c]);
    }

    /// <summary>Query blocks that see key block <paramref name="keyBlock"/> entirely, ascending (for the backward pass).</summary>
    public ReadOnlySpan<int> FullQueryBlocks(int sequence, int head, int keyBlock)
    {
        int c = Col(sequence, head, keyBlock);
        return _fullQIndex.AsSpan(_fullQStart[c], _fullQStart[c + 1] - _fullQStart[c]);
    }

    /// <summary>Number of key blocks visited by a query block (partial + full).</summary>
    public int VisitedBlocks(int sequence, int head, int queryBlock)
    {
        int r = Row(sequence, head, queryBlock);
        return _partialStart[r + 1] - _partialStart[r] + _fullStart[r + 1] - _fullStart[r];
    }

    /// <summary>The kind of one block.</summary>
    public BlockKind KindOf(int sequence, int head, int queryBlock, int keyBlock)
    {
        if (FullKeyBlocks(sequence, head, queryBlock).BinarySearch(keyBlock) >= 0) return BlockKind.Full;
        if (PartialKeyBlocks(sequence, head, queryBlock).BinarySearch(keyBlock) >= 0) return BlockKind.Partial;
        return BlockKind.Empty;
    }

    /// <summary>
    /// Number of (query, key) pairs the mask lets through, over all sequences and the heads stored (full blocks are
    /// counted by size, partial blocks by evaluating the mask). The FLOP count of the protocol uses it.
    /// </summary>
    public long VisiblePairs()
    {
        if (_visiblePairs >= 0) return _visiblePairs;
        var counter = new PairCounter(this);
        _visiblePairs = Mask.Accept<PairCounter, long>(ref counter);
        return _visiblePairs;
    }

    private readonly struct PairCounter(BlockMask owner) : IMaskVisitor<long>
    {
        public long Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask>
        {
            long total = 0;
            IMaskRowWords? words = owner.KeyBlockSize % 64 == 0 ? mask as IMaskRowWords : null; // boxed once
            for (int s = 0; s < owner.Sequences; s++)
            {
                int tq = owner._queryLengths[s], tk = owner._keyLengths[s], shift = tk - tq;
                for (int h = 0; h < owner.Heads; h++)
                {
                    for (int qb = 0; qb < owner.QueryBlocks(s); qb++)
                    {
                        int q0 = qb * owner.QueryBlockSize, q1 = Math.Min(q0 + owner.QueryBlockSize, tq);
                        foreach (int kb in owner.FullKeyBlocks(s, h, qb))
                        {
                            int k0 = kb * owner.KeyBlockSize, k1 = Math.Min(k0 + owner.KeyBlockSize, tk);
                            total += (long)(q1 - q0) * (k1 - k0);
                        }
                        foreach (int kb in owner.PartialKeyBlocks(s, h, qb))
                        {
                            int k0 = kb * owner.KeyBlockSize, k1 = Math.Min(k0 + owner.KeyBlockSize, tk);
                            if (words is not null)
                            {
                                // A word per row and 64 keys (key blocks are whole words here) instead of one call per pair.
                                for (int q = q0; q < q1; q++)
                                    for (int w = k0; w < k1; w += 64)
                                        total += System.Numerics.BitOperations.PopCount(MaskRowWords.Row(mask, words, s, h, q + shift, w, MaskRowWords.Range(w, k1, w)));
                                continue;
                            }
                            for (int q = q0; q < q1; q++)
                                for (int k = k0; k < k1; k++)
                                    if (mask.IsVisible(s, h, q + shift, k)) total++;
                        }
                    }
                }
            }
            return total;
        }
    }

    /// <summary>
    /// Builds the structure of <paramref name="mask"/> for <paramref name="batch"/> sequences of
    /// <paramref name="queryLength"/> queries and <paramref name="keyLength"/> keys, and <paramref name="heads"/> heads.
    /// </summary>
    public static BlockMask Create<TMask>(TMask mask, int queryLength, int keyLength, int batch = 1, int heads = 1, int queryBlockSize = 64, int keyBlockSize = 64)
        where TMask : struct, IMaskMod<TMask>
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "The batch size must be ≥ 1.");
        if (queryLength < 0) throw new ArgumentOutOfRangeException(nameof(queryLength), queryLength, "The query length must be ≥ 0.");
        if (keyLength < 0) throw new ArgumentOutOfRangeException(nameof(keyLength), keyLength, "The key length must be ≥ 0.");
        int entries = mask.DependsOnBatch ? batch : 1;
        var q = new int[entries];
        var k = new int[entries];
        Array.Fill(q, queryLength);
        Array.Fill(k, keyLength);
        return Build(mask, q, k, mask.DependsOnBatch, heads, queryBlockSize, keyBlockSize);
    }

    /// <summary>Builds the structure of <paramref name="mask"/> for a packed variable-length batch (one structure per sequence).</summary>
    public static BlockMask Create<TMask>(TMask mask, SeqOffsets queries, SeqOffsets keys, int heads = 1, int queryBlockSize = 64, int keyBlockSize = 64)
        where TMask : struct, IMaskMod<TMask>
    {
        ArgumentNullException.ThrowIfNull(queries);
        ArgumentNullException.ThrowIfNull(keys);
        if (queries.Count != keys.Count)
            throw new ArgumentException($"Query and key offsets describe different numbers of sequences ({queries.Count} and {keys.Count}).", nameof(keys));
        var q = new int[queries.Count];
        var k = new int[keys.Count];
        for (int s = 0; s < q.Length; s++) { q[s] = queries.Length(s); k[s] = keys.Length(s); }
        return Build(mask, q, k, perSequence: true, heads, queryBlockSize, keyBlockSize);
    }

    /// <summary>Builds the structure of a boxed mask (dispatches to the generic builder).</summary>
    public static BlockMask Create(IMaskMod mask, int queryLength, int keyLength, int batch = 1, int heads = 1, int queryBlockSize = 64, int keyBlockSize = 64)
    {
        ArgumentNullException.ThrowIfNull(mask);
        var builder = new DenseBuilder(queryLength, keyLength, batch, heads, queryBlockSize, keyBlockSize);
        return mask.Accept<DenseBuilder, BlockMask>(ref builder);
    }

    /// <summary>Builds the structure of a boxed mask for a packed variable-length batch.</summary>
    public static BlockMask Create(IMaskMod mask, SeqOffsets queries, SeqOffsets keys, int heads = 1, int queryBlockSize = 64, int keyBlockSize = 64)
    {
        ArgumentNullException.ThrowIfNull(mask);
        var builder = new VarlenBuilder(queries, keys, heads, queryBlockSize, keyBlockSize);
        return mask.Accept<VarlenBuilder, BlockMask>(ref builder);
    }

    private readonly struct DenseBuilder(int tq, int tk, int batch, int heads, int bq, int bk) : IMaskVisitor<BlockMask>
    {
        public BlockMask Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask> => Create(mask, tq, tk, batch, heads, bq, bk);
    }

    private readonly struct VarlenBuilder(SeqOffsets q, SeqOffsets k, int heads, int bq, int bk) : IMaskVisitor<BlockMask>
    {
        public BlockMask Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask> => Create(mask, q, k, heads, bq, bk);
    }

    // Runs on every call that does not pass a prebuilt block mask: optimised from the first call.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static BlockMask Build<TMask>(TMask mask, int[] queryLengths, int[] keyLengths, bool perSequence, int heads, int bq, int bk)
        where TMask : struct, IMaskMod<TMask>
    {
        if (heads < 1) throw new ArgumentOutOfRangeException(nameof(heads), heads, "The head count must be ≥ 1.");
        if (bq < 1) throw new ArgumentOutOfRangeException("queryBlockSize", bq, "The query block size must be ≥ 1.");
        if (bk < 1) throw new ArgumentOutOfRangeException("keyBlockSize", bk, "The key block size must be ≥ 1.");
        int storedHeads = mask.DependsOnHead ? heads : 1;
        int entries = queryLengths.Length;
        var rowBase = new int[entries * storedHeads + 1];
        var colBase = new int[entries * storedHeads + 1];
        int rows = 0, cols = 0;
        for (int e = 0; e < entries; e++)
        {
            for (int h = 0; h < storedHeads; h++)
            {
                rowBase[e * storedHeads + h] = rows;
                colBase[e * storedHeads + h] = cols;
                rows += (queryLengths[e] + bq - 1) / bq;
                cols += (keyLengths[e] + bk - 1) / bk;
            }
        }
        rowBase[^1] = rows;
        colBase[^1] = cols;

        var partialStart = new int[rows + 1];
        var fullStart = new int[rows + 1];
        var partial = new IntList();
        var full = new IntList();
        int row = 0;
        for (int e = 0; e < entries; e++)
        {
            int tq = queryLengths[e], tk = keyLengths[e], shift = tk - tq;
            int nqb = (tq + bq - 1) / bq, nkb = (tk + bk - 1) / bk;
            for (int h = 0; h < storedHeads; h++)
            {
                for (int qb = 0; qb < nqb; qb++, row++)
                {
                    partialStart[row] = partial.Count;
                    fullStart[row] = full.Count;
                    int q0 = qb * bq + shift, q1 = Math.Min((qb + 1) * bq, tq) + shift;
                    for (int kb = 0; kb < nkb; kb++)
                    {
                        int k0 = kb * bk, k1 = Math.Min(k0 + bk, tk);
                        switch (mask.ClassifyBlock(e, h, q0, q1, k0, k1))
                        {
                            case BlockKind.Full: full.Add(kb); break;
                            case BlockKind.Partial: partial.Add(kb); break;
                        }
                    }
                }
            }
        }
        partialStart[rows] = partial.Count;
        fullStart[rows] = full.Count;
        return new BlockMask(mask, bq, bk, queryLengths, keyLengths, storedHeads, perSequence, rowBase, colBase,
            partialStart, partial.ToArray(), fullStart, full.ToArray());
    }

    // Transposes a row CSR (rows = query blocks) into a column CSR (columns = key blocks) over the same
    // (entry, head) groups. Rows and columns of one group are numbered consecutively, so a group's row r maps to
    // the group's column base + key block, and a column's list holds query block numbers within the group.
    private (int[] Start, int[] Index) Transpose(int[] start, int[] index)
    {
        int groups = _rowBase.Length - 1;
        int cols = _colBase[^1];
        var counts = new int[cols + 1];
        for (int g = 0; g < groups; g++)
            for (int r = _rowBase[g]; r < _rowBase[g + 1]; r++)
                for (int i = start[r]; i < start[r + 1]; i++)
                    counts[_colBase[g] + index[i] + 1]++;
        for (int c = 0; c < cols; c++) counts[c + 1] += counts[c];
        var outIndex = new int[index.Length];
        var fill = (int[])counts.Clone();
        for (int g = 0; g < groups; g++)
            for (int r = _rowBase[g]; r < _rowBase[g + 1]; r++)
                for (int i = start[r]; i < start[r + 1]; i++)
                    outIndex[fill[_colBase[g] + index[i]]++] = r - _rowBase[g];
        return (counts, outIndex);
    }

    /// <summary>
    /// A picture of the first stored sequence and head: one character per block, <c>█</c> full, <c>░</c> partial,
    /// <c>·</c> empty; large masks are cut to 64 × 64 blocks.
    /// </summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append($"BlockMask {Mask} blocks {QueryBlockSize}x{KeyBlockSize}, {Sequences} seq x {Heads} head, density {Density:P1}");
        if (Sequences == 0) return sb.ToString();
        int nqb = QueryBlocks(0), nkb = KeyBlocks(0);
        int rows = Math.Min(nqb, 64), cols = Math.Min(nkb, 64);
        for (int qb = 0; qb < rows; qb++)
        {
            sb.Append('\n');
            for (int kb = 0; kb < cols; kb++)
            {
                sb.Append(KindOf(0, 0, qb, kb) switch { BlockKind.Full => '█', BlockKind.Partial => '░', _ => '·' });
            }
            if (cols < nkb) sb.Append('…');
        }
        if (rows < nqb) sb.Append("\n…");
        return sb.ToString();
    }

    private sealed class IntList
    {
        private int[] _items = new int[64];
        public int Count { get; private set; }

        public void Add(int value)
        {
            if (Count == _items.Length) Array.Resize(ref _items, _items.Length * 2);
            _items[Count++] = value;
        }

        public int[] ToArray() => _items.AsSpan(0, Count).ToArray();
    }
}
