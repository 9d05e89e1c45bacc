using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="BiFormer"/>; null fields take the defaults given.</summary>
public sealed record BiFormerOptions
{
    /// <summary>Tokens per region (default 64, the kernel tile).</summary>
    public int? RegionSize { get; init; }

    /// <summary>Regions each query region routes to (default 8).</summary>
    public int? TopK { get; init; }

    /// <summary>Intersect with the causal mask (default true); the paper is bidirectional (vision).</summary>
    public bool? Causal { get; init; }

    /// <summary>Route each head separately (default false: one routing for all heads, as in the paper).</summary>
    public bool? PerHead { get; init; }
}

/// <summary>
/// BiFormer bi-level routing attention (Zhu, Wang, Ke, Zhang, Lau, "BiFormer: Vision Transformer with Bi-Level
/// Routing Attention", CVPR 2023). Coarse level: the sequence is cut into regions, region queries and keys are the
/// mean of their tokens, the region affinity is <c>A = Q̄ K̄ᵀ</c> and each query region keeps its top-k key regions;
/// fine level: token-to-token softmax attention over the keys of the routed regions (here the exact block-sparse
/// kernel over a <see cref="BlockSelection"/> of region × region cells, no gather).
/// </summary>
/// <remarks>
/// Deviations from the paper: (1) 1D regions of a token sequence instead of S × S windows of a feature map; (2)
/// causal by default for the long-context bench (set <see cref="BiFormerOptions.Causal"/> false for the paper's
/// bidirectional form), and then a query region may only route to key regions it can see and always keeps its own
/// (diagonal) region, without which its first rows could see nothing; (3) the local context enhancement (a
/// depthwise convolution added to the output) is a separate layer and is left out; (4) with grouped-query inputs the
/// shared routing sums the per-head affinities (the paper's affinity over all channels), each query head using its
/// group's key head; <see cref="BiFormerOptions.PerHead"/> routes heads separately.
/// </remarks>
public static class BiFormer
{
    /// <summary>Routes and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A region size or top-k below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, BiFormerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new BiFormerOptions();
        int region = options.RegionSize ?? 64, topK = options.TopK ?? 8;
        if (region < 1) throw new ArgumentOutOfRangeException(nameof(BiFormerOptions.RegionSize), region, "The region size must be ≥ 1.");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(BiFormerOptions.TopK), topK, "Top-k must be ≥ 1 region.");
        bool causal = options.Causal ?? true, perHead = options.PerHead ?? false;
        return SparsePlan.Timed(() =>
        {
            int selHeads = perHead ? input.Heads : 1;
            BlockSelection sel = input.Offsets is SeqOffsets o
                ? new BlockSelection(o, o, selHeads, region, region)
                : new BlockSelection(input.Batch, selHeads, input.TotalQueryLength, input.TotalKeyLength, region, region);
            SelectorMath.ForEach(input.Sequences * selHeads, item =>
            {
                int s = item / selHeads, sh = item % selHeads;
                Route(input, s, sh, perHead, region, topK, causal, sel);
            });
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }

    private static void Route(SelectorInput x, int s, int selHead, bool perHead, int region, int topK, bool causal, BlockSelection sel)
    {
        int nq = sel.QueryBlocks(s), nk = sel.KeyBlocks(s), d = x.Dim;
        if (nq == 0 || nk == 0) return;
        // Region affinity A[qr, kr], summed over the heads this routing serves.
        var affinity = new float[nq * nk];
        int h0 = perHead ? selHead : 0, h1 = perHead ? selHead + 1 : x.Heads;
        var pooledKeys = new float[x.KvHeads][];
        for (int h = h0; h < h1; h++)
        {
            int kvh = h / x.GroupSize;
            pooledKeys[kvh] ??= SelectorMath.PoolKeys(x, s, kvh, region);
            float[] pq = SelectorMath.PoolQueries(x, s, h, region);
            for (int qr = 0; qr < nq; qr++)
                for (int kr = 0; kr < nk; kr++)
                    affinity[qr * nk + kr] += TensorPrimitives.Dot(SelectorMath.Row(pq, qr, d), SelectorMath.Row(pooledKeys[kvh], kr, d));
        }
        var chosen = new int[topK];
        for (int qr = 0; qr < nq; qr++)
        {
            Span<float> row = affinity.AsSpan(qr * nk, nk);
            int visible = SelectorMath.VisibleKeyBlocks(x, s, qr, region, region, causal);
            if (visible == 0) continue;
            row[visible..].Fill(float.NegativeInfinity);
            int n = SelectorMath.TopK(row, topK, chosen);
            for (int i = 0; i < n; i++) sel.Select(s, selHead, qr, chosen[i]);
            if (causal) sel.Select(s, selHead, qr, visible - 1); // the region holding the diagonal
        }
    }
}

/// <summary><c>attend run --method biformer</c>: <see cref="BiFormer"/> on named tensors.</summary>
public sealed class BiFormerMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("biformer", "sparse", "method",
        "BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023)", ["cpu", "cuda"], "implemented",
        "region top-k routing from mean-pooled queries/keys, then exact attention over the routed regions")
    {
        Parameters =
        [
            new("region", "int", "64", "tokens per region"),
            new("top-k", "int", "8", "key regions per query region"),
            new("per-head", "bool", "false", "route each head separately"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new BiFormerOptions
        {
            RegionSize = RoutingAdapter.OptionalInt(arguments, "region", 1),
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            PerHead = arguments.GetBool("per-head", false),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, BiFormer.Plan(SelectorInput.From(inputs), options), scale);
    }
}
