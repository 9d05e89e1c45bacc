using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="LongHeads"/>; null fields take the defaults given.</summary>
public sealed record LongHeadsOptions
{
    /// <summary>Tokens per chunk (default 64).</summary>
    public int? ChunkSize { get; init; }

    /// <summary>Chunks each head attends per query block, the first and the own chunk included (default 8; at least 2).</summary>
    public int? Chunks { get; init; }

    /// <summary>Query rows sharing one choice (default: the chunk size).</summary>
    public int? QueryBlockSize { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// LongHeads (Lu, Zhou, He, Zhao, Ji, Gui, Zhang, Huang, "LongHeads: Multi-Head Attention is Secretly a Long Context
/// Processor", 2024): training-free; the context is cut into chunks and every head picks its own chunks by the
/// correlation of its query with a chunk representation built from the chunk's keys, always keeping the first
/// chunk (attention sink) and the local chunk, so each head attends a pretrained-length window while different
/// heads cover different parts of the context. The plan is a per-head <see cref="BlockSelection"/>.
/// </summary>
/// <remarks>
/// Deviations: (1) the chunk representation is the chunk's keys weighted by the softmax of the chunk's own mean
/// query against them (<c>Σⱼ softmax(scale·q̄_c·kⱼ) kⱼ</c>; from the paper's description of a query-aware summary of
/// the chunk's keys, written without the authors' code); chunks without queries (decode, Tq &lt; Tk) use the mean key;
/// (2) queries of a block share one choice made with their mean query (the paper chooses per token at decode);
/// (3) no position remapping: the paper re-indexes positions inside the pretrained length for RoPE models, which is
/// a property of the model's position encoding, outside this kernel (Q and K arrive already rotated).
/// </remarks>
public static class LongHeads
{
    /// <summary>Chooses chunks per head and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A chunk size or query block below 1, or fewer than 2 chunks (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, LongHeadsOptions? options = null, float? scale = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new LongHeadsOptions();
        int chunk = options.ChunkSize ?? 64, chunks = options.Chunks ?? 8, qbs = options.QueryBlockSize ?? chunk;
        if (chunk < 1) throw new ArgumentOutOfRangeException(nameof(LongHeadsOptions.ChunkSize), chunk, "The chunk size must be ≥ 1.");
        if (chunks < 2) throw new ArgumentOutOfRangeException(nameof(LongHeadsOptions.Chunks), chunks, "Each head attends ≥ 2 chunks (the first and the own one).");
        if (qbs < 1) throw new ArgumentOutOfRangeException(nameof(LongHeadsOptions.QueryBlockSize), qbs, "The query block size must be ≥ 1.");
        bool causal = options.Causal ?? true;
        float sc = SelectorMath.Scale(scale, input.Dim);
        return SparsePlan.Timed(() =>
        {
            BlockSelection sel = input.Offsets is SeqOffsets o
                ? new BlockSelection(o, o, input.Heads, qbs, chunk)
                : new BlockSelection(input.Batch, input.Heads, input.TotalQueryLength, input.TotalKeyLength, qbs, chunk);
            SelectorMath.ForEach(input.Sequences * input.Heads, item =>
            {
                int s = item / input.Heads, h = item % input.Heads, d = input.Dim, nk = sel.KeyBlocks(s);
                if (nk == 0) return;
                float[] reps = Representations(input, s, h, chunk, sc);
                var mean = new float[d];
                var scores = new float[nk];
                var chosen = new int[chunks];
                for (int qb = 0; qb < sel.QueryBlocks(s); qb++)
                {
                    int visible = SelectorMath.VisibleKeyBlocks(input, s, qb, qbs, chunk, causal);
                    if (visible == 0) continue;
                    int lastRow = Math.Min(input.QueryLength(s), (qb + 1) * qbs) - 1;
                    int own = Math.Clamp(input.QueryPosition(s, lastRow), 0, input.KeyLength(s) - 1) / chunk;
                    mean.AsSpan().Clear();
                    for (int r = qb * qbs; r <= lastRow; r++) TensorPrimitives.Add(mean, input.QueryRow(s, h, r), mean);
                    SelectorScores.Dots(mean, reps, nk, scores);
                    scores.AsSpan(visible).Fill(float.NegativeInfinity);
                    scores[0] = float.NegativeInfinity;
                    if (own < nk) scores[own] = float.NegativeInfinity;
                    sel.Select(s, h, qb, 0);
                    if (own < visible || !causal) sel.Select(s, h, qb, Math.Min(own, nk - 1));
                    int n = SelectorMath.TopK(scores, chunks - 2, chosen);
                    for (int i = 0; i < n; i++) sel.Select(s, h, qb, chosen[i]);
                }
            });
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }

    // Per key chunk: Σⱼ softmax(scale·q̄·kⱼ) kⱼ with q̄ the mean query of the rows whose positions fall in the chunk.
    private static float[] Representations(SelectorInput x, int s, int h, int chunk, float scale)
    {
        int tk = x.KeyLength(s), tq = x.QueryLength(s), shift = tk - tq, d = x.Dim, kvh = h / x.GroupSize;
        int n = (tk + chunk - 1) / chunk;
        var reps = new float[n * d];
        var qbar = new float[d];
        var logits = new float[chunk];
        for (int c = 0; c < n; c++)
        {
            int k0 = c * chunk, k1 = Math.Min(tk, k0 + chunk), rows = 0;
            qbar.AsSpan().Clear();
            for (int p = k0; p < k1; p++)
                if (p - shift >= 0 && p - shift < tq) { TensorPrimitives.Add(qbar, x.QueryRow(s, h, p - shift), qbar); rows++; }
            Span<float> rep = reps.AsSpan(c * d, d);
            if (rows == 0)
            {
                for (int k = k0; k < k1; k++) TensorPrimitives.Add(rep, x.KeyRow(s, kvh, k), rep);
                TensorPrimitives.Multiply(rep, 1f / (k1 - k0), rep);
                continue;
            }
            TensorPrimitives.Multiply(qbar, scale / rows, qbar);
            for (int k = k0; k < k1; k++) logits[k - k0] = TensorPrimitives.Dot(qbar, x.KeyRow(s, kvh, k));
            SelectorMath.SoftMaxInPlace(logits.AsSpan(0, k1 - k0));
            for (int k = k0; k < k1; k++) TensorPrimitives.MultiplyAdd(x.KeyRow(s, kvh, k), logits[k - k0], rep, rep);
        }
        return reps;
    }
}

/// <summary><c>attend run --method longheads</c>: <see cref="LongHeads"/> on named tensors.</summary>
public sealed class LongHeadsMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("longheads", "sparse", "method",
        "LongHeads: Multi-Head Attention is Secretly a Long Context Processor (Lu et al., 2024)", ["cpu", "cuda"], "implemented",
        "each head picks its own chunks (first + own + top by query/chunk-summary correlation); exact attention on them")
    {
        Parameters =
        [
            new("chunk", "int", "64", "tokens per chunk"),
            new("chunks", "int", "8", "chunks per head and query block, first and own included"),
            new("query-block", "int", "chunk", "query rows sharing one choice"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new LongHeadsOptions
        {
            ChunkSize = RoutingAdapter.OptionalInt(arguments, "chunk", 1),
            Chunks = RoutingAdapter.OptionalInt(arguments, "chunks", 2),
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, LongHeads.Plan(SelectorInput.From(inputs), options, scale), scale);
    }
}
