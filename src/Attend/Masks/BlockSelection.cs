namespace Attend;

/// <summary>
/// A set of chosen (query block, key block) cells per sequence and head: what a dynamic sparse selector decides
/// (MInference's block-sparse heads, BiFormer's routed regions, HiP's top-k blocks, …). Written by the selector
/// with <see cref="Select"/>, then frozen into a <see cref="BlockSelectionMask"/>, which is an ordinary mask: intersect
/// it with the base mask (<see cref="Masks.And{TA, TB}"/> with causal, say) and build a <see cref="BlockMask"/> from
/// that, and the exact kernel, the backward pass and the float64 reference all compute the same sparse attention.
/// </summary>
/// <remarks>
/// Cells are counted in query rows and key indices of each sequence (block <c>i</c> holds query rows
/// <c>[i·QueryBlockSize, (i+1)·QueryBlockSize)</c>), not in the key-axis positions masks receive; the mask converts
/// with the sequence's own lengths. The sizes need not equal a kernel's block sizes, but when they do every chosen
/// cell is a full block of the plan (no per-element mask work beyond the base mask).
/// </remarks>
public sealed class BlockSelection
{
    private readonly int[] _queryLengths, _keyLengths;
    private readonly int[] _rowBase; // per (entry, head): first row of the cell table
    private readonly int[] _wordsPerRow; // per entry
    private readonly int[] _wordBase; // per (entry, head): first word
    private readonly ulong[] _bits;

    /// <summary>A selection for <paramref name="batch"/> sequences of equal lengths.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A count or size below 1, or a negative length.</exception>
    public BlockSelection(int batch, int heads, int queryLength, int keyLength, int queryBlockSize = 64, int keyBlockSize = 64)
        : this(Filled(batch, queryLength, nameof(batch), nameof(queryLength)), Filled(batch, keyLength, nameof(batch), nameof(keyLength)),
               heads, queryBlockSize, keyBlockSize)
    {
    }

    /// <summary>A selection for a packed variable-length batch (one cell table per sequence).</summary>
    /// <exception cref="ArgumentException">The offsets describe different numbers of sequences.</exception>
    public BlockSelection(SeqOffsets queries, SeqOffsets keys, int heads, int queryBlockSize = 64, int keyBlockSize = 64)
        : this(Lengths(queries, nameof(queries)), Lengths(keys, nameof(keys)), heads, queryBlockSize, keyBlockSize)
    {
        if (queries.Count != keys.Count)
            throw new ArgumentException($"Query and key offsets describe different numbers of sequences ({queries.Count} and {keys.Count}).", nameof(keys));
    }

    private BlockSelection(int[] queryLengths, int[] keyLengths, int heads, int queryBlockSize, int keyBlockSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(queryBlockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(keyBlockSize, 1);
        _queryLengths = queryLengths;
        _keyLengths = keyLengths;
        Heads = heads;
        QueryBlockSize = queryBlockSize;
        KeyBlockSize = keyBlockSize;
        int entries = queryLengths.Length;
        _rowBase = new int[entries * heads];
        _wordBase = new int[entries * heads];
        _wordsPerRow = new int[entries];
        long words = 0;
        int rows = 0;
        for (int e = 0; e < entries; e++)
        {
            _wordsPerRow[e] = (KeyBlocks(e) + 63) / 64;
            for (int h = 0; h < heads; h++)
            {
                _rowBase[e * heads + h] = rows;
                _wordBase[e * heads + h] = checked((int)words);
                rows += QueryBlocks(e);
                words += (long)QueryBlocks(e) * _wordsPerRow[e];
            }
        }
        _bits = new ulong[checked((int)words)];
    }

    private static int[] Filled(int count, int length, string countName, string lengthName)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(countName, count, "The batch size must be ≥ 1.");
        if (length < 0) throw new ArgumentOutOfRangeException(lengthName, length, "A length must be ≥ 0.");
        var a = new int[count];
        Array.Fill(a, length);
        return a;
    }

    private static int[] Lengths(SeqOffsets offsets, string name)
    {
        ArgumentNullException.ThrowIfNull(offsets, name);
        var a = new int[offsets.Count];
        for (int s = 0; s < a.Length; s++) a[s] = offsets.Length(s);
        return a;
    }

    /// <summary>Number of sequences.</summary>
    public int Sequences => _queryLengths.Length;

    /// <summary>Number of heads (one cell table each).</summary>
    public int Heads { get; }

    /// <summary>Query rows per cell.</summary>
    public int QueryBlockSize { get; }

    /// <summary>Keys per cell.</summary>
    public int KeyBlockSize { get; }

    /// <summary>Query length of sequence <paramref name="sequence"/>.</summary>
    public int QueryLength(int sequence) => _queryLengths[sequence];

    /// <summary>Key length of sequence <paramref name="sequence"/>.</summary>
    public int KeyLength(int sequence) => _keyLengths[sequence];

    /// <summary>Query blocks of sequence <paramref name="sequence"/>.</summary>
    public int QueryBlocks(int sequence) => (_queryLengths[sequence] + QueryBlockSize - 1) / QueryBlockSize;

    /// <summary>Key blocks of sequence <paramref name="sequence"/>.</summary>
    public int KeyBlocks(int sequence) => (_keyLengths[sequence] + KeyBlockSize - 1) / KeyBlockSize;

    /// <summary>Number of chosen cells over all sequences and heads.</summary>
    public long SelectedCount
    {
        get
        {
            long n = 0;
            foreach (ulong w in _bits) n += (long)ulong.PopCount(w);
            return n;
        }
    }

    /// <summary>Chooses cell (<paramref name="queryBlock"/>, <paramref name="keyBlock"/>) of one sequence and head.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An index outside the table.</exception>
    public void Select(int sequence, int head, int queryBlock, int keyBlock)
    {
        int word = Word(sequence, head, queryBlock, keyBlock);
        _bits[word] |= 1UL << (keyBlock & 63);
    }

    /// <summary>Chooses key blocks [<paramref name="firstKeyBlock"/>, <paramref name="endKeyBlock"/>) of one query block.</summary>
    public void SelectRange(int sequence, int head, int queryBlock, int firstKeyBlock, int endKeyBlock)
    {
        int n = KeyBlocks(sequence);
        int lo = Math.Max(firstKeyBlock, 0), hi = Math.Min(endKeyBlock, n);
        for (int kb = lo; kb < hi; kb++) Select(sequence, head, queryBlock, kb);
    }

    /// <summary>Whether a cell is chosen.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An index outside the table.</exception>
    public bool IsSelected(int sequence, int head, int queryBlock, int keyBlock) =>
        (_bits[Word(sequence, head, queryBlock, keyBlock)] >> (keyBlock & 63) & 1) != 0;

    private int Word(int sequence, int head, int queryBlock, int keyBlock)
    {
        if ((uint)sequence >= (uint)Sequences) throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"There are {Sequences} sequences.");
        if ((uint)head >= (uint)Heads) throw new ArgumentOutOfRangeException(nameof(head), head, $"There are {Heads} heads.");
        if ((uint)queryBlock >= (uint)QueryBlocks(sequence))
            throw new ArgumentOutOfRangeException(nameof(queryBlock), queryBlock, $"Sequence {sequence} has {QueryBlocks(sequence)} query blocks.");
        if ((uint)keyBlock >= (uint)KeyBlocks(sequence))
            throw new ArgumentOutOfRangeException(nameof(keyBlock), keyBlock, $"Sequence {sequence} has {KeyBlocks(sequence)} key blocks.");
        return _wordBase[sequence * Heads + head] + queryBlock * _wordsPerRow[sequence] + (keyBlock >> 6);
    }

    /// <summary>A frozen copy of the selection as a mask (later <see cref="Select"/> calls do not change it).</summary>
    public BlockSelectionMask ToMask() => new(new Table(this));

    // The immutable snapshot the mask reads; the fast paths skip Word's argument checks.
    internal sealed class Table
    {
        public readonly int[] QueryLengths, KeyLengths, WordBase, WordsPerRow;
        public readonly ulong[] Bits;
        public readonly int Heads, QueryBlockSize, KeyBlockSize;

        public Table(BlockSelection s)
        {
            QueryLengths = (int[])s._queryLengths.Clone();
            KeyLengths = (int[])s._keyLengths.Clone();
            WordBase = (int[])s._wordBase.Clone();
            WordsPerRow = (int[])s._wordsPerRow.Clone();
            Bits = (ulong[])s._bits.Clone();
            Heads = s.Heads;
            QueryBlockSize = s.QueryBlockSize;
            KeyBlockSize = s.KeyBlockSize;
        }

        public int Entry(int batch) => QueryLengths.Length == 1 ? 0 : batch;

        // Cell state for query row `row` and key `key` of an entry; rows and keys outside the sequence are unselected.
        public bool Cell(int entry, int head, int row, int key)
        {
            if ((uint)row >= (uint)QueryLengths[entry] || (uint)key >= (uint)KeyLengths[entry]) return false;
            int qb = row / QueryBlockSize, kb = key / KeyBlockSize;
            ulong w = Bits[WordBase[entry * Heads + head] + qb * WordsPerRow[entry] + (kb >> 6)];
            return (w >> (kb & 63) & 1) != 0;
        }
    }
}
