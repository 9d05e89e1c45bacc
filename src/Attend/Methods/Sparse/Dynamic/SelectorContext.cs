using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Dynamic;

/// <summary>
/// The inputs of one selector call, validated, with the reads the selectors share: a head's query rows, its keys
/// (cached per KV head), the column and diagonal mass of the last query rows, and mean-pooled block scores.
/// </summary>
internal unsafe ref struct SelectorContext
{
    private readonly ReadOnlyTensorSpan<float> _q, _k;
    private readonly SeqOffsets? _offsets;
    private int _cachedSeq, _cachedKvHead;
    private float[]? _cachedKeys;

    public SelectorContext(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v, SeqOffsets? offsets, float? scale)
    {
        Shape = AttentionShape.Validate(q, k, v, new AttentionOptions { QueryOffsets = offsets, Scale = scale });
        _q = q;
        _k = k;
        _offsets = offsets;
        Scale = scale ?? 1f / MathF.Sqrt(Shape.Dim);
        _cachedSeq = -1;
        _cachedKvHead = -1;
    }

    public AttentionShape Shape { get; }

    public float Scale { get; }

    public readonly HybridSparsePlan NewPlan() =>
        new(Shape.IsVarlen ? 1 : Shape.Batch, Shape.Heads, Shape.QueryTokens, Shape.KeyTokens, _offsets);

    /// <summary>Query rows [start, start + count) of sequence <paramref name="s"/>, head <paramref name="h"/>, as [count][D].</summary>
    public readonly float[] Queries(int s, int h, int start, int count)
    {
        fixed (float* p = &_q.GetPinnableReference())
            return SelectorMath.Rows(Views.Of(_q, p), Shape.SeqBatch[s], Shape.QStart[s] + start, count, h);
    }

    public readonly float[] QueryRow(int s, int h, int i) => Queries(s, h, i, 1);

    /// <summary>All keys of sequence <paramref name="s"/> for the KV head of query head <paramref name="h"/>, as [Tk][D].</summary>
    public float[] Keys(int s, int h)
    {
        int hk = h / Shape.GroupSize;
        if (_cachedKeys is not null && _cachedSeq == s && _cachedKvHead == hk) return _cachedKeys;
        fixed (float* p = &_k.GetPinnableReference())
            _cachedKeys = SelectorMath.Rows(Views.Of(_k, p), Shape.SeqBatch[s], Shape.KStart[s], Shape.KLen[s], hk);
        _cachedSeq = s;
        _cachedKvHead = hk;
        return _cachedKeys;
    }

    /// <summary>Key position of query row <paramref name="i"/> of sequence <paramref name="s"/>.</summary>
    public readonly int Position(int s, int i) => i + Shape.KLen[s] - Shape.QLen[s];

    /// <summary>
    /// The causal softmax of the last <paramref name="lastQueries"/> query rows over all keys, summed over rows per key
    /// (vertical mass, indexed by key) and per diagonal (slash mass, indexed by offset = position − key).
    /// </summary>
    public (float[] Vertical, float[] Slash) LastRowsColumnAndDiagonalMass(int s, int h, int lastQueries)
    {
        int tq = Shape.QLen[s], tk = Shape.KLen[s], d = Shape.Dim;
        int rows = Math.Min(lastQueries, tq), first = tq - rows;
        float[] p = LastRowsSoftmax(s, h, first, rows);
        var vertical = new float[tk];
        var slash = new float[tk];
        for (int r = 0; r < rows; r++)
        {
            int pos = Position(s, first + r);
            Span<float> row = p.AsSpan(r * tk, tk);
            TensorPrimitives.Add(vertical, row, vertical);
            for (int j = 0; j <= Math.Min(pos, tk - 1); j++) slash[pos - j] += row[j];
        }
        _ = d;
        return (vertical, slash);
    }

    /// <summary>Causal softmax [rows][Tk] of query rows [first, first + rows).</summary>
    public float[] LastRowsSoftmax(int s, int h, int first, int rows)
    {
        int tk = Shape.KLen[s];
        float[] qs = Queries(s, h, first, rows);
        float[] p = SelectorMath.Scores(qs, rows, Keys(s, h), tk, Shape.Dim, Scale);
        var positions = new int[rows];
        for (int r = 0; r < rows; r++) positions[r] = Position(s, first + r);
        SelectorMath.CausalSoftmax(p, rows, tk, positions);
        return p;
    }

    /// <summary>Scaled scores of mean-pooled 64-row query blocks against mean-pooled 64-key blocks: [qBlocks][kBlocks].</summary>
    public float[] PooledBlockScores(int s, int h, out int qBlocks, out int kBlocks)
    {
        int tq = Shape.QLen[s], tk = Shape.KLen[s], d = Shape.Dim, bs = HybridSparsePlan.BlockSize;
        qBlocks = (tq + bs - 1) / bs;
        kBlocks = (tk + bs - 1) / bs;
        float[] pq = SelectorMath.PoolMeans(Queries(s, h, 0, tq), tq, d, bs);
        float[] pk = SelectorMath.PoolMeans(Keys(s, h), tk, d, bs);
        return SelectorMath.Scores(pq, qBlocks, pk, kBlocks, d, Scale);
    }

    /// <summary>The key block holding the last position of query block <paramref name="qb"/>, or −1 when it sees no key.</summary>
    public readonly int LastVisibleKeyBlock(int s, int qb)
    {
        int last = Math.Min(Shape.QLen[s], (qb + 1) * HybridSparsePlan.BlockSize) - 1;
        int pos = Math.Min(Position(s, last), Shape.KLen[s] - 1);
        return pos < 0 ? -1 : pos / HybridSparsePlan.BlockSize;
    }
}
