namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// Chosen (query segment, key segment) cells over variable-length segments of the key axis, per (sequence, head):
/// the plan of selectors whose chunks are not of one size (DHSA's dynamic chunks). A query row belongs to the
/// segment holding its key-axis position. Frozen into a <see cref="SegmentSelectionMask"/>.
/// </summary>
public sealed class SegmentSelection
{
    private readonly int[] _queryLengths, _keyLengths;
    private readonly int[][] _starts;    // per sequence: segment starts, ascending, first 0, plus Tk at the end
    private readonly int[][] _segmentOf; // per sequence: segment of each key position
    private readonly int[] _base, _words;
    private readonly ulong[] _bits;

    /// <summary>A selection over the sequences of <paramref name="input"/> with the given segment starts per sequence.</summary>
    /// <exception cref="ArgumentException">Starts that are not ascending from 0 inside the sequence.</exception>
    public SegmentSelection(SelectorInput input, int heads, IReadOnlyList<int[]> segmentStarts)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(segmentStarts);
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        int n = input.Sequences;
        if (segmentStarts.Count != n) throw new ArgumentException($"{segmentStarts.Count} segment lists for {n} sequences.", nameof(segmentStarts));
        Heads = heads;
        _queryLengths = new int[n];
        _keyLengths = new int[n];
        _starts = new int[n][];
        _segmentOf = new int[n][];
        _base = new int[n * heads];
        _words = new int[n];
        long total = 0;
        for (int s = 0; s < n; s++)
        {
            int tk = input.KeyLength(s);
            _queryLengths[s] = input.QueryLength(s);
            _keyLengths[s] = tk;
            int[] st = segmentStarts[s];
            if (tk > 0 && (st.Length == 0 || st[0] != 0)) throw new ArgumentException($"Sequence {s}: segments must start at 0.", nameof(segmentStarts));
            for (int i = 1; i < st.Length; i++)
                if (st[i] <= st[i - 1] || st[i] >= tk) throw new ArgumentException($"Sequence {s}: segment starts must ascend inside [0, {tk}).", nameof(segmentStarts));
            _starts[s] = [.. st, tk];
            _segmentOf[s] = new int[tk];
            for (int i = 0; i < st.Length; i++) _segmentOf[s].AsSpan(st[i], _starts[s][i + 1] - st[i]).Fill(i);
            _words[s] = (st.Length + 63) / 64;
            for (int h = 0; h < heads; h++)
            {
                _base[s * heads + h] = checked((int)total);
                total += (long)st.Length * _words[s];
            }
        }
        _bits = new ulong[checked((int)total)];
    }

    /// <summary>Tables (1 when shared by all heads).</summary>
    public int Heads { get; }

    /// <summary>Number of segments of a sequence.</summary>
    public int Segments(int sequence) => _starts[sequence].Length - 1;

    /// <summary>First key of segment <paramref name="segment"/>.</summary>
    public int Start(int sequence, int segment) => _starts[sequence][segment];

    /// <summary>One past the last key of segment <paramref name="segment"/>.</summary>
    public int End(int sequence, int segment) => _starts[sequence][segment + 1];

    /// <summary>The segment holding key position <paramref name="position"/>.</summary>
    public int SegmentOf(int sequence, int position) => _segmentOf[sequence][position];

    /// <summary>Chooses cell (query segment, key segment).</summary>
    public void Select(int sequence, int head, int querySegment, int keySegment)
    {
        if ((uint)querySegment >= (uint)Segments(sequence)) throw new ArgumentOutOfRangeException(nameof(querySegment));
        if ((uint)keySegment >= (uint)Segments(sequence)) throw new ArgumentOutOfRangeException(nameof(keySegment));
        _bits[_base[sequence * Heads + head] + querySegment * _words[sequence] + (keySegment >> 6)] |= 1UL << (keySegment & 63);
    }

    /// <summary>A frozen copy as a mask.</summary>
    public SegmentSelectionMask ToMask() => new(new Table(this));

    internal sealed class Table(SegmentSelection s)
    {
        public readonly int[] QueryLengths = (int[])s._queryLengths.Clone(), KeyLengths = (int[])s._keyLengths.Clone();
        public readonly int[][] SegmentOf = s._segmentOf;
        public readonly int[] Base = (int[])s._base.Clone(), Words = (int[])s._words.Clone();
        public readonly ulong[] Bits = (ulong[])s._bits.Clone();
        public readonly int Heads = s.Heads;

        public bool Cell(int e, int h, int qs, int ks) => (Bits[Base[e * Heads + h] + qs * Words[e] + (ks >> 6)] >> (ks & 63) & 1) != 0;
    }
}

/// <summary>The mask of a frozen <see cref="SegmentSelection"/>.</summary>
public readonly struct SegmentSelectionMask : IMaskMod<SegmentSelectionMask>
{
    private readonly SegmentSelection.Table? _table;

    internal SegmentSelectionMask(SegmentSelection.Table table) => _table = table;

    private SegmentSelection.Table T => _table ?? throw new InvalidOperationException("default(SegmentSelectionMask) selects nothing; create it with SegmentSelection.ToMask().");

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        SegmentSelection.Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch, tk = t.KeyLengths[e];
        int row = q - (tk - t.QueryLengths[e]);
        if ((uint)row >= (uint)t.QueryLengths[e] || (uint)k >= (uint)tk || (uint)q >= (uint)tk) return false;
        int[] seg = t.SegmentOf[e];
        return t.Cell(e, t.Heads == 1 ? 0 : head, seg[q], seg[k]);
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        SegmentSelection.Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch, tk = t.KeyLengths[e], shift = tk - t.QueryLengths[e];
        int p0 = Math.Max(Math.Max(qStart, shift), 0), p1 = Math.Min(qEnd, tk); // query positions that can see anything
        int k0 = Math.Max(kStart, 0), k1 = Math.Min(kEnd, tk);
        if (p1 <= p0 || k1 <= k0) return BlockKind.Empty;
        bool inside = p0 == qStart && p1 == qEnd && k0 == kStart && k1 == kEnd;
        int[] seg = t.SegmentOf[e];
        int h = t.Heads == 1 ? 0 : head;
        bool any = false, all = true;
        for (int qs = seg[p0]; qs <= seg[p1 - 1]; qs++)
            for (int ks = seg[k0]; ks <= seg[k1 - 1]; ks++)
            {
                bool c = t.Cell(e, h, qs, ks);
                any |= c;
                all &= c;
            }
        if (!any) return BlockKind.Empty;
        return all && inside ? BlockKind.Full : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => T.Heads > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => T.QueryLengths.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => "segments";
}
