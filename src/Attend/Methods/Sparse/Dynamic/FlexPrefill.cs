using System.Diagnostics;
using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Dynamic;

// FlexPrefill (Lai, Lu, Zhao, Xu, Chen, Chen, Yan, 2025: "FlexPrefill: A Context-Aware Sparse Attention Mechanism
// for Efficient Long-Sequence Inference").
//
// Per head, from the last block of queries Q̂:
//  1. Pattern: the true block distribution ā′ (the causal softmax of Q̂ against all keys, summed per 64-key block and
//     averaged over Q̂'s rows) is compared with the pooled estimate ā (softmax over key blocks of mean(Q̂) · mean-pooled
//     keys). If their Jensen–Shannon distance √JSD(ā, ā′) is below τ, pooling predicts this head well: it is
//     query-aware; otherwise vertical-slash.
//  2. Query-aware heads: for every query block, the pooled scores against every causally visible key block, softmax,
//     then the fewest blocks whose estimated mass reaches γ (cumulative-attention threshold). Block-sparse kernel.
//  3. Vertical-slash heads: the column mass and diagonal mass of Q̂'s softmax (each normalised), then the fewest
//     columns and the fewest diagonals whose mass reaches γ. Token-level path.
//
// Deviations: (1) blocks are 64 (the CPU tile) where the paper uses 128; (2) vertical-slash heads run on the
// token-level kernel (exact columns and diagonals) where the authors round them up to 128-blocks of a block-sparse
// kernel; (3) the first 64 keys and the 64 nearest diagonals (query-aware: the first and diagonal block) are always
// kept, as sinks and local window; (4) query-aware selection is per query block (the paper's description sorts the
// whole estimated map); (5) no min/max budget clamp (the released code has one); (6) we compare the JS *distance*
// (square root of the divergence, natural log) with τ.

/// <summary>Options of <see cref="FlexPrefill"/>. Null fields take the defaults.</summary>
public sealed record FlexPrefillOptions
{
    /// <summary>Cumulative-attention threshold γ ∈ (0, 1]: the estimated mass each selection must reach; default 0.9.</summary>
    public double? Gamma { get; init; }

    /// <summary>Jensen–Shannon distance threshold τ ≥ 0 below which a head is query-aware; default 0.1.</summary>
    public double? Tau { get; init; }

    /// <summary>Score scale; default 1/√D.</summary>
    public float? Scale { get; init; }

    /// <summary>Packed variable-length batch offsets (self-attention), or null.</summary>
    public SeqOffsets? Offsets { get; init; }

    /// <summary>Worker threads of the attention kernels; default all cores.</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>FlexPrefill: query-aware or vertical-slash per head by divergence, budgets by cumulative attention (causal).</summary>
public static class FlexPrefill
{
    /// <summary>The paper.</summary>
    public const string Paper = "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference (Lai et al., 2025)";

    /// <summary>Builds the plan (the online selection).</summary>
    /// <remarks>
    /// The query-aware / vertical-slash choice is made per sequence and head (<paramref name="queryAware"/>[s][h]), so a
    /// sequence of a batch (padded or packed) gets the plan it gets alone.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">γ outside (0, 1] or τ below 0; the message names the option.</exception>
    public static HybridSparsePlan BuildPlan(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v,
        FlexPrefillOptions options, out bool[][] queryAware)
    {
        ArgumentNullException.ThrowIfNull(options);
        double gamma = options.Gamma ?? 0.9, tau = options.Tau ?? 0.1;
        if (!(gamma > 0 && gamma <= 1)) throw new ArgumentOutOfRangeException(nameof(options), gamma, "options.Gamma (γ) must be in (0, 1].");
        if (!(tau >= 0) || double.IsInfinity(tau)) throw new ArgumentOutOfRangeException(nameof(options), tau, "options.Tau (τ) must be finite and ≥ 0.");
        var ctx = new SelectorContext(q, k, v, options.Offsets, options.Scale);
        HybridSparsePlan plan = ctx.NewPlan();
        const int bs = HybridSparsePlan.BlockSize;
        int sequences = ctx.Shape.Sequences, heads = ctx.Shape.Heads;
        bool[][] aware = queryAware = new bool[sequences][];
        for (int s = 0; s < sequences; s++) aware[s] = new bool[heads];
        Parallel.For(0, sequences * heads, new ParallelOptions { MaxDegreeOfParallelism = options.MaxThreads ?? Environment.ProcessorCount }, item =>
        {
            // The pattern is decided per sequence and head, on that sequence's last query block.
            int s = item / heads, h = item % heads;
            int tq = ctx.Shape.QLen[s], tk = ctx.Shape.KLen[s];
            if (tq == 0 || tk == 0) return;
            int rows = Math.Min(bs, tq), first = tq - rows;
            float[] p = ctx.LastRowsSoftmax(s, h, first, rows);
            aware[s][h] = JensenShannonDistance(ctx, s, h, p, rows, first) < tau;
            plan.SetBlockHead(s, h, aware[s][h]);
            if (aware[s][h]) SelectQueryAware(ctx, s, h, gamma, plan);
            else SelectVerticalSlash(ctx, s, h, p, rows, first, gamma, plan);
        });
        return plan;
    }

    /// <summary>Builds the plan and runs it; returns the plan, the per-head choice and the selection time.</summary>
    public static (HybridSparsePlan Plan, bool[][] QueryAware, double SelectorMs) Forward(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k,
        ReadOnlyTensorSpan<float> v, FlexPrefillOptions options, TensorSpan<float> output, TensorSpan<float> lse = default)
    {
        var watch = Stopwatch.StartNew();
        HybridSparsePlan plan = BuildPlan(q, k, v, options, out bool[][] queryAware);
        double ms = watch.Elapsed.TotalMilliseconds;
        plan.Forward(q, k, v, new AttentionOptions { Scale = options.Scale, QueryOffsets = options.Offsets, MaxThreads = options.MaxThreads }, output, lse);
        return (plan, queryAware, ms);
    }

    // √JSD between the pooled estimate and the true block distribution of the last query block.
    private static double JensenShannonDistance(SelectorContext ctx, int s, int h, float[] p, int rows, int first)
    {
        const int bs = HybridSparsePlan.BlockSize;
        int tk = ctx.Shape.KLen[s], d = ctx.Shape.Dim, kBlocks = (tk + bs - 1) / bs;
        var truth = new double[kBlocks];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < tk; j++) truth[j / bs] += p[(long)r * tk + j] / rows;
        float[] meanQ = SelectorMath.PoolMeans(ctx.Queries(s, h, first, rows), rows, d, rows);
        float[] pooledK = SelectorMath.PoolMeans(ctx.Keys(s, h), tk, d, bs);
        float[] est = SelectorMath.Scores(meanQ, 1, pooledK, kBlocks, d, ctx.Scale);
        int visible = Math.Min(kBlocks, ctx.Position(s, first + rows - 1) / bs + 1);
        est.AsSpan(visible).Clear();
        SelectorMath.Softmax(est.AsSpan(0, visible));
        double jsd = 0;
        for (int b = 0; b < kBlocks; b++)
        {
            double a = est[b], t = truth[b], m = 0.5 * (a + t);
            if (a > 0) jsd += 0.5 * a * Math.Log(a / m);
            if (t > 0) jsd += 0.5 * t * Math.Log(t / m);
        }
        return Math.Sqrt(Math.Max(0, jsd));
    }

    private static void SelectQueryAware(SelectorContext ctx, int s, int h, double gamma, HybridSparsePlan plan)
    {
        float[] scores = ctx.PooledBlockScores(s, h, out int qBlocks, out int kBlocks);
        for (int qb = 0; qb < qBlocks; qb++)
        {
            int last = ctx.LastVisibleKeyBlock(s, qb);
            if (last < 0) continue;
            Span<float> live = scores.AsSpan(qb * kBlocks, last + 1);
            SelectorMath.Softmax(live);
            foreach (int kb in SelectorMath.CumulativeMass(live, gamma)) plan.Blocks.Select(s, h, qb, kb);
            plan.Blocks.Select(s, h, qb, 0);
            plan.Blocks.Select(s, h, qb, last);
        }
    }

    private static void SelectVerticalSlash(SelectorContext ctx, int s, int h, float[] p, int rows, int first, double gamma, HybridSparsePlan plan)
    {
        const int bs = HybridSparsePlan.BlockSize;
        int tk = ctx.Shape.KLen[s];
        var vertical = new float[tk];
        var slash = new float[tk];
        for (int r = 0; r < rows; r++)
        {
            int pos = ctx.Position(s, first + r);
            Span<float> row = p.AsSpan(r * tk, tk);
            TensorPrimitives.Add(vertical, row, vertical);
            for (int j = 0; j <= Math.Min(pos, tk - 1); j++) slash[pos - j] += row[j];
        }
        plan.Tokens.SetVertical(s, h, SelectorMath.Union(SelectorMath.CumulativeMass(vertical, gamma), SelectorMath.Range(0, bs, tk)));
        plan.Tokens.SetSlash(s, h, SelectorMath.Union(SelectorMath.CumulativeMass(slash, gamma), SelectorMath.Range(0, bs, tk)));
    }
}
