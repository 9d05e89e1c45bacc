using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="DELTA"/>; null fields take the defaults given.</summary>
public sealed record DeltaOptions
{
    /// <summary>Salient tokens kept per query block (default 256).</summary>
    public int? TopK { get; init; }

    /// <summary>Initial tokens always kept (default 4).</summary>
    public int? Sinks { get; init; }

    /// <summary>Most recent keys always kept, the query's own included (default 64).</summary>
    public int? Window { get; init; }

    /// <summary>Query rows sharing one selection (default 64); the block's last row scores the tokens.</summary>
    public int? QueryBlockSize { get; init; }
}

/// <summary>
/// The tokens a DELTA selection layer picked: per (sequence, query block), a set of keys shared by every head.
/// Computed once at a selection layer and applied to the sparse layers after it with <see cref="DELTA.Plan(SelectorInput, DeltaSelection)"/>.
/// </summary>
public sealed class DeltaSelection
{
    internal DeltaSelection(TokenSelection tokens, int queryBlockSize, int[] queryLengths, int[] keyLengths)
    {
        Tokens = tokens;
        QueryBlockSize = queryBlockSize;
        QueryLengths = queryLengths;
        KeyLengths = keyLengths;
    }

    /// <summary>The chosen keys (one table shared by all heads).</summary>
    public TokenSelection Tokens { get; }

    /// <summary>Query rows sharing one selection.</summary>
    public int QueryBlockSize { get; }

    internal int[] QueryLengths { get; }

    internal int[] KeyLengths { get; }
}

/// <summary>
/// DELTA, dynamic layer-aware token attention (2025): training-free decoding in three groups of layers — the first
/// layers attend fully, a few selection layers aggregate head-level attention scores to pick the salient tokens, and
/// the later layers attend only to that subset (the full cache is kept). <see cref="Select"/> is the selection layer:
/// for each query block it computes the exact attention probabilities of the block's last query in every head,
/// sums them over heads, and keeps the top-k tokens plus sinks and a recent window; <see cref="Plan(SelectorInput, DeltaSelection)"/>
/// turns the selection into the sparse plan of a later layer (one <see cref="TokenSelection"/> shared by all heads).
/// </summary>
/// <remarks>
/// Deviations: (1) on a prefill, the queries of a block share the selection their last row makes (DELTA decodes one
/// token at a time, where the block is that token); (2) the layer schedule (which layers are full, selecting or
/// sparse) belongs to the model runtime; here one call is one layer, and the runnable method selects and attends in
/// the same layer; (3) causal only.
/// </remarks>
public static class DELTA
{
    /// <summary>The selection layer: scores tokens by head-summed attention and keeps the salient ones.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A top-k or query block below 1, negative sinks or window (the parameter is named).</exception>
    public static DeltaSelection Select(SelectorInput input, DeltaOptions? options = null, float? scale = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new DeltaOptions();
        int topK = options.TopK ?? 256, sinks = options.Sinks ?? 4, window = options.Window ?? 64, qbs = options.QueryBlockSize ?? 64;
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(DeltaOptions.TopK), topK, "Top-k must be ≥ 1 token.");
        if (sinks < 0) throw new ArgumentOutOfRangeException(nameof(DeltaOptions.Sinks), sinks, "Sinks must be ≥ 0.");
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(DeltaOptions.Window), window, "The window must be ≥ 0.");
        if (qbs < 1) throw new ArgumentOutOfRangeException(nameof(DeltaOptions.QueryBlockSize), qbs, "The query block size must be ≥ 1.");
        float sc = SelectorMath.Scale(scale, input.Dim);
        var tokens = new TokenSelection(input, 1, qbs);
        var ql = new int[input.Sequences];
        var kl = new int[input.Sequences];
        for (int s = 0; s < input.Sequences; s++) { ql[s] = input.QueryLength(s); kl[s] = input.KeyLength(s); }
        // Work items: runs of query blocks of one sequence (each block's selection is independent and writes only its
        // own rows of the table), so a single long sequence uses every core (it had been one item per sequence:
        // one core, 67 s at T = 131072 with 8 heads).
        const int blocksPerItem = 8;
        var itemSequence = new List<int>();
        var itemFirst = new List<int>();
        for (int s = 0; s < input.Sequences; s++)
            for (int qb = 0; qb < tokens.QueryBlocks(s); qb += blocksPerItem)
            {
                itemSequence.Add(s);
                itemFirst.Add(qb);
            }
        SelectorMath.ForEach(itemSequence.Count, item =>
        {
            int s = itemSequence[item], tk = kl[s];
            // Rented: at 128k a fresh pair per item was 256 MB of large-object garbage per plan.
            float[] logits = System.Buffers.ArrayPool<float>.Shared.Rent(Math.Max(1, tk));
            float[] importance = System.Buffers.ArrayPool<float>.Shared.Rent(Math.Max(1, tk));
            var chosen = new int[topK];
            try
            {
                for (int qb = itemFirst[item]; qb < Math.Min(itemFirst[item] + blocksPerItem, tokens.QueryBlocks(s)); qb++)
                {
                    int lastRow = Math.Min(ql[s], (qb + 1) * qbs) - 1, firstPos = input.QueryPosition(s, qb * qbs), pos = input.QueryPosition(s, lastRow);
                    int end = Math.Clamp(pos + 1, 0, tk);
                    if (end == 0) continue;
                    Span<float> imp = importance.AsSpan(0, end), lg = logits.AsSpan(0, end);
                    imp.Clear();
                    for (int h = 0; h < input.Heads; h++)
                    {
                        ReadOnlySpan<float> q = input.QueryRow(s, h, lastRow);
                        for (int k = 0; k < end; k++) lg[k] = sc * TensorPrimitives.Dot(q, input.KeyRow(s, h / input.GroupSize, k));
                        SelectorMath.SoftMaxInPlace(lg);
                        TensorPrimitives.Add(imp, lg, imp);
                    }
                    tokens.SelectRange(s, 0, qb, 0, Math.Min(sinks, end));
                    if (window > 0) tokens.SelectRange(s, 0, qb, firstPos - window + 1, end);
                    int n = SelectorMath.TopK(imp, topK, chosen);
                    for (int i = 0; i < n; i++) tokens.Select(s, 0, qb, chosen[i]);
                }
            }
            finally
            {
                System.Buffers.ArrayPool<float>.Shared.Return(logits);
                System.Buffers.ArrayPool<float>.Shared.Return(importance);
            }
        });
        return new DeltaSelection(tokens, qbs, ql, kl);
    }

    /// <summary>A sparse layer's plan from an earlier selection layer's choice (same sequence lengths).</summary>
    /// <exception cref="ArgumentException">A selection made for other lengths.</exception>
    public static SparsePlan Plan(SelectorInput input, DeltaSelection selection)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(selection);
        if (selection.QueryLengths.Length != input.Sequences)
            throw new ArgumentException($"The selection covers {selection.QueryLengths.Length} sequences; the input has {input.Sequences}.", nameof(selection));
        for (int s = 0; s < input.Sequences; s++)
            if (selection.QueryLengths[s] != input.QueryLength(s) || selection.KeyLengths[s] != input.KeyLength(s))
                throw new ArgumentException($"Sequence {s}: the selection was made for {selection.QueryLengths[s]} x {selection.KeyLengths[s]}; the input is {input.QueryLength(s)} x {input.KeyLength(s)}.", nameof(selection));
        return SparsePlan.Timed(() => new SparsePlan(input, Masks.And(Masks.Causal, selection.Tokens.ToMask()), true, 0));
    }

    /// <summary>Selects in this layer and plans it (the runnable method's single-layer use).</summary>
    public static SparsePlan Plan(SelectorInput input, DeltaOptions? options = null, float? scale = null)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        DeltaSelection selection = Select(input, options, scale);
        SparsePlan plan = Plan(input, selection);
        plan.SelectorMilliseconds = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        return plan;
    }
}

/// <summary><c>attend run --method delta</c>: <see cref="DELTA"/> (selection and sparse attention in one layer).</summary>
public sealed class DeltaMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("delta", "sparse", "method",
        "DELTA: Dynamic Layer-Aware Token Attention for Efficient Long-Context Reasoning (2025)", ["cpu", "cuda"], "implemented",
        "a selection layer sums head-level attention to pick salient tokens (+ sinks, window) that later layers attend to")
    {
        Parameters =
        [
            new("top-k", "int", "256", "salient tokens per query block"),
            new("sinks", "int", "4", "initial tokens kept"),
            new("window", "int", "64", "recent keys kept"),
            new("query-block", "int", "64", "query rows sharing one selection"),
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new DeltaOptions
        {
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            Sinks = RoutingAdapter.OptionalInt(arguments, "sinks", 0),
            Window = RoutingAdapter.OptionalInt(arguments, "window", 0),
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, DELTA.Plan(SelectorInput.From(inputs), options, scale), scale);
    }
}
