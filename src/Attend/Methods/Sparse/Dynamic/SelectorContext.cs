using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Dynamic;

/// <summary>
/// The inputs of one selector call, validated, with the reads the selectors share: a head's query rows, its keys
/// (cached per KV head), the column and diagonal mass of the last query rows, and mean-pooled block scores.
/// </summary>
internal sealed unsafe class SelectorContext
{
    private readonly float[][] _queries; // per (sequence, head): [Tq][D]
    private readonly float[][] _keys; // per (sequence, KV head): [Tk][D]
    private readonly SeqOffsets? _offsets;

    // The rows are copied once (O(T·H·D), a memory copy) so that heads can be selected in parallel.
    public SelectorContext(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v, SeqOffsets? offsets, float? scale)
    {
        Shape = AttentionShape.Validate(q, k, v, new AttentionOptions { QueryOffsets = offsets, Scale = scale });
        _offsets = offsets;
        Scale = scale ?? 1f / MathF.Sqrt(Shape.Dim);
        AttentionShape sh = Shape;
        _queries = new float[sh.Sequences * sh.Heads][];
        _keys = new float[sh.Sequences * sh.KvHeads][];
        fixed (float* pq = &q.GetPinnableReference())
        fixed (float* pk = &k.GetPinnableReference())
        {
            TensorView<float> vq = Views.Of(q, pq), vk = Views.Of(k, pk);
            for (int s = 0; s < sh.Sequences; s++)
            {
                for (int h = 0; h < sh.Heads; h++) _queries[s * sh.Heads + h] = SelectorMath.Rows(vq, sh.SeqBatch[s], sh.QStart[s], sh.QLen[s], h);
                for (int hk = 0; hk < sh.KvHeads; hk++) _keys[s * sh.KvHeads + hk] = SelectorMath.Rows(vk, sh.SeqBatch[s], sh.KStart[s], sh.KLen[s], hk);
            }
        }
    }

    /// <summary>Runs <paramref name="body"/> for every (sequence, head), heads in parallel.</summary>
    public void ForEachHead(int? maxThreads, Action<int, int> body)
    {
        int heads = Shape.Heads;
        Parallel.For(0, Shape.Sequences * heads, new ParallelOptions { MaxDegreeOfParallelism = maxThreads ?? Environment.ProcessorCount },
            u => body(u / heads, u % heads));
    }

    public AttentionShape Shape { get; }

    public float Scale { get; }

    public HybridSparsePlan NewPlan() =>
        new(Shape.IsVarlen ? 1 : Shape.Batch, Shape.Heads, Shape.QueryTokens, Shape.KeyTokens, _offsets);

    /// <summary>Query rows [start, start + count) of sequence <paramref name="s"/>, head <paramref name="h"/>, as [count][D].</summary>
    public ReadOnlySpan<float> Queries(int s, int h, int start, int count) =>
        _queries[s * Shape.Heads + h].AsSpan(start * Shape.Dim, count * Shape.Dim);

    public ReadOnlySpan<float> QueryRow(int s, int h, int i) => Queries(s, h, i, 1);

    /// <summary>All keys of sequence <paramref name="s"/> for the KV head of query head <paramref name="h"/>, as [Tk][D].</summary>
    public float[] Keys(int s, int h) => _keys[s * Shape.KvHeads + h / Shape.GroupSize];

    /// <summary>Key position of query row <paramref name="i"/> of sequence <paramref name="s"/>.</summary>
    public int Position(int s, int i) => i + Shape.KLen[s] - Shape.QLen[s];

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
        ReadOnlySpan<float> qs = Queries(s, h, first, rows);
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
    public int LastVisibleKeyBlock(int s, int qb)
    {
        int last = Math.Min(Shape.QLen[s], (qb + 1) * HybridSparsePlan.BlockSize) - 1;
        int pos = Math.Min(Position(s, last), Shape.KLen[s] - 1);
        return pos < 0 ? -1 : pos / HybridSparsePlan.BlockSize;
    }
}
