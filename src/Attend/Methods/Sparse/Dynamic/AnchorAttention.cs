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
        const int bs = VerticalSlashPlan.QueryBlockSize, region = AnchorRegion;
        int d = ctx.Shape.Dim;
        ctx.ForEachHead(options.MaxThreads, (s, h) =>
        {
            int tq = ctx.Shape.QLen[s], tk = ctx.Shape.KLen[s];
            if (tq == 0 || tk == 0) return;
            int qBlocks = (tq + bs - 1) / bs;
            plan.Tokens.SetVertical(s, h, SelectorMath.Range(0, region, tk));
            plan.Tokens.SetSlash(s, h, SelectorMath.Range(0, region, tk));
            float[] keys = ctx.Keys(s, h);
            float[] meanQ = SelectorMath.PoolMeans(ctx.Queries(s, h, 0, tq), tq, d, bs);
            float[] estimate = SelectorMath.Scores(meanQ, qBlocks, keys, tk, d, ctx.Scale);
            var stripes = new List<int>();
            for (int qb = 0; qb < qBlocks; qb++)
            {
                int i0 = qb * bs, mr = Math.Min(bs, tq - i0);
                int pos0 = ctx.Position(s, i0), pLast = pos0 + mr - 1;
                if (pLast < 0) continue;
                // The anchor: the block's largest estimated score over the sinks and its window [pos0 − 63, pLast].
                int w0 = Math.Max(0, pos0 - region + 1);
                ReadOnlySpan<float> est = estimate.AsSpan(qb * tk, tk);
                float anchor = float.NegativeInfinity;
                for (int j = 0; j < Math.Min(region, pLast + 1); j++) anchor = MathF.Max(anchor, est[j]);
                for (int j = w0; j <= pLast; j++) anchor = MathF.Max(anchor, est[j]);
                double threshold = anchor - theta;
                stripes.Clear();
                // Keys every row of the block sees through its window (j > p_last − 64) need no stripe.
                for (int j = region; j <= Math.Min(pLast - region, tk - 1); j++)
                    if (est[j] >= threshold) stripes.Add(j);
                if (stripes.Count > 0) plan.Tokens.SetBlockColumns(s, h, qb, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(stripes));
            }
        });
        return plan;
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
