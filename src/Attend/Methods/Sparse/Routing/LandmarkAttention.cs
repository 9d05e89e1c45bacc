namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="LandmarkAttention"/>; null fields take the defaults given.</summary>
public sealed record LandmarkOptions
{
    /// <summary>Tokens per block (each block has one landmark; default 64).</summary>
    public int? BlockSize { get; init; }

    /// <summary>Blocks retrieved per query besides its own (default 4).</summary>
    public int? TopK { get; init; }

    /// <summary>Query rows sharing one retrieval (default 1: every query retrieves for itself, as at inference).</summary>
    public int? QueryBlockSize { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// Landmark attention at inference (Mohtashami, Jaggi, "Landmark Attention: Random-Access Infinite Context Length for
/// Transformers", NeurIPS 2023): the context is cut into blocks, each represented by a landmark; a query scores the
/// landmarks, retrieves its top-k blocks and attends to their tokens and to its own (current) block. The plan is a
/// <see cref="BlockSelection"/> with per-query rows and block-wide key cells, run by the exact kernel.
/// </summary>
/// <remarks>
/// Deviations: (1) no trained landmark token: a block's landmark key is the mean of its keys (the paper fine-tunes a
/// landmark token whose key learns to represent the block, with a grouped softmax during training); (2) retrieved
/// blocks are attended with one ordinary softmax over the union (the paper's inference mode "top-k retrieval" does
/// the same; its grouped-softmax gating weight is training-time); (3) with per-query retrieval on a prefill the
/// 64-row kernel tiles visit the union of their rows' blocks, so kernel time follows that union, not the density.
/// </remarks>
public static class LandmarkAttention
{
    /// <summary>Retrieves and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A block size, query block size or top-k below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, LandmarkOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new LandmarkOptions();
        int block = options.BlockSize ?? 64, topK = options.TopK ?? 4, qbs = options.QueryBlockSize ?? 1;
        if (block < 1) throw new ArgumentOutOfRangeException(nameof(LandmarkOptions.BlockSize), block, "The block size must be ≥ 1.");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(LandmarkOptions.TopK), topK, "Top-k must be ≥ 1 block.");
        if (qbs < 1) throw new ArgumentOutOfRangeException(nameof(LandmarkOptions.QueryBlockSize), qbs, "The query block size must be ≥ 1.");
        bool causal = options.Causal ?? true;
        return SparsePlan.Timed(() =>
        {
            BlockSelection sel = input.Offsets is SeqOffsets o
                ? new BlockSelection(o, o, input.Heads, qbs, block)
                : new BlockSelection(input.Batch, input.Heads, input.TotalQueryLength, input.TotalKeyLength, qbs, block);
            // Landmarks once per (sequence, KV head); then work items of (sequence, head, run of query blocks), so a
            // long single sequence fills every core (one item per (sequence, head) left half of 16 cores idle at H = 8),
            // each block writing only its own row of the selection.
            var landmarkSets = new float[input.Sequences * input.KvHeads][];
            SelectorMath.ForEach(landmarkSets.Length, item =>
            {
                int s = item / input.KvHeads;
                landmarkSets[item] = sel.KeyBlocks(s) == 0 ? [] : SelectorMath.PoolKeys(input, s, item % input.KvHeads, block);
            });
            int chunk = Math.Max(1, 1024 / qbs); // query rows per item: 1024
            var items = new List<(int S, int H, int First)>();
            for (int s = 0; s < input.Sequences; s++)
                for (int h = 0; h < input.Heads; h++)
                    for (int qb = 0; qb < sel.QueryBlocks(s); qb += chunk) items.Add((s, h, qb));
            SelectorMath.ForEach(items.Count, item =>
            {
                (int s, int h, int first) = items[item];
                int nk = sel.KeyBlocks(s);
                if (nk == 0) return;
                float[] landmarks = landmarkSets[s * input.KvHeads + h / input.GroupSize];
                var scores = new float[nk];
                var best = new float[nk];
                var chosen = new int[topK];
                for (int qb = first; qb < Math.Min(first + chunk, sel.QueryBlocks(s)); qb++)
                {
                    int visible = SelectorMath.VisibleKeyBlocks(input, s, qb, qbs, block, causal);
                    if (visible == 0) continue;
                    // The own block: the one holding the cell's last position (causal), which is always attended.
                    int lastRow = Math.Min(input.QueryLength(s), (qb + 1) * qbs) - 1;
                    int own = Math.Clamp(input.QueryPosition(s, lastRow), 0, input.KeyLength(s) - 1) / block;
                    best.AsSpan(0, nk).Fill(float.NegativeInfinity);
                    for (int r = qb * qbs; r <= lastRow; r++)
                    {
                        SelectorScores.Dots(input.QueryRow(s, h, r), landmarks, nk, scores);
                        for (int b = 0; b < nk; b++) best[b] = Math.Max(best[b], scores[b]);
                    }
                    best.AsSpan(visible, nk - visible).Fill(float.NegativeInfinity);
                    if (own < nk) best[own] = float.NegativeInfinity;
                    int n = SelectorMath.TopK(best.AsSpan(0, nk), topK, chosen);
                    for (int i = 0; i < n; i++) sel.Select(s, h, qb, chosen[i]);
                    if (own < visible || !causal) sel.Select(s, h, qb, Math.Min(own, nk - 1));
                }
            });
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }
}

/// <summary><c>attend run --method landmark</c>: <see cref="LandmarkAttention"/> on named tensors.</summary>
public sealed class LandmarkMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("landmark", "sparse", "method",
        "Landmark Attention: Random-Access Infinite Context Length for Transformers (Mohtashami, Jaggi, NeurIPS 2023)", ["cpu", "cuda"], "implemented",
        "each query scores block landmarks (mean keys), retrieves its top-k blocks plus its own; exact attention on them")
    {
        Parameters =
        [
            new("block", "int", "64", "tokens per block"),
            new("top-k", "int", "4", "blocks retrieved per query"),
            new("query-block", "int", "1", "query rows sharing one retrieval"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new LandmarkOptions
        {
            BlockSize = RoutingAdapter.OptionalInt(arguments, "block", 1),
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, LandmarkAttention.Plan(SelectorInput.From(inputs), options), scale);
    }
}
