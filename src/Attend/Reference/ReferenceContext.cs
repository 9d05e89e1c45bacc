namespace Attend;

/// <summary>
/// The float64 reference computation over pinned views. One row at a time: scores, soft cap, score mod, mask,
/// softmax; all in double. Used by <see cref="ReferenceAttention"/>, the <c>Reference</c> kernel variant and the
/// bench's sampled checks.
/// </summary>
internal sealed unsafe class ReferenceContext<T> where T : unmanaged
{
    private readonly AttentionShape _shape;
    private readonly TensorView<T> _q, _k, _v;
    private readonly IMaskMod _mask;
    private readonly IScoreMod? _scoreMod;
    private readonly double? _softcap;
    private readonly double _scale;

    public ReferenceContext(AttentionShape shape, TensorView<T> q, TensorView<T> k, TensorView<T> v, AttentionOptions options)
    {
        _shape = shape;
        _q = q;
        _k = k;
        _v = v;
        _mask = options.Mask ?? options.BlockMask?.Mask ?? new FullMask();
        _scoreMod = options.ScoreMod;
        _softcap = options.Softcap;
        _scale = options.Scale ?? 1.0 / Math.Sqrt(shape.Dim);
    }

    public AttentionShape Shape => _shape;

    /// <summary>Index of (batch, token, head, 0) in a dense [B, T, H, D] array.</summary>
    public long DenseRow(int batch, int token, int heads, int tokens, int head) =>
        (((long)batch * tokens + token) * heads + head) * _shape.Dim;

    /// <summary>
    /// Scores of one query row in float64, after soft cap and score mod; masked keys are −∞.
    /// Returns the pre-mod scaled scores in <paramref name="raw"/> when it is not empty (for the backward chain rule).
    /// </summary>
    private void Scores(int s, int h, int i, Span<double> scores, Span<double> raw)
    {
        int d = _shape.Dim, tq = _shape.QLen[s], tk = _shape.KLen[s], b = _shape.SeqBatch[s];
        int hk = h / _shape.GroupSize;
        int pos = i + tk - tq;
        T* qr = _q.Row(b, _shape.QStart[s] + i, h);
        for (int j = 0; j < tk; j++)
        {
            T* kr = _k.Row(b, _shape.KStart[s] + j, hk);
            double dot = 0;
            for (int x = 0; x < d; x++) dot += (double)ElementConvert.ToSingle(qr[x]) * ElementConvert.ToSingle(kr[x]);
            double score = dot * _scale;
            if (!raw.IsEmpty) raw[j] = score;
            if (_softcap is double c) score = c * Math.Tanh(score / c);
            if (_scoreMod is not null) score = _scoreMod.Apply(score, s, h, pos, j);
            scores[j] = _mask.IsVisible(s, h, pos, j) ? score : double.NegativeInfinity;
        }
    }

    /// <summary>Computes one output row; returns its LSE (−∞ and a zero row when nothing is visible).</summary>
    public double ForwardRow(int s, int h, int i, Span<double> output, Span<double> scratch)
    {
        int d = _shape.Dim, tk = _shape.KLen[s], b = _shape.SeqBatch[s], hk = h / _shape.GroupSize;
        Span<double> scores = scratch[..tk];
        Scores(s, h, i, scores, default);
        double max = double.NegativeInfinity;
        foreach (double x in scores) max = Math.Max(max, x);
        output.Clear();
        if (double.IsNegativeInfinity(max)) return double.NegativeInfinity;
        double sum = 0;
        for (int j = 0; j < tk; j++)
        {
            double p = Math.Exp(scores[j] - max);
            if (p == 0) continue;
            sum += p;
            T* vr = _v.Row(b, _shape.KStart[s] + j, hk);
            for (int x = 0; x < d; x++) output[x] += p * ElementConvert.ToSingle(vr[x]);
        }
        for (int x = 0; x < d; x++) output[x] /= sum;
        return max + Math.Log(sum);
    }

    /// <summary>Forward over every row, parallel over (sequence, head).</summary>
    public void ForwardAll(double[] output, double[] lse)
    {
        AttentionShape sh = _shape;
        int work = sh.Sequences * sh.Heads;
        Parallel.For(0, work, () => new double[sh.MaxKeyLength], (w, _, scratch) =>
        {
            int s = w / sh.Heads, h = w % sh.Heads, b = sh.SeqBatch[s];
            for (int i = 0; i < sh.QLen[s]; i++)
            {
                int token = sh.QStart[s] + i;
                var row = output.AsSpan((int)DenseRow(b, token, sh.Heads, sh.QueryTokens, h), sh.Dim);
                lse[((long)b * sh.Heads + h) * sh.QueryTokens + token] = ForwardRow(s, h, i, row, scratch);
            }
            return scratch;
        }, _ => { });
    }

    /// <summary>
    /// Analytic backward over every row. Parallel over (sequence, KV head) so that each worker owns its dK/dV rows
    /// (the query heads of a group add into the same KV head).
    /// </summary>
    public void BackwardAll(TensorView<T> dO, double[] dq, double[] dk, double[] dv)
    {
        AttentionShape sh = _shape;
        int d = sh.Dim, g = sh.GroupSize;
        int work = sh.Sequences * sh.KvHeads;
        TensorView<T> q = _q, k = _k, v = _v;
        Parallel.For(0, work, w =>
        {
            int s = w / sh.KvHeads, hk = w % sh.KvHeads, b = sh.SeqBatch[s];
            int tq = sh.QLen[s], tk = sh.KLen[s];
            var scores = new double[tk];
            var raw = new double[tk];
            var p = new double[tk];
            var dp = new double[tk];
            var o = new double[d];
            for (int h = hk * g; h < (hk + 1) * g; h++)
            {
                for (int i = 0; i < tq; i++)
                {
                    int pos = i + tk - tq;
                    double lse = ForwardRow(s, h, i, o, scores);
                    if (double.IsNegativeInfinity(lse)) continue;
                    Scores(s, h, i, scores, raw);
                    T* doRow = dO.Row(b, sh.QStart[s] + i, h);
                    T* qRow = q.Row(b, sh.QStart[s] + i, h);
                    // delta = Σ_j p_j dp_j = dO · o
                    double delta = 0;
                    for (int x = 0; x < d; x++) delta += ElementConvert.ToSingle(doRow[x]) * o[x];
                    long dqBase = DenseRow(b, sh.QStart[s] + i, sh.Heads, sh.QueryTokens, h);
                    for (int j = 0; j < tk; j++)
                    {
                        if (double.IsNegativeInfinity(scores[j])) continue;
                        double pj = Math.Exp(scores[j] - lse);
                        T* vRow = v.Row(b, sh.KStart[s] + j, hk);
                        T* kRow = k.Row(b, sh.KStart[s] + j, hk);
                        double dpj = 0;
                        for (int x = 0; x < d; x++) dpj += ElementConvert.ToSingle(doRow[x]) * (double)ElementConvert.ToSingle(vRow[x]);
                        // Chain rule back through the score mod and the soft cap to the scaled score, then the scale.
                        double ds = pj * (dpj - delta);
                        double capped = raw[j];
                        if (_softcap is double c)
                        {
                            double t = Math.Tanh(raw[j] / c);
                            capped = c * t;
                            ds *= 1 - t * t;
                        }
                        if (_scoreMod is not null) ds *= _scoreMod.Derivative(capped, s, h, pos, j);
                        ds *= _scale;
                        long kvBase = DenseRow(b, sh.KStart[s] + j, sh.KvHeads, sh.KeyTokens, hk);
                        for (int x = 0; x < d; x++)
                        {
                            dv[kvBase + x] += pj * ElementConvert.ToSingle(doRow[x]);
                            dk[kvBase + x] += ds * ElementConvert.ToSingle(qRow[x]);
                            dq[dqBase + x] += ds * ElementConvert.ToSingle(kRow[x]);
                        }
                    }
                }
            }
        });
    }
}
