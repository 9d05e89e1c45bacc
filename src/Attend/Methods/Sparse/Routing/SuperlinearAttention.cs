using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="SuperlinearAttention"/>; null fields take the defaults given.</summary>
public sealed record SuperlinearOptions
{
    /// <summary>Search steps N (default 2: one span search, then attention in the picked spans); the cost is O(L^(1+1/N)).</summary>
    public int? Steps { get; init; }

    /// <summary>Spans kept at each search step (default 8).</summary>
    public int? TopK { get; init; }

    /// <summary>Query rows sharing one search (default 64).</summary>
    public int? QueryBlockSize { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// Superlinear multi-step attention ("Superlinear Multi-Step Attention", 2025): causal attention recast as an N-step
/// search. With span lengths Sₙ = L^((N−n)/N), step 1 scores every span of length S₁ and keeps the top-k, each later
/// step splits the kept spans into spans of the next length and keeps the top-k of those, and the last step is
/// exact attention over the tokens of the kept spans plus the query's own span — O(L^(1+1/N)) in all, and no position
/// is excluded in advance. For N = 2 this is the paper's span search followed by span attention. The plan is a
/// <see cref="BlockSelection"/> whose key cells are the finest spans.
/// </summary>
/// <remarks>
/// Deviations: (1) a span is scored by the query block's mean query against the span's mean key (prefix sums make
/// any span's mean O(D)); the paper learns its span scoring end to end; (2) queries of a block share the search;
/// (3) the finest span length is at least 1 and rounded, so lengths are the nearest integers to L^((N−n)/N).
/// </remarks>
public static class SuperlinearAttention
{
    /// <summary>Searches and freezes the plan.</summary>
    /// <remarks>
    /// On a packed input the span lengths come from the longest sequence (one <see cref="BlockSelection"/> block size for
    /// all); the runnable adapter instead plans each sequence alone (<see cref="PackedBatch"/>), so a packed batch gives
    /// each sequence what it gives alone.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">Steps below 2, or a top-k or query block below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, SuperlinearOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new SuperlinearOptions();
        int steps = options.Steps ?? 2, topK = options.TopK ?? 8, qbs = options.QueryBlockSize ?? 64;
        if (steps < 2) throw new ArgumentOutOfRangeException(nameof(SuperlinearOptions.Steps), steps, "At least 2 steps (a search, then attention).");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(SuperlinearOptions.TopK), topK, "Top-k must be ≥ 1 span.");
        if (qbs < 1) throw new ArgumentOutOfRangeException(nameof(SuperlinearOptions.QueryBlockSize), qbs, "The query block size must be ≥ 1.");
        bool causal = options.Causal ?? true;
        int maxKeys = 1;
        for (int s = 0; s < input.Sequences; s++) maxKeys = Math.Max(maxKeys, input.KeyLength(s));
        // Span lengths of steps 1..N−1, coarse to fine; each divides the one before so a span splits evenly.
        var lengths = new int[steps - 1];
        for (int n = steps - 1; n >= 1; n--)
        {
            int ideal = Math.Max(1, (int)Math.Round(Math.Pow(maxKeys, (double)(steps - n) / steps)));
            lengths[n - 1] = n == steps - 1 ? ideal : Math.Max(lengths[n], ideal / lengths[n] * lengths[n]);
        }
        int finest = lengths[^1];
        return SparsePlan.Timed(() =>
        {
            BlockSelection sel = input.Offsets is SeqOffsets o
                ? new BlockSelection(o, o, input.Heads, qbs, finest)
                : new BlockSelection(input.Batch, input.Heads, input.TotalQueryLength, input.TotalKeyLength, qbs, finest);
            SelectorMath.ForEach(input.Sequences * input.Heads, item => Search(input, item / input.Heads, item % input.Heads, lengths, topK, qbs, causal, sel));
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }

    private static void Search(SelectorInput x, int s, int h, int[] lengths, int topK, int qbs, bool causal, BlockSelection sel)
    {
        int tk = x.KeyLength(s), d = x.Dim, kvh = h / x.GroupSize, finest = lengths[^1];
        if (tk == 0) return;
        var prefix = new float[(tk + 1) * d]; // prefix[t] = Σ of the first t keys
        for (int t = 0; t < tk; t++) TensorPrimitives.Add(prefix.AsSpan(t * d, d), x.KeyRow(s, kvh, t), prefix.AsSpan((t + 1) * d, d));
        var mean = new float[d];
        var span = new float[d];
        var starts = new List<int>();
        var scores = new List<float>();
        var kept = new int[topK];
        for (int qb = 0; qb < sel.QueryBlocks(s); qb++)
        {
            int r0 = qb * qbs, r1 = Math.Min(x.QueryLength(s), r0 + qbs);
            int end = causal ? Math.Clamp(x.QueryPosition(s, r1 - 1) + 1, 0, tk) : tk; // keys [0, end) are candidates
            if (end == 0) continue;
            mean.AsSpan().Clear();
            for (int r = r0; r < r1; r++) TensorPrimitives.Add(mean, x.QueryRow(s, h, r), mean);
            // Step 1: every span of the coarsest length.
            var current = new List<int>();
            for (int a = 0; a < end; a += lengths[0]) current.Add(a);
            for (int step = 0; ; step++)
            {
                int len = lengths[step];
                scores.Clear();
                foreach (int a in current)
                {
                    int b = Math.Min(a + len, end);
                    TensorPrimitives.Subtract(prefix.AsSpan(b * d, d), prefix.AsSpan(a * d, d), span);
                    scores.Add(TensorPrimitives.Dot(mean, span) / (b - a));
                }
                int n = SelectorMath.TopK(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(scores), topK, kept);
                if (step == lengths.Length - 1)
                {
                    for (int i = 0; i < n; i++) sel.Select(s, h, qb, current[kept[i]] / finest);
                    break;
                }
                starts.Clear();
                for (int i = 0; i < n; i++)
                    for (int a = current[kept[i]]; a < Math.Min(current[kept[i]] + len, end); a += lengths[step + 1]) starts.Add(a);
                current = [.. starts];
            }
            sel.Select(s, h, qb, (end - 1) / finest); // the query's own span
        }
    }
}

/// <summary><c>attend run --method superlinear</c>: <see cref="SuperlinearAttention"/> on named tensors.</summary>
public sealed class SuperlinearMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("superlinear", "sparse", "method",
        "Superlinear Multi-Step Attention (2025)", ["cpu", "cuda"], "implemented",
        "N-step span search (spans of L^((N-n)/N), top-k per step, mean-key scores), then exact attention in the picked spans")
    {
        Parameters =
        [
            new("steps", "int", "2", "search steps N (cost O(L^(1+1/N)))"),
            new("top-k", "int", "8", "spans kept per step"),
            new("query-block", "int", "64", "query rows sharing one search"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        // A packed batch is planned one sequence at a time: the span lengths depend on the sequence.
        if (inputs.Offsets is not null) return PackedBatch.RunEachSequence(inputs, arguments, RoutingAdapter.Causal(arguments), Run);
        var options = new SuperlinearOptions
        {
            Steps = RoutingAdapter.OptionalInt(arguments, "steps", 2),
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, SuperlinearAttention.Plan(SelectorInput.From(inputs), options), scale);
    }
}
