using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="SEA"/>; null fields take the defaults given.</summary>
public sealed record SeaOptions
{
    /// <summary>Query rows sharing one selection (default 64; 1 selects per query, as the paper).</summary>
    public int? QueryBlockSize { get; init; }

    /// <summary>Keys per selected unit (default 64).</summary>
    public int? KeyBlockSize { get; init; }

    /// <summary>Key blocks kept per query block (default 8).</summary>
    public int? TopK { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// SEA, sparse attention with an estimated attention mask (Lee, Kim, Hwang, "SEA: Sparse Linear Attention with
/// Estimated Attention Mask", ICLR 2024): a kernel-based linear attention estimates the attention matrix at linear
/// cost, the per-query top-k of the estimate becomes the sparse mask, and exact softmax attention runs on it.
/// Here the linear attention is the second-order Taylor kernel <c>φ(q)·φ(k) = 1 + s + s²/2</c> with
/// <c>s = scale·q·k</c> (the feature map of Based), summed per key block: the estimated mass of block b for query i
/// is <c>φ(qᵢ)·Σ_{j∈b} φ(kⱼ) / φ(qᵢ)·Σ_{visible j} φ(kⱼ)</c>, computed from per-block sums of 1, k and k·kᵀ without
/// forming φ; a query block keeps the top-k blocks by the masses summed over its rows (plus its diagonal block when
/// causal).
/// </summary>
/// <remarks>
/// Deviations: (1) SEA trains its estimator (a Performer followed by a decoder, distilled from the teacher's
/// attention) and outputs a compressed attention matrix; here the estimate is an untrained linear-attention kernel.
/// Performer's positive random features were tried first and dropped: without training their estimate of large
/// logits (stripes, sinks) is dominated by the −|k|²/2 term and ranked blocks worse than a local guess; the Taylor
/// kernel is deterministic and monotone in the logit above −1; (2) the mask is block-level (key blocks, query blocks
/// sharing a selection) for the block-sparse kernel; query-block 1 gives per-query selection; (3) the estimated
/// matrix is not returned (the paper keeps it for interpretability). Cost: O(T·D²) per head.
/// </remarks>
public static class SEA
{
    /// <summary>Estimates, selects and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A block size or top-k below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, SeaOptions? options = null, float? scale = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new SeaOptions();
        int bq = options.QueryBlockSize ?? 64, bk = options.KeyBlockSize ?? 64, topK = options.TopK ?? 8;
        if (bq < 1) throw new ArgumentOutOfRangeException(nameof(SeaOptions.QueryBlockSize), bq, "The query block size must be ≥ 1.");
        if (bk < 1) throw new ArgumentOutOfRangeException(nameof(SeaOptions.KeyBlockSize), bk, "The key block size must be ≥ 1.");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(SeaOptions.TopK), topK, "Top-k must be ≥ 1 block.");
        bool causal = options.Causal ?? true;
        float sc = SelectorMath.Scale(scale, input.Dim);
        return SparsePlan.Timed(() =>
        {
            BlockSelection sel = input.Offsets is SeqOffsets o
                ? new BlockSelection(o, o, input.Heads, bq, bk)
                : new BlockSelection(input.Batch, input.Heads, input.TotalQueryLength, input.TotalKeyLength, bq, bk);
            SelectorMath.ForEach(input.Sequences * input.Heads, item =>
                Select(input, item / input.Heads, item % input.Heads, sc, bq, bk, topK, causal, sel));
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }

    private static void Select(SelectorInput x, int s, int h, float scale, int bq, int bk, int topK, bool causal, BlockSelection sel)
    {
        int tk = x.KeyLength(s), nk = sel.KeyBlocks(s), d = x.Dim, dd = d * d, kvh = h / x.GroupSize;
        if (nk == 0) return;
        float root = MathF.Sqrt(scale);
        // Per key block: count, Σ k', Σ k'k'ᵀ (k' = √scale·k), and their prefix sums over blocks.
        var count = new float[nk + 1];
        var first = new float[(nk + 1) * d];
        var second = new float[(nk + 1) * dd];
        var k1 = new float[d];
        for (int t = 0; t < tk; t++)
        {
            int b = t / bk + 1; // row b of the per-block sums is block b − 1; row 0 stays zero for the prefix
            TensorPrimitives.Multiply(x.KeyRow(s, kvh, t), root, k1);
            count[b]++;
            TensorPrimitives.Add(first.AsSpan(b * d, d), k1, first.AsSpan(b * d, d));
            for (int i = 0; i < d; i++) TensorPrimitives.MultiplyAdd(k1, k1[i], second.AsSpan(b * dd + i * d, d), second.AsSpan(b * dd + i * d, d));
        }
        var prefixCount = new float[nk + 1];
        var prefixFirst = new float[(nk + 1) * d];
        var prefixSecond = new float[(nk + 1) * dd];
        for (int b = 1; b <= nk; b++)
        {
            prefixCount[b] = prefixCount[b - 1] + count[b];
            TensorPrimitives.Add(prefixFirst.AsSpan((b - 1) * d, d), first.AsSpan(b * d, d), prefixFirst.AsSpan(b * d, d));
            TensorPrimitives.Add(prefixSecond.AsSpan((b - 1) * dd, dd), second.AsSpan(b * dd, dd), prefixSecond.AsSpan(b * dd, dd));
        }
        var q1 = new float[d];
        var tmp = new float[d];
        var vSum = new float[d];
        var mSum = new float[dd];
        var scores = new float[nk];
        var chosen = new int[topK];
        for (int qb = 0; qb < sel.QueryBlocks(s); qb++)
        {
            int visible = SelectorMath.VisibleKeyBlocks(x, s, qb, bq, bk, causal);
            if (visible == 0) continue;
            // Σᵢ φ(qᵢ)/Zᵢ, kept as (a, v, M) for φ(q) = [1, q', q'q'ᵀ/√2] against the per-block sums.
            float a = 0;
            vSum.AsSpan().Clear();
            mSum.AsSpan().Clear();
            ReadOnlySpan<float> visFirst = prefixFirst.AsSpan(visible * d, d), visSecond = prefixSecond.AsSpan(visible * dd, dd);
            for (int r = qb * bq; r < Math.Min(x.QueryLength(s), (qb + 1) * bq); r++)
            {
                TensorPrimitives.Multiply(x.QueryRow(s, h, r), root, q1);
                for (int i = 0; i < d; i++) tmp[i] = TensorPrimitives.Dot(visSecond.Slice(i * d, d), q1);
                float z = prefixCount[visible] + TensorPrimitives.Dot(q1, visFirst) + 0.5f * TensorPrimitives.Dot(q1, tmp);
                if (!(z > 0) || !float.IsFinite(z)) continue;
                float w = 1f / z;
                a += w;
                TensorPrimitives.MultiplyAdd(q1, w, vSum, vSum);
                for (int i = 0; i < d; i++) TensorPrimitives.MultiplyAdd(q1, w * q1[i], mSum.AsSpan(i * d, d), mSum.AsSpan(i * d, d));
            }
            for (int b = 0; b < nk; b++)
                scores[b] = b < visible
                    ? a * count[b + 1] + TensorPrimitives.Dot(vSum, first.AsSpan((b + 1) * d, d)) + 0.5f * TensorPrimitives.Dot(mSum, second.AsSpan((b + 1) * dd, dd))
                    : float.NegativeInfinity;
            int n = SelectorMath.TopK(scores, topK, chosen);
            for (int i = 0; i < n; i++) sel.Select(s, h, qb, chosen[i]);
            if (causal) sel.Select(s, h, qb, visible - 1);
        }
    }
}

/// <summary><c>attend run --method sea</c>: <see cref="SEA"/> on named tensors.</summary>
public sealed class SeaMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("sea", "sparse", "method",
        "SEA: Sparse Linear Attention with Estimated Attention Mask (Lee, Kim, Hwang, ICLR 2024)", ["cpu", "cuda"], "implemented",
        "a linear-attention (Taylor kernel) estimate of each key block's attention mass; top-k blocks, then exact attention")
    {
        Parameters =
        [
            new("query-block", "int", "64", "query rows sharing a selection (1: per query)"),
            new("key-block", "int", "64", "keys per selected unit"),
            new("top-k", "int", "8", "key blocks per query block"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new SeaOptions
        {
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
            KeyBlockSize = RoutingAdapter.OptionalInt(arguments, "key-block", 1),
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, SEA.Plan(SelectorInput.From(inputs), options, scale), scale);
    }
}
