namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// The routing half of <see cref="ClusterSortedAttention"/>, on its packed segments: segment i holds the queries and
/// the keys of one (sequence, head, cluster), each in position order, with their positions in the original sequence.
/// A query at position p sees a key at position pk when pk ≤ p − W, or (bidirectional) pk ≥ p + W: the pairs of its
/// cluster outside the local window of W keys, which the window half computes.
/// </summary>
/// <remarks>
/// Because both sides of a segment ascend in position, each row's visible keys are a prefix (and, bidirectional, a
/// suffix) of the segment's keys, and a block's kind follows from its four corner positions: the staircase of a
/// cluster's causal pairs is mostly full or empty tiles, which is what makes the sorted form follow its density.
/// </remarks>
internal readonly struct SortedClusterMask : IMaskMod<SortedClusterMask>, IMaskRowWords
{
    private readonly int[] _queryPosition, _keyPosition;
    private readonly SeqOffsets _queries, _keys;
    private readonly int _window;
    private readonly bool _causal;

    /// <summary>Segments <paramref name="queries"/> / <paramref name="keys"/> over the packed positions.</summary>
    public SortedClusterMask(int[] queryPosition, int[] keyPosition, SeqOffsets queries, SeqOffsets keys, int window, bool causal)
    {
        _queryPosition = queryPosition;
        _keyPosition = keyPosition;
        _queries = queries;
        _keys = keys;
        _window = window;
        _causal = causal;
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        int tq = _queries.Length(batch), tk = _keys.Length(batch), row = q - (tk - tq);
        if ((uint)row >= (uint)tq || (uint)k >= (uint)tk) return false;
        long p = _queryPosition[_queries.Start(batch) + row], pk = _keyPosition[_keys.Start(batch) + k];
        return pk <= p - _window || (!_causal && pk >= p + _window);
    }

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        int tq = _queries.Length(batch), tk = _keys.Length(batch), row = q - (tk - tq);
        if ((uint)row >= (uint)tq || k0 < 0 || k0 >= tk) return 0;
        long p = _queryPosition[_queries.Start(batch) + row];
        ReadOnlySpan<int> keys = _keyPosition.AsSpan(_keys.Start(batch), tk);
        ulong word = MaskRowWords.Range(0, CountAtMost(keys, p - _window), k0);
        if (!_causal) word |= MaskRowWords.Range(CountAtMost(keys, p + _window - 1), tk, k0);
        return word;
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int tq = _queries.Length(batch), tk = _keys.Length(batch), shift = tk - tq;
        int r0 = Math.Max(qStart - shift, 0), r1 = Math.Min(qEnd - shift, tq), k0 = Math.Max(kStart, 0), k1 = Math.Min(kEnd, tk);
        if (r1 <= r0 || k1 <= k0) return BlockKind.Empty;
        bool inside = r0 == qStart - shift && r1 == qEnd - shift && k0 == kStart && k1 == kEnd;
        int qb = _queries.Start(batch), kb = _keys.Start(batch);
        long minP = _queryPosition[qb + r0], maxP = _queryPosition[qb + r1 - 1];
        long minK = _keyPosition[kb + k0], maxK = _keyPosition[kb + k1 - 1];
        bool allBelow = maxK <= minP - _window, noneBelow = minK > maxP - _window;
        bool allAbove = !_causal && minK >= maxP + _window, noneAbove = _causal || maxK < minP + _window;
        if (noneBelow && noneAbove) return BlockKind.Empty;
        return inside && (allBelow || allAbove) ? BlockKind.Full : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => true;

    /// <inheritdoc/>
    public override string ToString() => $"sorted clusters ({_queries.Count} segments, window {_window}{(_causal ? ", causal" : "")})";

    // Number of ascending positions ≤ limit.
    private static int CountAtMost(ReadOnlySpan<int> ascending, long limit)
    {
        int lo = 0, hi = ascending.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (ascending[mid] <= limit) lo = mid + 1; else hi = mid;
        }
        return lo;
    }
}
