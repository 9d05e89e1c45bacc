using System.Diagnostics;
using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Dynamic;

// MInference 1.0 (Jiang, Li, Zhang, Wu, Luo, Ahn, Han, Abdi, Li, Lin, Yang, Qiu, 2024: "MInference 1.0:
// Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention").
//
// Each head gets one of three patterns, chosen offline, whose indices are built online from the input:
//  - A-shape: the first `Vertical` keys (sinks) and the last `Slash` diagonals (a local window); static.
//  - vertical-slash: the last `LastQueries` query rows attend densely (causal) to every key; summing their softmax
//    over rows gives a score per key (vertical) and summing along diagonals a score per offset (slash); the top
//    `Vertical` keys and top `Slash` offsets are kept, with the first 30 keys and the 100 nearest diagonals always
//    kept (as the authors' code forces them to +∞ before the top-k). Runs on the token-level path.
//  - block-sparse: 64-row query blocks and 64-key blocks are mean-pooled; the pooled scores pick the top `Blocks`
//    key blocks per query block (causally visible ones). Runs on the block-sparse exact kernel.
// The offline search (SearchPatterns) tries, per head, candidate configurations of about equal cost on a calibration
// input and keeps the one with the highest attention recall.
//
// Deviations: (1) the offline search measures recall on up to 256 sampled query rows of the calibration input
// (the paper scores candidates on one calibration sample with the real kernel's FLOPs; we use equal per-row key budgets:
// A-shape 64 + (B − 64), vertical-slash B/7 + 6B/7 (the 1000:6096 ratio of the released configs) and B/2 + B/2,
// block-sparse B/64 blocks). (2) block-sparse heads always keep the diagonal block as well (so no causal row is empty).
// (3) Blocks are 64×64 (the CPU tile) for the pooling, where the authors use 64 queries × 64 keys too. (4) CPU, float32.
// (5) `attend run` and the bench have no separate calibration input: the adapter's default gives every head the
// vertical-slash pattern (the pattern most heads get in the released configurations) with a budget of max(128, Tk/16)
// keys per row; `pattern=search` runs the search on the input itself, its time reported apart (search_ms) and not as
// selector time, since in the paper it is paid once offline. (6) Slash lines compute, by default, exactly their
// diagonals (the paper's definition of the pattern; density = the pairs computed). The authors' kernel instead computes,
// per 64-row query block, the 64-key ranges covering the block's diagonals (convert_vertical_slash_indexes in
// microsoft/MInference csrc/vertical_slash_index.cu, read to understand); `Coverage = SlashCoverage.Blocks` (`coverage=blocks`)
// runs that definition, its density again the pairs actually computed. The authors' conversion also drops verticals past
// the last range's end, which only matters without the offset-0 diagonal (always kept here); we keep them.

/// <summary>The sparse pattern of one MInference head.</summary>
public enum MInferencePattern
{
    /// <summary>Sink tokens plus a local window (static).</summary>
    AShape,

    /// <summary>Top vertical columns and top diagonals, estimated from the last queries.</summary>
    VerticalSlash,

    /// <summary>Top key blocks per query block, from mean-pooled scores.</summary>
    BlockSparse,
}

/// <summary>One head's pattern and budget.</summary>
/// <param name="Kind">The pattern.</param>
/// <param name="Vertical">A-shape: sink tokens; vertical-slash: vertical columns kept.</param>
/// <param name="Slash">A-shape: local window (diagonals); vertical-slash: diagonals kept.</param>
/// <param name="Blocks">Block-sparse: key blocks kept per query block.</param>
public sealed record MInferenceHeadPattern(MInferencePattern Kind, int Vertical = 0, int Slash = 0, int Blocks = 0)
{
    /// <summary>Checks the budgets the kind uses.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A budget below 1 (or a negative sink count); the message names it.</exception>
    public void Validate()
    {
        switch (Kind)
        {
            case MInferencePattern.AShape:
                if (Vertical < 0) throw new ArgumentOutOfRangeException(nameof(Vertical), Vertical, "A-shape sink tokens must be ≥ 0.");
                if (Slash < 1) throw new ArgumentOutOfRangeException(nameof(Slash), Slash, "A-shape local window must be ≥ 1.");
                break;
            case MInferencePattern.VerticalSlash:
                if (Vertical < 1) throw new ArgumentOutOfRangeException(nameof(Vertical), Vertical, "Vertical-slash top-k of columns must be ≥ 1.");
                if (Slash < 1) throw new ArgumentOutOfRangeException(nameof(Slash), Slash, "Vertical-slash top-k of diagonals must be ≥ 1.");
                break;
            default:
                if (Blocks < 1) throw new ArgumentOutOfRangeException(nameof(Blocks), Blocks, "Block-sparse top-k of blocks must be ≥ 1.");
                break;
        }
    }

    /// <summary>Short text: <c>A(64,960)</c>, <c>VS(146,878)</c>, <c>BS(16)</c>.</summary>
    public override string ToString() => Kind switch
    {
        MInferencePattern.AShape => $"A({Vertical},{Slash})",
        MInferencePattern.VerticalSlash => $"VS({Vertical},{Slash})",
        _ => $"BS({Blocks})",
    };
}

/// <summary>Options of <see cref="MInference"/>. Null fields take the defaults.</summary>
public sealed record MInferenceOptions
{
    /// <summary>One pattern per query head (from <see cref="MInference.SearchPatterns"/> or by hand). Required.</summary>
    public IReadOnlyList<MInferenceHeadPattern>? Heads { get; init; }

    /// <summary>Query rows the vertical-slash estimate uses (the last ones); default 64.</summary>
    public int? LastQueries { get; init; }

    /// <summary>Score scale; default 1/√D.</summary>
    public float? Scale { get; init; }

    /// <summary>Packed variable-length batch offsets (self-attention), or null.</summary>
    public SeqOffsets? Offsets { get; init; }

    /// <summary>Worker threads of the attention kernels; default all cores.</summary>
    public int? MaxThreads { get; init; }

    /// <summary>
    /// What the vertical-slash and A-shape heads' slash lines compute (the plan's <see cref="VerticalSlashPlan.Coverage"/>);
    /// default <see cref="SlashCoverage.Diagonals"/>, the paper's token-level definition. <see cref="SlashCoverage.Blocks"/>
    /// is what the authors' kernel computes for vertical-slash heads (64-key ranges covering each 64-row block's
    /// diagonals); A-shape heads, which the authors run through a kernel of their own, take the same ranges here.
    /// </summary>
    public SlashCoverage? Coverage { get; init; }
}

/// <summary>MInference 1.0: per-head A-shape / vertical-slash / block-sparse prefill attention (causal).</summary>
public static class MInference
{
    /// <summary>The paper.</summary>
    public const string Paper = "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention (Jiang et al., 2024)";

    /// <summary>Candidate configurations of about <paramref name="budget"/> keys per row, as the offline search tries them.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="budget"/> below 2.</exception>
    public static IReadOnlyList<MInferenceHeadPattern> Candidates(int budget)
    {
        if (budget < 2) throw new ArgumentOutOfRangeException(nameof(budget), budget, "The per-row key budget must be ≥ 2.");
        int sink = Math.Min(64, budget / 2);
        return
        [
            new(MInferencePattern.AShape, Vertical: sink, Slash: budget - sink),
            new(MInferencePattern.VerticalSlash, Vertical: Math.Max(1, budget / 7), Slash: Math.Max(1, budget - budget / 7)),
            new(MInferencePattern.VerticalSlash, Vertical: Math.Max(1, budget / 2), Slash: Math.Max(1, budget - budget / 2)),
            new(MInferencePattern.BlockSparse, Blocks: Math.Max(1, budget / HybridSparsePlan.BlockSize)),
        ];
    }

    /// <summary>
    /// The offline search: for each head, the candidate whose plan on the calibration input (sequence 0) covers the
    /// most exact softmax mass, averaged over up to <paramref name="sampleRows"/> query rows spread over the sequence.
    /// </summary>
    /// <exception cref="ArgumentException">No candidates, or inputs that do not agree.</exception>
    public static MInferenceHeadPattern[] SearchPatterns(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v,
        IReadOnlyList<MInferenceHeadPattern> candidates, MInferenceOptions? options = null, int sampleRows = 256)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        if (candidates.Count == 0) throw new ArgumentException("At least one candidate pattern is needed.", nameof(candidates));
        foreach (MInferenceHeadPattern c in candidates) c.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(sampleRows, 1);
        options ??= new MInferenceOptions();
        var ctx = new SelectorContext(q, k, v, options.Offsets, options.Scale);
        int tq = ctx.Shape.QLen[0], tk = ctx.Shape.KLen[0], shift = tk - tq;
        int rows = Math.Min(sampleRows, tq);
        var sample = new int[rows];
        for (int r = 0; r < rows; r++) sample[r] = tq - 1 - (int)((long)r * tq / rows);
        var result = new MInferenceHeadPattern[ctx.Shape.Heads];
        var plans = new HybridSparsePlan[candidates.Count];
        for (int c = 0; c < candidates.Count; c++)
        {
            HybridSparsePlan plan = plans[c] = ctx.NewPlan();
            plan.Tokens.Coverage = CoverageOf(options); // recall of what will be computed
            MInferenceHeadPattern candidate = candidates[c];
            ctx.ForEachHead(options.MaxThreads, (s, h) =>
            {
                if (s == 0) Build(ctx, 0, h, candidate, options.LastQueries ?? 64, plan);
            });
        }
        Parallel.For(0, ctx.Shape.Heads, new ParallelOptions { MaxDegreeOfParallelism = options.MaxThreads ?? Environment.ProcessorCount }, h =>
        {
            var covered = new bool[tk];
            float[] qs = new float[(long)rows * ctx.Shape.Dim];
            var positions = new int[rows];
            for (int r = 0; r < rows; r++)
            {
                ctx.QueryRow(0, h, sample[r]).CopyTo(qs.AsSpan(r * ctx.Shape.Dim, ctx.Shape.Dim));
                positions[r] = sample[r] + shift;
            }
            float[] p = SelectorMath.Scores(qs, rows, ctx.Keys(0, h), tk, ctx.Shape.Dim, ctx.Scale);
            SelectorMath.CausalSoftmax(p, rows, tk, positions);
            double best = -1;
            for (int c = 0; c < candidates.Count; c++)
            {
                double recall = 0;
                for (int r = 0; r < rows; r++)
                {
                    plans[c].CoveredKeys(0, h, sample[r], covered);
                    for (int j = 0; j < tk; j++)
                        if (covered[j]) recall += p[(long)r * tk + j];
                }
                if (recall > best)
                {
                    best = recall;
                    result[h] = candidates[c];
                }
            }
        });
        return result;
    }

    // options.Coverage checked here so a bad value names the options, not the plan's setter.
    private static SlashCoverage CoverageOf(MInferenceOptions options) => options.Coverage switch
    {
        null => SlashCoverage.Diagonals,
        SlashCoverage c and (SlashCoverage.Diagonals or SlashCoverage.Blocks) => c,
        SlashCoverage c => throw new ArgumentOutOfRangeException(nameof(options), c, "options.Coverage must be Diagonals or Blocks."),
    };

    /// <summary>The online index build: each head's plan from its pattern and the input.</summary>
    /// <exception cref="ArgumentException">Missing or mis-sized <see cref="MInferenceOptions.Heads"/>, a bad budget, or inputs that disagree.</exception>
    public static HybridSparsePlan BuildPlan(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v, MInferenceOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var ctx = new SelectorContext(q, k, v, options.Offsets, options.Scale);
        IReadOnlyList<MInferenceHeadPattern> heads = options.Heads
            ?? throw new ArgumentException("options.Heads must give one pattern per head (see MInference.SearchPatterns).", nameof(options));
        if (heads.Count != ctx.Shape.Heads)
            throw new ArgumentException($"options.Heads has {heads.Count} patterns; q has {ctx.Shape.Heads} heads (dimension 2).", nameof(options));
        foreach (MInferenceHeadPattern p in heads) p.Validate();
        int lastQueries = options.LastQueries ?? 64;
        if (lastQueries < 1) throw new ArgumentOutOfRangeException(nameof(options), lastQueries, "options.LastQueries must be ≥ 1.");
        HybridSparsePlan plan = ctx.NewPlan();
        plan.Tokens.Coverage = CoverageOf(options);
        ctx.ForEachHead(options.MaxThreads, (s, h) => Build(ctx, s, h, heads[h], lastQueries, plan));
        return plan;
    }

    /// <summary>Builds the plan and runs it; returns the plan and the time spent building it.</summary>
    public static (HybridSparsePlan Plan, double SelectorMs) Forward(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v,
        MInferenceOptions options, TensorSpan<float> output, TensorSpan<float> lse = default)
    {
        var watch = Stopwatch.StartNew();
        HybridSparsePlan plan = BuildPlan(q, k, v, options);
        double ms = watch.Elapsed.TotalMilliseconds;
        plan.Forward(q, k, v, new AttentionOptions { Scale = options.Scale, QueryOffsets = options.Offsets, MaxThreads = options.MaxThreads }, output, lse);
        return (plan, ms);
    }

    private static void Build(SelectorContext ctx, int s, int h, MInferenceHeadPattern pattern, int lastQueries, HybridSparsePlan plan)
    {
        int tq = ctx.Shape.QLen[s], tk = ctx.Shape.KLen[s];
        if (tq == 0 || tk == 0) return;
        switch (pattern.Kind)
        {
            case MInferencePattern.AShape:
                plan.SetBlockHead(s, h, false);
                plan.Tokens.SetVertical(s, h, SelectorMath.Range(0, pattern.Vertical, tk));
                plan.Tokens.SetSlash(s, h, SelectorMath.Range(0, pattern.Slash, tk));
                break;
            case MInferencePattern.VerticalSlash:
            {
                plan.SetBlockHead(s, h, false);
                (float[] vertical, float[] slash) = ctx.LastRowsColumnAndDiagonalMass(s, h, lastQueries);
                for (int j = 0; j < Math.Min(30, tk); j++) vertical[j] = float.PositiveInfinity;
                for (int o = 0; o < Math.Min(100, tk); o++) slash[o] = float.PositiveInfinity;
                plan.Tokens.SetVertical(s, h, SelectorMath.TopK(vertical, pattern.Vertical));
                plan.Tokens.SetSlash(s, h, SelectorMath.TopK(slash, pattern.Slash));
                break;
            }
            default:
            {
                plan.SetBlockHead(s, h, true);
                float[] scores = ctx.PooledBlockScores(s, h, out int qBlocks, out int kBlocks);
                for (int qb = 0; qb < qBlocks; qb++)
                {
                    Span<float> row = scores.AsSpan(qb * kBlocks, kBlocks);
                    int lastKeyBlock = ctx.LastVisibleKeyBlock(s, qb);
                    if (lastKeyBlock < 0) continue;
                    row[(lastKeyBlock + 1)..].Fill(float.NegativeInfinity);
                    foreach (int kb in SelectorMath.TopK(row[..(lastKeyBlock + 1)], pattern.Blocks)) plan.Blocks.Select(s, h, qb, kb);
                    plan.Blocks.Select(s, h, qb, lastKeyBlock);
                }
                break;
            }
        }
    }
}
