namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// Chosen keys, token by token, per (sequence, head, query block): the plan of selectors whose natural output is a
/// set of tokens (RetrievalAttention's nearest keys, Recycled Attention's top-K, DELTA's salient tokens, SpAtten's
/// surviving tokens). Query rows are grouped in blocks of <see cref="QueryBlockSize"/> that share one key set (1 for
/// per-query selection). Frozen into a <see cref="TokenSelectionMask"/>, which classifies 64 × 64 tiles from the
/// bitsets, so the exact kernel, its backward and the float64 reference compute the same sparse attention.
/// </summary>
public sealed class TokenSelection
{
    private readonly int[] _queryLengths, _keyLengths, _words, _base;
    private readonly ulong[] _bits;

    /// <summary>A selection over the sequences of <paramref name="input"/>, with <paramref name="heads"/> tables (1: shared by all heads).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A head count or query block size below 1.</exception>
    public TokenSelection(SelectorInput input, int heads, int queryBlockSize)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(queryBlockSize, 1);
        Heads = heads;
        QueryBlockSize = queryBlockSize;
        int n = input.Sequences;
        _queryLengths = new int[n];
        _keyLengths = new int[n];
        _words = new int[n];
        _base = new int[n * heads];
        long total = 0;
        for (int s = 0; s < n; s++)
        {
            _queryLengths[s] = input.QueryLength(s);
            _keyLengths[s] = input.KeyLength(s);
            _words[s] = (_keyLengths[s] + 63) / 64;
            for (int h = 0; h < heads; h++)
            {
                _base[s * heads + h] = checked((int)total);
                total += (long)QueryBlocks(s) * _words[s];
            }
        }
        _bits = new ulong[checked((int)total)];
    }

    /// <summary>Tables (1 when the selection is shared by every head).</summary>
    public int Heads { get; }

    /// <summary>Query rows sharing one key set.</summary>
    public int QueryBlockSize { get; }

    /// <summary>Query blocks of sequence <paramref name="sequence"/>.</summary>
    public int QueryBlocks(int sequence) => (_queryLengths[sequence] + QueryBlockSize - 1) / QueryBlockSize;

    /// <summary>Chooses key <paramref name="key"/> for a query block.</summary>
    public void Select(int sequence, int head, int queryBlock, int key)
    {
        Check(sequence, head, queryBlock);
        if ((uint)key >= (uint)_keyLengths[sequence])
            throw new ArgumentOutOfRangeException(nameof(key), key, $"Sequence {sequence} has {_keyLengths[sequence]} keys.");
        _bits[Row(sequence, head, queryBlock) + (key >> 6)] |= 1UL << (key & 63);
    }

    /// <summary>Chooses keys [<paramref name="start"/>, <paramref name="end"/>) (clipped to the sequence) for a query block.</summary>
    public void SelectRange(int sequence, int head, int queryBlock, int start, int end)
    {
        Check(sequence, head, queryBlock);
        int lo = Math.Max(start, 0), hi = Math.Min(end, _keyLengths[sequence]);
        int row = Row(sequence, head, queryBlock);
        for (int k = lo; k < hi; k++) _bits[row + (k >> 6)] |= 1UL << (k & 63);
    }

    /// <summary>Whether key <paramref name="key"/> is chosen for a query block.</summary>
    public bool IsSelected(int sequence, int head, int queryBlock, int key)
    {
        Check(sequence, head, queryBlock);
        if ((uint)key >= (uint)_keyLengths[sequence]) return false;
        return (_bits[Row(sequence, head, queryBlock) + (key >> 6)] >> (key & 63) & 1) != 0;
    }

    /// <summary>Number of keys chosen for a query block.</summary>
    public int Count(int sequence, int head, int queryBlock)
    {
        Check(sequence, head, queryBlock);
        int row = Row(sequence, head, queryBlock), n = 0;
        for (int w = 0; w < _words[sequence]; w++) n += (int)ulong.PopCount(_bits[row + w]);
        return n;
    }

    private void Check(int sequence, int head, int queryBlock)
    {
        if ((uint)sequence >= (uint)_queryLengths.Length) throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"There are {_queryLengths.Length} sequences.");
        if ((uint)head >= (uint)Heads) throw new ArgumentOutOfRangeException(nameof(head), head, $"There are {Heads} tables.");
        if ((uint)queryBlock >= (uint)QueryBlocks(sequence))
            throw new ArgumentOutOfRangeException(nameof(queryBlock), queryBlock, $"Sequence {sequence} has {QueryBlocks(sequence)} query blocks.");
    }

    private int Row(int sequence, int head, int queryBlock) => _base[sequence * Heads + head] + queryBlock * _words[sequence];

    /// <summary>A frozen copy as a mask.</summary>
    public TokenSelectionMask ToMask() => new(new Table(this));

    internal sealed class Table(TokenSelection s)
    {
        public readonly int[] QueryLengths = (int[])s._queryLengths.Clone(), KeyLengths = (int[])s._keyLengths.Clone();
        public readonly int[] Words = (int[])s._words.Clone(), Base = (int[])s._base.Clone();
        public readonly ulong[] Bits = (ulong[])s._bits.Clone();
        public readonly int Heads = s.Heads, QueryBlockSize = s.QueryBlockSize;

        // log2 of the query block size when it is a power of two (the usual 1, 16, 64): a shift instead of a division
        // in IsVisible, which the kernel calls for every pair of a partial tile.
        public readonly int QueryBlockShift = int.IsPow2(s.QueryBlockSize) ? System.Numerics.BitOperations.Log2((uint)s.QueryBlockSize) : -1;

        public int QueryBlockOf(int row) => QueryBlockShift >= 0 ? row >> QueryBlockShift : row / QueryBlockSize;
    }
}

/// <summary>The mask of a frozen <see cref="TokenSelection"/>: a pair is visible when its key was chosen for its query's block.</summary>
public readonly struct TokenSelectionMask : IMaskMod<TokenSelectionMask>, IMaskRowWords
{
    private readonly TokenSelection.Table? _table;

    internal TokenSelectionMask(TokenSelection.Table table) => _table = table;

    private TokenSelection.Table T => _table ?? throw new InvalidOperationException("default(TokenSelectionMask) selects nothing; create it with TokenSelection.ToMask().");

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        TokenSelection.Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch;
        int row = q - (t.KeyLengths[e] - t.QueryLengths[e]);
        if ((uint)row >= (uint)t.QueryLengths[e] || (uint)k >= (uint)t.KeyLengths[e]) return false;
        int w = t.Base[e * t.Heads + (t.Heads == 1 ? 0 : head)] + t.QueryBlockOf(row) * t.Words[e] + (k >> 6);
        return (t.Bits[w] >> (k & 63) & 1) != 0;
    }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException"><paramref name="k0"/> not a multiple of 64 (the table's words are aligned).</exception>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        if ((k0 & 63) != 0) throw new ArgumentException($"The first key of a row word must be a multiple of 64; got {k0}.", nameof(k0));
        TokenSelection.Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch;
        int row = q - (t.KeyLengths[e] - t.QueryLengths[e]);
        if ((uint)row >= (uint)t.QueryLengths[e] || k0 < 0 || k0 >= t.KeyLengths[e]) return 0;
        // The table's words are the 64-key words of the sequence (bits past its end are never set).
        return t.Bits[t.Base[e * t.Heads + (t.Heads == 1 ? 0 : head)] + t.QueryBlockOf(row) * t.Words[e] + (k0 >> 6)];
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        TokenSelection.Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch;
        int tq = t.QueryLengths[e], tk = t.KeyLengths[e], shift = tk - tq;
        int r0 = Math.Max(qStart - shift, 0), r1 = Math.Min(qEnd - shift, tq), k0 = Math.Max(kStart, 0), k1 = Math.Min(kEnd, tk);
        if (r1 <= r0 || k1 <= k0) return BlockKind.Empty;
        bool inside = r0 == qStart - shift && r1 == qEnd - shift && k0 == kStart && k1 == kEnd;
        int rowBase = t.Base[e * t.Heads + (t.Heads == 1 ? 0 : head)];
        bool any = false, all = true;
        for (int qb = r0 / t.QueryBlockSize; qb <= (r1 - 1) / t.QueryBlockSize; qb++)
        {
            int row = rowBase + qb * t.Words[e];
            for (int w = k0 >> 6; w <= (k1 - 1) >> 6; w++)
            {
                int lo = Math.Max(k0 - w * 64, 0), hi = Math.Min(k1 - w * 64, 64); // bits [lo, hi) of this word
                ulong range = (hi == 64 ? ulong.MaxValue : (1UL << hi) - 1) & ~((1UL << lo) - 1);
                ulong bits = t.Bits[row + w] & range;
                any |= bits != 0;
                all &= bits == range;
            }
        }
        if (!any) return BlockKind.Empty;
        return all && inside ? BlockKind.Full : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => T.Heads > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => T.QueryLengths.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => _table is null ? "tokens(empty)" : $"tokens(query blocks of {_table.QueryBlockSize})";
}
