namespace Attend.Methods.Sparse;

/// <summary>What a slash line (diagonal) of a <see cref="VerticalSlashPlan"/> computes.</summary>
public enum SlashCoverage
{
    /// <summary>
    /// The token-level definition (the default): query at position p computes key p − o for each slash offset o, and
    /// nothing else on account of the slash lines.
    /// </summary>
    Diagonals,

    /// <summary>
    /// The covering key ranges of MInference's own kernel (its <c>convert_vertical_slash_indexes</c>): per query block of
    /// <see cref="VerticalSlashPlan.QueryBlockSize"/> rows ending at position e (exclusive, the block's full height), each
    /// offset o &lt; e names the 64 keys [max(e − o, 64) − 64, max(e − o, 64)); taken with ascending ends, a window whose
    /// end lies more than 64 past the current range's end starts a new range, one that ends past it extends the range
    /// by 64 keys, otherwise it is inside. Every causally visible key of those ranges is computed for every row of the
    /// block (a superset of the diagonals: up to 64 pairs per row and offset instead of one). See
    /// <see cref="VerticalSlashPlan.SlashRanges"/>.
    /// </summary>
    Blocks,
}

/// <summary>
/// A token-level sparse plan for causal attention (the plan of MInference's vertical-slash heads, FlexPrefill's
/// vertical-slash heads and AnchorAttention's stripes): per (sequence, head) a set of <em>vertical</em> key columns
/// every query sees, a set of <em>slash</em> offsets (diagonals: query at position p sees key p − o), and optionally,
/// per query block of <see cref="QueryBlockSize"/> rows, further key columns only that block sees. Query row i of a
/// sequence with Tq queries and Tk keys sits at position p = i + Tk − Tq (bottom-right alignment, as every mask);
/// it computes key k exactly when k ≤ p and (k is vertical, or a column of its block, or p − k is a slash offset) —
/// under <see cref="Coverage"/> = <see cref="SlashCoverage.Diagonals"/>, the default. Under
/// <see cref="SlashCoverage.Blocks"/> the slash part is instead the 64-key ranges that cover each query block's
/// diagonals (MInference's kernel), every causal key inside them computed.
/// </summary>
/// <remarks>
/// <para>Each pair counts once, however many parts of the plan name it. <see cref="VerticalSlashAttention"/> runs the
/// plan on the CPU (gathered columns plus diagonal bands, online softmax in float32), and
/// <see cref="VerticalSlashAttention.Reference{T}"/> computes the same definition in float64.</para>
/// <para>A plan is filled by its selector (<see cref="SetVertical"/>, <see cref="SetSlash"/>,
/// <see cref="SetBlockColumns"/>, <see cref="Coverage"/>) and then only read. <see cref="SetBlockColumns"/> for distinct (sequence, head, block)
/// cells may run on several threads at once (each writes its own pre-allocated slot); <see cref="SetVertical"/> and
/// <see cref="SetSlash"/> may not.</para>
/// </remarks>
public sealed class VerticalSlashPlan : IPairCoverage
{
    /// <summary>Query rows per block of <see cref="SetBlockColumns"/> (the kernel's tile height).</summary>
    public const int QueryBlockSize = 64;

    private readonly int[] _queryLengths, _keyLengths;
    private readonly int[][] _vertical, _slash;
    private readonly int[]?[][] _blockColumns;

    /// <summary>An empty plan (nothing computed) for <paramref name="batch"/> sequences of equal lengths.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A count below 1 or a negative length.</exception>
    public VerticalSlashPlan(int batch, int heads, int queryLength, int keyLength)
        : this(Filled(batch, queryLength, nameof(batch), nameof(queryLength)), Filled(batch, keyLength, nameof(batch), nameof(keyLength)), heads)
    {
    }

    /// <summary>An empty plan for a packed variable-length batch.</summary>
    /// <exception cref="ArgumentException">The offsets describe different numbers of sequences.</exception>
    public VerticalSlashPlan(SeqOffsets queries, SeqOffsets keys, int heads)
        : this(Lengths(queries, nameof(queries)), Lengths(keys, nameof(keys)), heads)
    {
        if (queries.Count != keys.Count)
            throw new ArgumentException($"Query and key offsets describe different numbers of sequences ({queries.Count} and {keys.Count}).", nameof(keys));
        IsVarlen = true;
    }

    private VerticalSlashPlan(int[] queryLengths, int[] keyLengths, int heads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        _queryLengths = queryLengths;
        _keyLengths = keyLengths;
        Heads = heads;
        int units = queryLengths.Length * heads;
        _vertical = new int[units][];
        _slash = new int[units][];
        _blockColumns = new int[]?[units][];
        for (int u = 0; u < units; u++)
        {
            _vertical[u] = [];
            _slash[u] = [];
            _blockColumns[u] = new int[]?[QueryBlocks(u / heads)];
        }
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

    /// <summary>True when the plan was made for a packed variable-length batch.</summary>
    public bool IsVarlen { get; }

    /// <summary>
    /// What the slash lines compute: <see cref="SlashCoverage.Diagonals"/> (default, the token-level definition) or
    /// <see cref="SlashCoverage.Blocks"/> (MInference's kernel: the 64-key ranges covering each block's diagonals).
    /// Every consumer (kernels, <see cref="Covers"/>, <see cref="CoveredKeys"/>, <see cref="Density"/>) follows it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A value that is not a <see cref="SlashCoverage"/>.</exception>
    public SlashCoverage Coverage
    {
        get => _coverage;
        set
        {
            if (value is not (SlashCoverage.Diagonals or SlashCoverage.Blocks))
                throw new ArgumentOutOfRangeException(nameof(value), value, "Coverage must be Diagonals or Blocks.");
            _coverage = value;
        }
    }

    private SlashCoverage _coverage;

    /// <summary>Number of sequences.</summary>
    public int Sequences => _queryLengths.Length;

    /// <summary>Number of query heads (one plan each).</summary>
    public int Heads { get; }

    /// <summary>Query length of sequence <paramref name="sequence"/>.</summary>
    public int QueryLength(int sequence) => _queryLengths[sequence];

    /// <summary>Key length of sequence <paramref name="sequence"/>.</summary>
    public int KeyLength(int sequence) => _keyLengths[sequence];

    /// <summary>Query blocks of sequence <paramref name="sequence"/>.</summary>
    public int QueryBlocks(int sequence) => (_queryLengths[sequence] + QueryBlockSize - 1) / QueryBlockSize;

    /// <summary>Sets the vertical key columns of one sequence and head (any order; duplicates are dropped).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A key outside [0, Tk), or a bad sequence or head.</exception>
    public void SetVertical(int sequence, int head, ReadOnlySpan<int> keys) =>
        _vertical[Unit(sequence, head)] = Normalized(keys, KeyLength(sequence), nameof(keys));

    /// <summary>Sets the slash offsets (query position − key) of one sequence and head; duplicates are dropped.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An offset outside [0, Tk), or a bad sequence or head.</exception>
    public void SetSlash(int sequence, int head, ReadOnlySpan<int> offsets) =>
        _slash[Unit(sequence, head)] = Normalized(offsets, KeyLength(sequence), nameof(offsets));

    /// <summary>Sets the key columns only query block <paramref name="queryBlock"/> of one sequence and head sees.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A key outside [0, Tk), or a bad sequence, head or block.</exception>
    public void SetBlockColumns(int sequence, int head, int queryBlock, ReadOnlySpan<int> keys)
    {
        int u = Unit(sequence, head);
        if ((uint)queryBlock >= (uint)QueryBlocks(sequence))
            throw new ArgumentOutOfRangeException(nameof(queryBlock), queryBlock, $"Sequence {sequence} has {QueryBlocks(sequence)} query blocks.");
        int[] cols = Normalized(keys, KeyLength(sequence), nameof(keys));
        _blockColumns[u][queryBlock] = cols.Length == 0 ? null : cols;
    }

    /// <summary>The vertical columns of one sequence and head, ascending.</summary>
    public ReadOnlySpan<int> Vertical(int sequence, int head) => _vertical[Unit(sequence, head)];

    /// <summary>The slash offsets of one sequence and head, ascending.</summary>
    public ReadOnlySpan<int> Slash(int sequence, int head) => _slash[Unit(sequence, head)];

    /// <summary>The columns of one query block, ascending (empty when it has none of its own).</summary>
    public ReadOnlySpan<int> BlockColumns(int sequence, int head, int queryBlock) => _blockColumns[Unit(sequence, head)][queryBlock];

    /// <summary>True when some query block of this sequence and head has columns of its own.</summary>
    public bool HasBlockColumns(int sequence, int head)
    {
        foreach (int[]? c in _blockColumns[Unit(sequence, head)])
            if (c is not null) return true;
        return false;
    }

    private int Unit(int sequence, int head)
    {
        if ((uint)sequence >= (uint)Sequences) throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"There are {Sequences} sequences.");
        if ((uint)head >= (uint)Heads) throw new ArgumentOutOfRangeException(nameof(head), head, $"There are {Heads} heads.");
        return sequence * Heads + head;
    }

    private static int[] Normalized(ReadOnlySpan<int> values, int keyLength, string name)
    {
        int[] a = values.ToArray();
        // Selectors usually hand over ascending lists (stripes found left to right): sort only when needed.
        for (int i = 1; i < a.Length; i++)
        {
            if (a[i] > a[i - 1]) continue;
            Array.Sort(a);
            break;
        }
        int n = 0;
        for (int i = 0; i < a.Length; i++)
        {
            if ((uint)a[i] >= (uint)keyLength)
                throw new ArgumentOutOfRangeException(name, a[i], $"Every value must be in [0, {keyLength}) (the sequence's key length).");
            if (n == 0 || a[n - 1] != a[i]) a[n++] = a[i];
        }
        return n == a.Length ? a : a[..n];
    }

    /// <summary>Whether query row <paramref name="row"/> of a sequence and head computes key <paramref name="key"/>.</summary>
    public bool Covers(int sequence, int head, int row, int key)
    {
        int u = Unit(sequence, head);
        int p = row + KeyLength(sequence) - QueryLength(sequence);
        if (key < 0 || key > p || (uint)row >= (uint)QueryLength(sequence)) return false;
        if (Array.BinarySearch(_vertical[u], key) >= 0) return true;
        if (_coverage == SlashCoverage.Diagonals)
        {
            if (Array.BinarySearch(_slash[u], p - key) >= 0) return true;
        }
        else
        {
            Span<int> ranges = _slash[u].Length <= 256 ? stackalloc int[2 * _slash[u].Length] : new int[2 * _slash[u].Length];
            int n = SlashRanges(sequence, head, row / QueryBlockSize, ranges);
            for (int r = 0; r < n; r++)
                if (key >= ranges[2 * r] && key < ranges[2 * r + 1]) return true;
        }
        int[]? cols = _blockColumns[u][row / QueryBlockSize];
        return cols is not null && Array.BinarySearch(cols, key) >= 0;
    }

    /// <inheritdoc/>
    /// <remarks><paramref name="batch"/> is the sequence (the batch entry, or the varlen sequence); <paramref name="query"/> its row.</remarks>
    public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
    {
        int u = Unit(batch, head), tk = KeyLength(batch);
        if (covered.Length != tk)
            throw new ArgumentException($"The span has {covered.Length} entries but sequence {batch} has {tk} keys.", nameof(covered));
        covered.Clear();
        int p = query + tk - QueryLength(batch);
        if (p < 0 || (uint)query >= (uint)QueryLength(batch)) return;
        foreach (int k in _vertical[u])
        {
            if (k > p) break;
            covered[k] = true;
        }
        if (_coverage == SlashCoverage.Diagonals)
        {
            foreach (int o in _slash[u])
            {
                if (o > p) break;
                covered[p - o] = true;
            }
        }
        else
        {
            var ranges = new int[2 * _slash[u].Length];
            int n = SlashRanges(batch, head, query / QueryBlockSize, ranges);
            for (int r = 0; r < n; r++)
                covered[ranges[2 * r]..Math.Max(ranges[2 * r], Math.Min(ranges[2 * r + 1], p + 1))].Fill(true);
        }
        int[]? cols = _blockColumns[u][query / QueryBlockSize];
        if (cols is null) return;
        foreach (int k in cols)
        {
            if (k > p) break;
            covered[k] = true;
        }
    }

    /// <summary>
    /// The key ranges <see cref="SlashCoverage.Blocks"/> computes for query block <paramref name="queryBlock"/> of a
    /// sequence and head (whatever <see cref="Coverage"/> is): half-open [lo, hi) pairs written to
    /// <paramref name="ranges"/> ascending and disjoint, clamped to the keys that exist and that the block's last row
    /// can see. Returns their number (at most the number of slash offsets).
    /// </summary>
    /// <remarks>
    /// MInference's <c>convert_vertical_slash_indexes</c> rule, on positions (bottom-right aligned like every mask): with
    /// e the block's first position + 64, offset o ≥ e reaches no key and is skipped; the others, by descending offset,
    /// name windows ending at w = max(e − o, 64). The first opens the range [w − 64, w); a window ending more than 64
    /// past the range's end closes it and opens its own; one ending past it (by at most 64) extends it by 64 keys (so a
    /// range is always a whole number of 64-key steps from its start, as the authors' block offsets are).
    /// </remarks>
    /// <exception cref="ArgumentException"><paramref name="ranges"/> shorter than twice the number of slash offsets.</exception>
    public int SlashRanges(int sequence, int head, int queryBlock, Span<int> ranges)
    {
        int u = Unit(sequence, head);
        if ((uint)queryBlock >= (uint)QueryBlocks(sequence))
            throw new ArgumentOutOfRangeException(nameof(queryBlock), queryBlock, $"Sequence {sequence} has {QueryBlocks(sequence)} query blocks.");
        int[] slash = _slash[u];
        if (ranges.Length < 2 * slash.Length)
            throw new ArgumentException($"The span holds {ranges.Length} ints; {2 * slash.Length} are needed (two per slash offset).", nameof(ranges));
        int tq = QueryLength(sequence), tk = KeyLength(sequence), shift = tk - tq;
        int i0 = queryBlock * QueryBlockSize;
        long end = (long)i0 + shift + QueryBlockSize; // e: the block's first position + its full height
        long limit = Math.Min(tk, (long)Math.Min(tq, i0 + QueryBlockSize) - 1 + shift + 1); // keys the last row can see
        int count = 0;
        bool open = false;
        long lo = 0, hi = 0;
        for (int i = slash.Length - 1; i >= 0; i--)
        {
            if (slash[i] >= end) continue;
            long w = Math.Max(end - slash[i], QueryBlockSize);
            if (!open)
            {
                (lo, hi, open) = (w - QueryBlockSize, w, true);
            }
            else if (w > hi + QueryBlockSize)
            {
                Emit(ranges, ref count, lo, hi, limit);
                (lo, hi) = (w - QueryBlockSize, w);
            }
            else if (w > hi)
            {
                hi += QueryBlockSize;
            }
        }
        if (open) Emit(ranges, ref count, lo, hi, limit);
        return count;
    }

    private static void Emit(Span<int> ranges, ref int count, long lo, long hi, long limit)
    {
        hi = Math.Min(hi, limit);
        if (lo >= hi) return;
        ranges[2 * count] = (int)lo;
        ranges[2 * count + 1] = (int)hi;
        count++;
    }

    /// <summary>Number of (head, query, key) pairs the plan computes, over all sequences.</summary>
    public long ComputedPairs()
    {
        long total = 0;
        for (int s = 0; s < Sequences; s++)
            for (int h = 0; h < Heads; h++) total += ComputedPairs(s, h);
        return total;
    }

    /// <summary>Number of causally visible (head, query, key) pairs, over all sequences: the denominator of the density.</summary>
    public long CausalPairs()
    {
        long total = 0;
        for (int s = 0; s < Sequences; s++)
        {
            int tq = QueryLength(s), tk = KeyLength(s);
            for (int i = 0; i < tq; i++) total += Math.Clamp(i + tk - tq + 1, 0, tk);
        }
        return total * Heads;
    }

    /// <summary>Computed pairs over causally visible pairs (1 when nothing is visible).</summary>
    public double Density
    {
        get
        {
            long visible = CausalPairs();
            return visible == 0 ? 1 : (double)ComputedPairs() / visible;
        }
    }

    // Per row p: verticals ≤ p, plus the block's own columns ≤ p that are not vertical, plus diagonals o ≤ p, minus the
    // pairs a diagonal and a column both name. Those overlaps are counted per column: column k meets the diagonals
    // o ∈ [max(p₀, k) − k, p₁ − k] of a block with positions [p₀, p₁]. O(T·log + blocks·columns·log) per head.
    private long ComputedPairs(int s, int h)
    {
        if (_coverage == SlashCoverage.Blocks) return ComputedPairsOfBlocks(s, h);
        int u = s * Heads + h, tq = QueryLength(s), tk = KeyLength(s), shift = tk - tq;
        int[] vertical = _vertical[u], slash = _slash[u];
        long total = 0;
        for (int qb = 0; qb < QueryBlocks(s); qb++)
        {
            int[]? cols = _blockColumns[u][qb];
            int i0 = qb * QueryBlockSize, i1 = Math.Min(tq, i0 + QueryBlockSize);
            int p0 = Math.Max(i0 + shift, 0), p1 = i1 - 1 + shift;
            if (p1 < 0) continue;
            for (int p = p0; p <= p1; p++) total += CountAtMost(vertical, p) + CountAtMost(slash, p);
            total -= Overlaps(vertical, slash, p0, p1);
            if (cols is null) continue;
            var own = new List<int>();
            foreach (int k in cols)
                if (Array.BinarySearch(vertical, k) < 0) own.Add(k);
            int[] ownArray = own.ToArray();
            for (int p = p0; p <= p1; p++) total += CountAtMost(ownArray, p);
            total -= Overlaps(ownArray, slash, p0, p1);
        }
        return total;
    }

    // Blocks coverage: per row p of a block, the causal part of each range, plus the columns (verticals and the
    // block's own) ≤ p outside every range.
    private long ComputedPairsOfBlocks(int s, int h)
    {
        int u = s * Heads + h, tq = QueryLength(s), tk = KeyLength(s), shift = tk - tq;
        var ranges = new int[2 * _slash[u].Length];
        var outside = new List<int>();
        long total = 0;
        for (int qb = 0; qb < QueryBlocks(s); qb++)
        {
            int i0 = qb * QueryBlockSize, i1 = Math.Min(tq, i0 + QueryBlockSize);
            int p0 = Math.Max(i0 + shift, 0), p1 = i1 - 1 + shift;
            if (p1 < 0) continue;
            int n = SlashRanges(s, h, qb, ranges);
            outside.Clear();
            int[] vertical = _vertical[u];
            int[] own = _blockColumns[u][qb] ?? [];
            int a = 0, b = 0;
            while (a < vertical.Length || b < own.Length)
            {
                int next = b >= own.Length || (a < vertical.Length && vertical[a] <= own[b]) ? vertical[a] : own[b];
                if (a < vertical.Length && vertical[a] == next) a++;
                if (b < own.Length && own[b] == next) b++;
                if (next > p1) break;
                bool inRange = false;
                for (int r = 0; r < n && !inRange; r++) inRange = next >= ranges[2 * r] && next < ranges[2 * r + 1];
                if (!inRange) outside.Add(next);
            }
            int[] columns = outside.ToArray();
            for (int p = p0; p <= p1; p++)
            {
                total += CountAtMost(columns, p);
                for (int r = 0; r < n; r++) total += Math.Max(0, Math.Min(ranges[2 * r + 1], p + 1) - ranges[2 * r]);
            }
        }
        return total;
    }

    // Pairs (p, k) with p ∈ [p0, p1], k a column ≤ p and p − k a diagonal.
    private static long Overlaps(int[] columns, int[] slash, int p0, int p1)
    {
        long n = 0;
        foreach (int k in columns)
        {
            if (k > p1) break;
            int lo = Math.Max(p0, k) - k, hi = p1 - k;
            n += CountAtMost(slash, hi) - CountAtMost(slash, lo - 1);
        }
        return n;
    }

    private static int CountAtMost(int[] sorted, int value)
    {
        int i = Array.BinarySearch(sorted, value);
        return i >= 0 ? i + 1 : ~i;
    }

    /// <summary>A plan that computes every causally visible pair (all slash offsets), for checks against exact attention.</summary>
    public static VerticalSlashPlan Everything(int batch, int heads, int queryLength, int keyLength)
    {
        var plan = new VerticalSlashPlan(batch, heads, queryLength, keyLength);
        var all = new int[keyLength];
        for (int i = 0; i < all.Length; i++) all[i] = i;
        for (int s = 0; s < batch; s++)
            for (int h = 0; h < heads; h++) plan.SetSlash(s, h, all);
        return plan;
    }
}
