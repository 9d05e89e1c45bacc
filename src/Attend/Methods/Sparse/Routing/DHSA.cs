using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="DHSA"/>; null fields take the defaults given.</summary>
public sealed record DhsaOptions
{
    /// <summary>Average chunk length the boundaries aim at (default 64); chunks are between half and twice it.</summary>
    public int? ChunkSize { get; init; }

    /// <summary>Keys each query chunk may attend (default 512): whole key chunks in order of similarity until this budget.</summary>
    public int? TokenBudget { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// DHSA, dynamic hierarchical sparse attention (Xiong et al., "Long-Context Modeling Made Easy: Dynamic Hierarchical
/// Sparse Attention for On-Device LLMs", 2025): the sequence is cut into variable-length chunks, each represented
/// by the mean of its tokens times √(its length); the chunk-level query–key similarity is upsampled to token level
/// and each query keeps its highest-scoring keys. Here a query chunk keeps whole key chunks in order of similarity
/// until <see cref="DhsaOptions.TokenBudget"/> keys, plus its own chunk; the plan is a <see cref="SegmentSelection"/>.
/// </summary>
/// <remarks>
/// Deviations: (1) the paper predicts chunk boundaries with a small trained network; here (training-free) a
/// boundary is placed where adjacent keys are least similar (lowest cosine, summed over key heads) within
/// [½, 2]× the target chunk size; (2) the upsampled token importance is constant on a chunk pair, so "top tokens"
/// becomes "top chunks until the budget" (the last chunk taken whole); (3) queries of one chunk share the
/// selection; (4) the query chunk's own chunk is always kept, so no causal row is empty.
/// </remarks>
public static class DHSA
{
    /// <summary>Chunks, scores and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A chunk size below 2 or a budget below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, DhsaOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new DhsaOptions();
        int chunk = options.ChunkSize ?? 64, budget = options.TokenBudget ?? 512;
        if (chunk < 2) throw new ArgumentOutOfRangeException(nameof(DhsaOptions.ChunkSize), chunk, "The chunk size must be ≥ 2.");
        if (budget < 1) throw new ArgumentOutOfRangeException(nameof(DhsaOptions.TokenBudget), budget, "The token budget must be ≥ 1.");
        bool causal = options.Causal ?? true;
        return SparsePlan.Timed(() =>
        {
            var starts = new int[input.Sequences][];
            for (int s = 0; s < input.Sequences; s++) starts[s] = Boundaries(input, s, chunk);
            var sel = new SegmentSelection(input, input.Heads, starts);
            SelectorMath.ForEach(input.Sequences * input.Heads, item => Select(input, item / input.Heads, item % input.Heads, budget, causal, sel));
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }

    /// <summary>Chunk starts of one sequence: cut where adjacent keys are least alike, chunks of [½, 2]× the target.</summary>
    internal static int[] Boundaries(SelectorInput x, int s, int chunk)
    {
        int tk = x.KeyLength(s);
        if (tk == 0) return [];
        // similarity[t] = Σ over key heads of cos(k[t−1], k[t]); a cut before t splits a dissimilar pair.
        var similarity = new float[tk];
        for (int t = 1; t < tk; t++)
            for (int kvh = 0; kvh < x.KvHeads; kvh++)
            {
                ReadOnlySpan<float> a = x.KeyRow(s, kvh, t - 1), b = x.KeyRow(s, kvh, t);
                float na = TensorPrimitives.Norm(a), nb = TensorPrimitives.Norm(b);
                similarity[t] += na > 0 && nb > 0 ? TensorPrimitives.Dot(a, b) / (na * nb) : 0;
            }
        var starts = new List<int> { 0 };
        int lo = Math.Max(1, chunk / 2), hi = 2 * chunk;
        for (int a = 0; tk - a > hi;)
        {
            int best = a + lo;
            for (int t = a + lo; t <= Math.Min(a + hi, tk - lo); t++)
                if (similarity[t] < similarity[best]) best = t;
            starts.Add(best);
            a = best;
        }
        return [.. starts];
    }

    private static void Select(SelectorInput x, int s, int h, int budget, bool causal, SegmentSelection sel)
    {
        int n = sel.Segments(s), d = x.Dim, tq = x.QueryLength(s), kvh = h / x.GroupSize;
        if (n == 0 || tq == 0) return;
        // Chunk representations: mean × √len = sum / √len, for keys and for the queries whose positions fall in the chunk.
        var keys = new float[n * d];
        var queries = new float[n * d];
        var hasQueries = new bool[n];
        for (int c = 0; c < n; c++)
        {
            int a = sel.Start(s, c), b = sel.End(s, c);
            Span<float> kr = keys.AsSpan(c * d, d), qr = queries.AsSpan(c * d, d);
            for (int t = a; t < b; t++) TensorPrimitives.Add(kr, x.KeyRow(s, kvh, t), kr);
            TensorPrimitives.Multiply(kr, 1f / MathF.Sqrt(b - a), kr);
            int rows = 0;
            for (int p = a; p < b; p++)
            {
                int row = p - (x.KeyLength(s) - tq);
                if (row < 0 || row >= tq) continue;
                TensorPrimitives.Add(qr, x.QueryRow(s, h, row), qr);
                rows++;
            }
            if (rows > 0) TensorPrimitives.Multiply(qr, 1f / MathF.Sqrt(rows), qr);
            hasQueries[c] = rows > 0;
        }
        var scores = new float[n];
        var order = new int[n];
        for (int qc = 0; qc < n; qc++)
        {
            if (!hasQueries[qc]) continue;
            int visible = causal ? qc + 1 : n;
            SelectorScores.Dots(queries.AsSpan(qc * d, d), keys, n, scores);
            sel.Select(s, h, qc, qc);
            int taken = sel.End(s, qc) - sel.Start(s, qc);
            if (causal) scores.AsSpan(visible).Fill(float.NegativeInfinity);
            scores[qc] = float.NegativeInfinity;
            int count = SelectorMath.TopK(scores, n, order);
            // TopK returns ascending indices; rank them by score for the budget walk.
            Array.Sort(order, 0, count, Comparer<int>.Create((i, j) => scores[j] != scores[i] ? scores[j].CompareTo(scores[i]) : i.CompareTo(j)));
            for (int i = 0; i < count && taken < budget; i++)
            {
                sel.Select(s, h, qc, order[i]);
                taken += sel.End(s, order[i]) - sel.Start(s, order[i]);
            }
        }
    }
}

/// <summary><c>attend run --method dhsa</c>: <see cref="DHSA"/> on named tensors.</summary>
public sealed class DhsaMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("dhsa", "sparse", "method",
        "Long-Context Modeling Made Easy: Dynamic Hierarchical Sparse Attention for On-Device LLMs (DHSA, 2025)", ["cpu", "cuda"], "implemented",
        "dynamic chunks (cut at dissimilar adjacent keys), chunk similarity of mean×sqrt(len) summaries, top chunks to a token budget")
    {
        Parameters =
        [
            new("chunk", "int", "64", "target chunk length (chunks are 1/2x to 2x)"),
            new("budget", "int", "512", "keys per query chunk"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new DhsaOptions
        {
            ChunkSize = RoutingAdapter.OptionalInt(arguments, "chunk", 2),
            TokenBudget = RoutingAdapter.OptionalInt(arguments, "budget", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, DHSA.Plan(SelectorInput.From(inputs), options), scale);
    }
}
