using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="RetrievalAttention"/>; null fields take the defaults given.</summary>
public sealed record RetrievalAttentionOptions
{
    /// <summary>Keys retrieved per query (default 128).</summary>
    public int? TopK { get; init; }

    /// <summary>Initial tokens always attended (the static set's sinks; default 4).</summary>
    public int? Sinks { get; init; }

    /// <summary>Most recent keys always attended (the static set's window, the query's own key included; default 64).</summary>
    public int? Window { get; init; }

    /// <summary>Lists of the index (default √Tk, rounded).</summary>
    public int? Lists { get; init; }

    /// <summary>Lists searched per query (default a quarter of the lists, at least 1).</summary>
    public int? Probes { get; init; }

    /// <summary>Query rows sharing one search (default 1 for up to 4096 queries, else 16).</summary>
    public int? QueryBlockSize { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// An inverted-file nearest-neighbour index over cached keys, one per (sequence, key head): keys are grouped by
/// spherical k-means into lists; a search ranks each list by the larger of <c>q·mean</c> and <c>q·k</c> over the
/// list's few largest-norm keys (norm ranging, as maximum-inner-product search does: a list holding one outlying
/// key — a needle — is not hidden behind its mean), opens the best <c>probes</c> lists and ranks their keys by exact
/// inner product. Built once per cache and reused by every decode step.
/// </summary>
public sealed class KeyIndex
{
    private readonly float[][] _means;   // [sequence * kvHeads + kvHead] → [lists, D]: mean of each list's keys
    private readonly int[][][] _sentinels; // … → [list] → the list's largest-norm keys
    private readonly int[][][] _members; // … → [list] → key positions, ascending

    /// <summary>Largest-norm keys kept per list to rank it (a needle's key has a large norm, so it becomes one).</summary>
    public const int SentinelsPerList = 4;

    private KeyIndex(int lists, int kvHeads, float[][] means, int[][][] sentinels, int[][][] members)
    {
        Lists = lists;
        KvHeads = kvHeads;
        _means = means;
        _sentinels = sentinels;
        _members = members;
    }

    /// <summary>Lists per (sequence, key head) (fewer in a sequence with fewer keys).</summary>
    public int Lists { get; }

    /// <summary>Key heads indexed.</summary>
    public int KvHeads { get; }

    /// <summary>Indexes every key of <paramref name="input"/> with <paramref name="lists"/> lists and <paramref name="iterations"/> Lloyd steps.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Lists below 1 or iterations below 0.</exception>
    public static KeyIndex Build(SelectorInput input, int lists, int iterations = 2)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (lists < 1) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.Lists), lists, "The index needs ≥ 1 list.");
        ArgumentOutOfRangeException.ThrowIfNegative(iterations);
        int groups = input.Sequences * input.KvHeads, d = input.Dim;
        var means = new float[groups][];
        var sentinels = new int[groups][][];
        var members = new int[groups][][];
        // Lloyd steps in phases over all groups, the assignment (tk × lists dot products, nearly all the work) split
        // into chunks of keys so that few (sequence, key head) groups still fill every core (it ran one item per group:
        // 2 of 16 cores at H = 8/2). Each key's assignment is the same computation as before.
        var centroids = new float[groups][];
        var assignments = new int[groups][];
        SelectorMath.ForEach(groups, g =>
        {
            int s = g / input.KvHeads, kvh = g % input.KvHeads, tk = input.KeyLength(s), n = Math.Min(lists, tk);
            var c = new float[n * d];
            for (int i = 0; i < n; i++) Unit(input.KeyRow(s, kvh, (int)((i + 0.5) * tk / n)), c.AsSpan(i * d, d));
            centroids[g] = c;
            assignments[g] = new int[tk];
        });
        const int keysPerItem = 2048;
        var chunks = new List<(int G, int First)>();
        for (int g = 0; g < groups; g++)
            for (int k = 0; k < input.KeyLength(g / input.KvHeads); k += keysPerItem) chunks.Add((g, k));
        for (int it = 0; ; it++)
        {
            SelectorMath.ForEach(chunks.Count, item =>
            {
                (int g, int first) = chunks[item];
                int s = g / input.KvHeads, kvh = g % input.KvHeads, tk = input.KeyLength(s), n = Math.Min(lists, tk);
                float[] c = centroids[g];
                int[] assign = assignments[g];
                var scores = new float[n];
                for (int k = first; k < Math.Min(first + keysPerItem, tk); k++)
                {
                    SelectorScores.Dots(input.KeyRow(s, kvh, k), c, n, scores);
                    assign[k] = n == 0 ? 0 : TensorPrimitives.IndexOfMax(scores.AsSpan(0, n));
                }
            });
            if (it == iterations) break;
            SelectorMath.ForEach(groups, g =>
            {
                int s = g / input.KvHeads, kvh = g % input.KvHeads, tk = input.KeyLength(s), n = Math.Min(lists, tk);
                float[] c = centroids[g];
                int[] assign = assignments[g];
                var sum = new float[n * d];
                var unit = new float[d];
                for (int k = 0; k < tk; k++)
                {
                    Unit(input.KeyRow(s, kvh, k), unit);
                    TensorPrimitives.Add(sum.AsSpan(assign[k] * d, d), unit, sum.AsSpan(assign[k] * d, d));
                }
                for (int i = 0; i < n; i++)
                    if (TensorPrimitives.Norm(sum.AsSpan(i * d, d)) > 0) Unit(sum.AsSpan(i * d, d), c.AsSpan(i * d, d));
            });
        }
        SelectorMath.ForEach(groups, g =>
        {
            int s = g / input.KvHeads, kvh = g % input.KvHeads, tk = input.KeyLength(s), n = Math.Min(lists, tk);
            int[] assign = assignments[g];
            var count = new int[n];
            foreach (int a in assign) count[a]++;
            var lists2 = new int[n][];
            for (int i = 0; i < n; i++) lists2[i] = new int[count[i]];
            Array.Clear(count);
            for (int k = 0; k < tk; k++) lists2[assign[k]][count[assign[k]]++] = k;
            // Ranking data: each list's mean key and its largest-norm keys (norm-ranging for inner-product search).
            var m = new float[n * d];
            var sent = new int[n][];
            for (int i = 0; i < n; i++)
            {
                Span<float> mi = m.AsSpan(i * d, d);
                var norms = new float[lists2[i].Length];
                for (int j = 0; j < norms.Length; j++)
                {
                    ReadOnlySpan<float> key = input.KeyRow(s, kvh, lists2[i][j]);
                    TensorPrimitives.Add(mi, key, mi);
                    norms[j] = TensorPrimitives.Norm(key);
                }
                if (norms.Length > 0) TensorPrimitives.Multiply(mi, 1f / norms.Length, mi);
                var top = new int[Math.Min(SentinelsPerList, norms.Length)];
                int found = SelectorMath.TopK(norms, top.Length, top);
                sent[i] = new int[found];
                for (int j = 0; j < found; j++) sent[i][j] = lists2[i][top[j]];
            }
            means[g] = m;
            sentinels[g] = sent;
            members[g] = lists2;
        });
        return new KeyIndex(lists, input.KvHeads, means, sentinels, members);
    }

    private static void Unit(ReadOnlySpan<float> v, Span<float> dst)
    {
        float n = TensorPrimitives.Norm(v);
        if (n > 0) TensorPrimitives.Multiply(v, 1f / n, dst);
        else { dst.Clear(); dst[0] = 1; }
    }

    /// <summary>
    /// The <paramref name="topK"/> keys below <paramref name="keyEnd"/> with the largest inner product with
    /// <paramref name="query"/> among the keys of the best <paramref name="probes"/> lists, skipping keys
    /// <paramref name="skip"/> rejects; written to <paramref name="chosen"/> (ascending), count returned.
    /// </summary>
    internal int Search(SelectorInput x, int sequence, int kvHead, ReadOnlySpan<float> query, int probes, int topK, int keyEnd, Func<int, bool> skip, Span<int> chosen)
    {
        int g = sequence * KvHeads + kvHead;
        int n = _members[g].Length;
        if (n == 0) return 0;
        var listScores = new float[n];
        SelectorScores.Dots(query, _means[g], n, listScores);
        for (int i = 0; i < n; i++)
        {
            if (_members[g][i].Length == 0) { listScores[i] = float.NegativeInfinity; continue; }
            foreach (int k in _sentinels[g][i])
                if (k < keyEnd) listScores[i] = Math.Max(listScores[i], TensorPrimitives.Dot(query, x.KeyRow(sequence, kvHead, k)));
        }
        var open = new int[Math.Min(probes, n)];
        int opened = SelectorMath.TopK(listScores, open.Length, open);
        var candidates = new List<int>();
        for (int i = 0; i < opened; i++)
            foreach (int k in _members[g][open[i]])
                if (k < keyEnd && !skip(k)) candidates.Add(k);
        var scores = new float[candidates.Count];
        for (int i = 0; i < scores.Length; i++) scores[i] = TensorPrimitives.Dot(query, x.KeyRow(sequence, kvHead, candidates[i]));
        var top = new int[Math.Min(topK, scores.Length)];
        int found = SelectorMath.TopK(scores, top.Length, top);
        for (int i = 0; i < found; i++) chosen[i] = candidates[top[i]];
        chosen[..found].Sort();
        return found;
    }
}

/// <summary>
/// RetrievalAttention (Liu et al., "RetrievalAttention: Accelerating Long-Context LLM Inference via Vector
/// Retrieval", 2024): a static set of tokens (initial sinks and a recent window) is always attended, and each decode
/// query retrieves its most relevant keys from a nearest-neighbour index over the cached keys; exact attention runs
/// on the union (a <see cref="TokenSelection"/>). The index is a <see cref="KeyIndex"/>, built once and reused.
/// </summary>
/// <remarks>
/// Deviations: (1) the index is an inverted file (spherical k-means lists ranked by mean and largest-norm keys,
/// exact ranking inside the probed lists), not the paper's attention-aware graph index built from prefill queries;
/// the norm ranging, rather than centroid similarity, is what copes with the query/key distribution gap the paper addresses; (2) everything runs in one memory (no CPU/GPU split;
/// the paper merges a GPU partial attention with a CPU one by their LSEs, which equals the single softmax here);
/// (3) on a prefill the rows of a query block share one search with their mean query (query-block 1 searches per row).
/// </remarks>
public static class RetrievalAttention
{
    /// <summary>Searches and freezes the plan; <paramref name="index"/> is built when null.</summary>
    /// <remarks>
    /// On a packed input the default list count (√Tk) and query block come from the longest sequence (the index itself
    /// is per sequence and key head); the runnable
    /// adapter instead plans each sequence alone (<see cref="PackedBatch"/>), so a packed batch gives each sequence what
    /// it gives alone. Set <see cref="RetrievalAttentionOptions.Lists"/> to make the typed call length-independent.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">A top-k, list, probe or query-block count below 1; negative sinks or window.</exception>
    public static SparsePlan Plan(SelectorInput input, RetrievalAttentionOptions? options = null, KeyIndex? index = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new RetrievalAttentionOptions();
        int maxKeys = 0, maxQueries = 0;
        for (int s = 0; s < input.Sequences; s++) { maxKeys = Math.Max(maxKeys, input.KeyLength(s)); maxQueries = Math.Max(maxQueries, input.QueryLength(s)); }
        int topK = options.TopK ?? 128, sinks = options.Sinks ?? 4, window = options.Window ?? 64;
        int lists = index?.Lists ?? options.Lists ?? Math.Max(1, (int)Math.Round(Math.Sqrt(maxKeys)));
        int probes = options.Probes ?? Math.Max(1, lists / 4), qbs = options.QueryBlockSize ?? (maxQueries <= 4096 ? 1 : 16);
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.TopK), topK, "Top-k must be ≥ 1 key.");
        if (sinks < 0) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.Sinks), sinks, "Sinks must be ≥ 0.");
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.Window), window, "The window must be ≥ 0.");
        if (lists < 1) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.Lists), lists, "The index needs ≥ 1 list.");
        if (probes < 1) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.Probes), probes, "Probes must be ≥ 1.");
        if (qbs < 1) throw new ArgumentOutOfRangeException(nameof(RetrievalAttentionOptions.QueryBlockSize), qbs, "The query block size must be ≥ 1.");
        if (index is not null && index.KvHeads != input.KvHeads)
            throw new ArgumentException($"The index covers {index.KvHeads} key heads; the input has {input.KvHeads}.", nameof(index));
        bool causal = options.Causal ?? true;
        return SparsePlan.Timed(() =>
        {
            KeyIndex idx = index ?? KeyIndex.Build(input, lists);
            var sel = new TokenSelection(input, input.Heads, qbs);
            // Work items of (sequence, head, run of query blocks): each block writes only its own row of the selection.
            int chunk = Math.Max(1, 1024 / qbs);
            var items = new List<(int S, int H, int First)>();
            for (int s = 0; s < input.Sequences; s++)
                for (int h = 0; h < input.Heads; h++)
                    for (int qb = 0; qb < sel.QueryBlocks(s); qb += chunk) items.Add((s, h, qb));
            SelectorMath.ForEach(items.Count, item =>
            {
                (int s, int h, int first) = items[item];
                int tk = input.KeyLength(s), d = input.Dim;
                var mean = new float[d];
                var chosen = new int[topK];
                for (int qb = first; qb < Math.Min(first + chunk, sel.QueryBlocks(s)); qb++)
                {
                    int r0 = qb * qbs, r1 = Math.Min(input.QueryLength(s), r0 + qbs);
                    int firstPos = input.QueryPosition(s, r0), lastPos = input.QueryPosition(s, r1 - 1);
                    int keyEnd = causal ? Math.Clamp(lastPos + 1, 0, tk) : tk;
                    if (keyEnd == 0) continue;
                    // Static set: sinks and the window of every row of the block.
                    sel.SelectRange(s, h, qb, 0, Math.Min(sinks, keyEnd));
                    if (window > 0) sel.SelectRange(s, h, qb, firstPos - window + 1, causal ? keyEnd : lastPos + window);
                    mean.AsSpan().Clear();
                    for (int r = r0; r < r1; r++) TensorPrimitives.Add(mean, input.QueryRow(s, h, r), mean);
                    int winLo = firstPos - window + 1;
                    int n = idx.Search(input, s, h / input.GroupSize, mean, probes, topK, keyEnd,
                        k => k < sinks || (window > 0 && k >= winLo && k <= lastPos + (causal ? 0 : window - 1)), chosen);
                    for (int i = 0; i < n; i++) sel.Select(s, h, qb, chosen[i]);
                }
            });
            TokenSelectionMask tokens = sel.ToMask();
            IMaskMod mask = causal ? Masks.And(Masks.Causal, tokens) : tokens;
            return new SparsePlan(input, mask, causal, 0);
        });
    }
}

/// <summary><c>attend run --method retrieval-attention</c>: <see cref="RetrievalAttention"/> on named tensors.</summary>
public sealed class RetrievalAttentionMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("retrieval-attention", "sparse", "method",
        "RetrievalAttention: Accelerating Long-Context LLM Inference via Vector Retrieval (Liu et al., 2024)", ["cpu", "cuda"], "implemented",
        "sinks + recent window + top-k keys from an inverted-file nearest-neighbour index over the cached keys")
    {
        Parameters =
        [
            new("top-k", "int", "128", "keys retrieved per query"),
            new("sinks", "int", "4", "initial tokens always attended"),
            new("window", "int", "64", "recent keys always attended"),
            new("lists", "int", "sqrt(Tk)", "inverted lists of the index"),
            new("probes", "int", "lists/4", "lists searched per query"),
            new("query-block", "int", "1 (16 above 4096 queries)", "query rows sharing one search"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        // A packed batch is planned one sequence at a time: the list count and query block depend on the sequence.
        if (inputs.Offsets is not null) return PackedBatch.RunEachSequence(inputs, arguments, RoutingAdapter.Causal(arguments), Run);
        var options = new RetrievalAttentionOptions
        {
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            Sinks = RoutingAdapter.OptionalInt(arguments, "sinks", 0),
            Window = RoutingAdapter.OptionalInt(arguments, "window", 0),
            Lists = RoutingAdapter.OptionalInt(arguments, "lists", 1),
            Probes = RoutingAdapter.OptionalInt(arguments, "probes", 1),
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, RetrievalAttention.Plan(SelectorInput.From(inputs), options), scale);
    }
}
