namespace Attend;

/// <summary>The float64 reference as a kernel variant: last in preference order, supports everything, slow.</summary>
internal sealed class ReferenceKernel : AttentionKernel
{
    public override string Name => "Reference";

    public override string Backend => "cpu";

    public override string Summary => "naive float64 attention, the oracle (no tiling, O(T²) time)";

    public override bool IsSupported(in KernelProblem problem, out string reason)
    {
        reason = "";
        return true;
    }

    internal override unsafe void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
    {
        AttentionShape sh = call.Shape;
        var options = new AttentionOptions { Mask = mask, ScoreMod = score.IsIdentity ? null : score, Scale = call.Scale };
        var ctx = new ReferenceContext<T>(sh, call.Q, call.K, call.V, options);
        TensorView<T> o = call.O;
        LseView lse = call.Lse;
        Parallel.For(0, sh.Sequences * sh.Heads, () => (new double[sh.MaxKeyLength], new double[sh.Dim]), (w, _, scratch) =>
        {
            int s = w / sh.Heads, h = w % sh.Heads, b = sh.SeqBatch[s];
            for (int i = 0; i < sh.QLen[s]; i++)
            {
                double l = ctx.ForwardRow(s, h, i, scratch.Item2, scratch.Item1);
                T* row = o.Row(b, sh.QStart[s] + i, h);
                for (int x = 0; x < sh.Dim; x++) row[x] = ElementConvert.FromSingle<T>((float)scratch.Item2[x]);
                if (!lse.IsNull) *lse.At(b, h, sh.QStart[s] + i) = (float)l;
            }
            return scratch;
        }, _ => { });
    }

    internal override unsafe void Backward<T, TMask, TScore>(BackwardCall<T> call, TMask mask, TScore score)
    {
        AttentionShape sh = call.Shape;
        var options = new AttentionOptions { Mask = mask, ScoreMod = score.IsIdentity ? null : score, Scale = call.Scale };
        var ctx = new ReferenceContext<T>(sh, call.Q, call.K, call.V, options);
        long qElems = (long)sh.Batch * sh.QueryTokens * sh.Heads * sh.Dim;
        long kElems = (long)sh.Batch * sh.KeyTokens * sh.KvHeads * sh.Dim;
        var dq = new double[qElems];
        var dk = new double[kElems];
        var dv = new double[kElems];
        ctx.BackwardAll(call.DO, dq, dk, dv);
        Scatter(dq, call.DQ, sh.QueryTokens);
        Scatter(dk, call.DK, sh.KeyTokens);
        Scatter(dv, call.DV, sh.KeyTokens);
    }

    private static unsafe void Scatter<T>(double[] dense, TensorView<T> target, int tokens) where T : unmanaged
    {
        int d = target.Dim;
        for (int b = 0; b < target.Batch; b++)
            for (int t = 0; t < tokens; t++)
                for (int h = 0; h < target.Heads; h++)
                {
                    T* row = target.Row(b, t, h);
                    long baseIndex = (((long)b * tokens + t) * target.Heads + h) * d;
                    for (int x = 0; x < d; x++) row[x] = ElementConvert.FromSingle<T>((float)dense[baseIndex + x]);
                }
    }
}
