using System.Diagnostics;
using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Dynamic;

// AnchorAttention (Zhang et al., 2025: "AnchorAttention: Difference-Aware Sparse Attention with Stripe Granularity";
// the prefill method, not the RoPE/BF16 paper of the same name).
//
//  1. Anchor: the largest score over a fixed pattern every input shares — the first 64 keys (sinks) and the 64-key
//     local window. Those regions are always computed.
//  2. Difference-aware stripe selection: for each 64-row query block, keys outside those regions whose estimated score
//     is within θ of the anchor (score ≥ anchor − θ) are kept as whole columns ("stripes") for the block's rows.
//  3. The sparse kernel loads those discrete key positions (not whole blocks): the token-level path, with the stripes
//     as per-block columns, the sinks as vertical columns and the window as 64 diagonals.
//
// Deviations: (1) scores are estimated with the mean query of each 64-row block, for the anchor (max over the sinks and
// the window [pos0 − 63, p_last]) and for the candidate keys alike (the paper compares per-query scores with per-query
// anchors at stripe granularity; the pooled form keeps the selection at O(T²·D/64), 1/64 of the attention's product, and
// θ is in those pooled units); (2) 64-query blocks and a 64-key window/sink
// region (the CPU tile), where the paper's block sizes are GPU-tuned; (3) CPU, float32.

/// <summary>Options of <see cref="AnchorAttention"/>. Null fields take the defaults.</summary>
public sealed record AnchorAttentionOptions
{
    /// <summary>Difference threshold θ ≥ 0 in scaled-logit units: a key is kept when its estimate ≥ anchor − θ; default 0.5.</summary>
    public double? Theta { get; init; }

    /// <summary>Score scale; default 1/√D.</summary>
    public float? Scale { get; init; }

    /// <summary>Packed variable-length batch offsets (self-attention), or null.</summary>
    public SeqOffsets? Offsets { get; init; }

    /// <summary>Worker threads of the kernel; default all cores.</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>AnchorAttention: anchor scores from sinks and window, difference-aware stripes per query block (causal).</summary>
public static class AnchorAttention
{
    /// <summary>The paper.</summary>
    public const string Paper = "AnchorAttention: Difference-Aware Sparse Attention with Stripe Granularity (Zhang et al., 2025)";

    /// <summary>Keys in the sink region and the local window (the fixed anchor pattern).</summary>
    public const int AnchorRegion = 64;

    /// <summary>Builds the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">θ negative or not finite; the message names the option.</exception>
    public static HybridSparsePlan BuildPlan(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v, AnchorAttentionOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        double theta = options.Theta ?? 0.5;
        if (!(theta >= 0) || double.IsInfinity(theta)) throw new ArgumentOutOfRangeException(nameof(options), theta, "options.Theta (θ) must be finite and ≥ 0.");
        var ctx = new SelectorContext(q, k, v, options.Offsets, options.Scale);
        HybridSparsePlan plan = ctx.NewPlan();
        AttentionShape sh = ctx.Shape;
        const int bs = VerticalSlashPlan.QueryBlockSize, region = AnchorRegion;
        int d = sh.Dim, g = sh.GroupSize;
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = options.MaxThreads ?? Environment.ProcessorCount };

        // Keys transposed once per (sequence, KV head) and shared by the group's query heads (each head transposed its
        // own copy before: GQA ratio × the work).
        var keysT = new float[sh.Sequences * sh.KvHeads][];
        var paddedKeys = new int[sh.Sequences * sh.KvHeads];
        Parallel.For(0, keysT.Length, parallel, u =>
        {
            int s = u / sh.KvHeads, hk = u % sh.KvHeads;
            if (sh.QLen[s] == 0 || sh.KLen[s] == 0) return;
            keysT[u] = SelectorMath.TransposeKeys(ctx.Keys(s, hk * g), sh.KLen[s], d, out paddedKeys[u]);
        });

        // The estimate is streamed: a strip of StripBlocks query blocks at a time, each scored only against the keys
        // its last row can see (causal: half the product), into a buffer of StripBlocks × Tk floats that stays in L2
        // while it is scanned. The whole [blocks][Tk] matrix per head (16 MB at 16k) made the selector's time vary 2×
        // with the large-object allocations and page faults that followed it.
        var strips = new List<(int Seq, int Head, int FirstBlock)>();
        for (int s = 0; s < sh.Sequences; s++)
        {
            int tq = sh.QLen[s], tk = sh.KLen[s];
            if (tq == 0 || tk == 0) continue;
            int qBlocks = (tq + bs - 1) / bs;
            for (int h = 0; h < sh.Heads; h++)
            {
                plan.Tokens.SetVertical(s, h, SelectorMath.Range(0, region, tk));
                plan.Tokens.SetSlash(s, h, SelectorMath.Range(0, region, tk));
            }
            // Later strips see more keys: list them first so the cores end on light items.
            for (int qb0 = (qBlocks - 1) / StripBlocks * StripBlocks; qb0 >= 0; qb0 -= StripBlocks)
                for (int h = 0; h < sh.Heads; h++) strips.Add((s, h, qb0));
        }
        Parallel.For(0, strips.Count, parallel, i =>
        {
            (int s, int h, int qb0) = strips[i];
            SelectStrip(ctx, s, h, qb0, keysT[s * sh.KvHeads + h / g], paddedKeys[s * sh.KvHeads + h / g], theta, plan);
        });
        return plan;
    }

    /// <summary>Query blocks whose estimate is computed together (rows of one score product).</summary>
    private const int StripBlocks = 16;

    // The stripes of query blocks [qb0, qb0 + StripBlocks) of one sequence and head.
    private static unsafe void SelectStrip(SelectorContext ctx, int s, int h, int qb0, float[] keysT, int np, double theta, HybridSparsePlan plan)
    {
        const int bs = VerticalSlashPlan.QueryBlockSize, region = AnchorRegion;
        int tq = ctx.Shape.QLen[s], tk = ctx.Shape.KLen[s], d = ctx.Shape.Dim;
        int qBlocks = (tq + bs - 1) / bs, qb1 = Math.Min(qBlocks, qb0 + StripBlocks);
        int rows = qb1 - qb0, mp = (rows + 3) & ~3;
        int lastPos = ctx.Position(s, Math.Min(tq, qb1 * bs) - 1);
        if (lastPos < 0) return;
        int block = SelectorMath.ColumnBlock;
        int cols = Math.Min(np, (lastPos + 1 + block - 1) / block * block);
        // Mean query of each block, scaled (as SelectorMath.Scores scales its left operand).
        float[] meanQ = SelectorMath.PoolMeans(ctx.Queries(s, h, qb0 * bs, Math.Min(tq, qb1 * bs) - qb0 * bs), Math.Min(tq, qb1 * bs) - qb0 * bs, d, bs);
        float[] a = System.Buffers.ArrayPool<float>.Shared.Rent(mp * d);
        float[] estimate = System.Buffers.ArrayPool<float>.Shared.Rent(mp * cols);
        int[] stripes = System.Buffers.ArrayPool<int>.Shared.Rent(tk);
        try
        {
            a.AsSpan(0, mp * d).Clear();
            for (int r = 0; r < rows; r++) TensorPrimitives.Multiply(meanQ.AsSpan(r * d, d), ctx.Scale, a.AsSpan(r * d, d));
            fixed (float* pa = a, pb = keysT, pc = estimate)
                SelectorMath.ScoreRows(pa, mp, pb, np, cols, d, pc, cols);
            for (int qb = qb0; qb < qb1; qb++)
            {
                int i0 = qb * bs, mr = Math.Min(bs, tq - i0);
                int pos0 = ctx.Position(s, i0), pLast = pos0 + mr - 1;
                if (pLast < 0) continue;
                // The anchor: the block's largest estimated score over the sinks and its window [pos0 − 63, pLast].
                int w0 = Math.Max(0, pos0 - region + 1);
                ReadOnlySpan<float> est = estimate.AsSpan((qb - qb0) * cols, cols);
                float anchor = float.NegativeInfinity;
                for (int j = 0; j < Math.Min(region, pLast + 1); j++) anchor = MathF.Max(anchor, est[j]);
                for (int j = w0; j <= pLast; j++) anchor = MathF.Max(anchor, est[j]);
                double threshold = anchor - theta;
                int count = 0;
                // Keys every row of the block sees through its window (j > p_last − 64) need no stripe.
                for (int j = region; j <= Math.Min(pLast - region, tk - 1); j++)
                    if (est[j] >= threshold) stripes[count++] = j;
                if (count > 0) plan.Tokens.SetBlockColumns(s, h, qb, stripes.AsSpan(0, count));
            }
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(a);
            System.Buffers.ArrayPool<float>.Shared.Return(estimate);
            System.Buffers.ArrayPool<int>.Shared.Return(stripes);
        }
    }

    /// <summary>Builds the plan and runs it on the token-level path; returns the plan and the selection time.</summary>
    public static (HybridSparsePlan Plan, double SelectorMs) Forward(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v,
        AnchorAttentionOptions options, TensorSpan<float> output, TensorSpan<float> lse = default)
    {
        var watch = Stopwatch.StartNew();
        HybridSparsePlan plan = BuildPlan(q, k, v, options);
        double ms = watch.Elapsed.TotalMilliseconds;
        plan.Forward(q, k, v, new AttentionOptions { Scale = options.Scale, QueryOffsets = options.Offsets, MaxThreads = options.MaxThreads }, output, lse);
        return (plan, ms);
    }
}
