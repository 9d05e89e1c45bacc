using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="HiP"/>; null fields take the defaults given.</summary>
public sealed record HiPOptions
{
    /// <summary>Query rows that share one pruning (default 64).</summary>
    public int? QueryBlockSize { get; init; }

    /// <summary>Keys per leaf of the search (default 64): the finest unit kept.</summary>
    public int? KeyBlockSize { get; init; }

    /// <summary>Key blocks kept per query block (default 8).</summary>
    public int? TopK { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// HiP, hierarchically pruned attention (Lee, Park, Lee, Kim, Jeong, Jeon, Hwang, "HiP Attention: Sparse Sub-Quadratic
/// Attention with Hierarchical Attention Pruning", 2024): a tree search for the top-k keys. The visible keys are cut
/// into 2k chunks; each chunk is scored by the attention score of its representative (centre) key; the best k are
/// kept, each is halved, and the halves are scored again, until every kept chunk is one key block. Exact attention
/// then runs on the k chosen blocks (a <see cref="BlockSelection"/> of query block × key block cells). No key is
/// excluded in advance, unlike a sliding window; the cost is O(T log T).
/// </summary>
/// <remarks>
/// Deviations: (1) the queries of a block share one search, scoring a chunk by the maximum over the block's queries
/// (the authors' block-sparse variant, <c>block_size_q</c>), and the leaves are key blocks (<c>block_size_k</c>)
/// rather than single tokens; (2) with <see cref="HiPOptions.Causal"/> the query block's own (diagonal) key block is
/// always kept, so no causal row is empty (the authors add a sliding window for the same reason); (3) no KV-cache
/// offloading (a serving concern, not part of the attention).
/// </remarks>
public static class HiP
{
    /// <summary>Runs the search and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A block size or top-k below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, HiPOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new HiPOptions();
        int bq = options.QueryBlockSize ?? 64, bk = options.KeyBlockSize ?? 64, topK = options.TopK ?? 8;
        if (bq < 1) throw new ArgumentOutOfRangeException(nameof(HiPOptions.QueryBlockSize), bq, "The query block size must be ≥ 1.");
        if (bk < 1) throw new ArgumentOutOfRangeException(nameof(HiPOptions.KeyBlockSize), bk, "The key block size must be ≥ 1.");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(HiPOptions.TopK), topK, "Top-k must be ≥ 1 block.");
        bool causal = options.Causal ?? true;
        return SparsePlan.Timed(() =>
        {
            BlockSelection sel = input.Offsets is SeqOffsets o
                ? new BlockSelection(o, o, input.Heads, bq, bk)
                : new BlockSelection(input.Batch, input.Heads, input.TotalQueryLength, input.TotalKeyLength, bq, bk);
            SelectorMath.ForEach(input.Sequences * input.Heads, item =>
            {
                int s = item / input.Heads, h = item % input.Heads;
                for (int qb = 0; qb < sel.QueryBlocks(s); qb++) Search(input, s, h, qb, bq, bk, topK, causal, sel);
            });
            IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
            return new SparsePlan(input, mask, causal, 0);
        });
    }

    private static void Search(SelectorInput x, int s, int h, int qb, int bq, int bk, int topK, bool causal, BlockSelection sel)
    {
        int n = SelectorMath.VisibleKeyBlocks(x, s, qb, bq, bk, causal);
        if (n == 0) return;
        if (causal) sel.Select(s, h, qb, n - 1);
        if (n <= topK)
        {
            sel.SelectRange(s, h, qb, 0, n);
            return;
        }
        int r0 = qb * bq, r1 = Math.Min(x.QueryLength(s), r0 + bq), kvh = h / x.GroupSize;
        int lastVisibleKey = causal ? Math.Min(x.QueryPosition(s, r1 - 1), x.KeyLength(s) - 1) : x.KeyLength(s) - 1;
        // Chunks are [start, end) ranges of key blocks; begin with 2k of them.
        var starts = new List<int>(2 * topK);
        var ends = new List<int>(2 * topK);
        int first = Math.Min(2 * topK, n);
        for (int c = 0; c < first; c++)
        {
            starts.Add((int)((long)c * n / first));
            ends.Add((int)((long)(c + 1) * n / first));
        }
        var scores = new float[2 * topK];
        var kept = new int[topK];
        while (true)
        {
            for (int c = 0; c < starts.Count; c++)
            {
                // The representative is the centre key of the chunk's visible keys.
                int k0 = starts[c] * bk, k1 = Math.Min(ends[c] * bk, lastVisibleKey + 1);
                ReadOnlySpan<float> key = x.KeyRow(s, kvh, (k0 + k1 - 1) / 2);
                float best = float.NegativeInfinity;
                for (int r = r0; r < r1; r++) best = Math.Max(best, TensorPrimitives.Dot(x.QueryRow(s, h, r), key));
                scores[c] = best;
            }
            int keptCount = SelectorMath.TopK(scores.AsSpan(0, starts.Count), topK, kept);
            bool leaves = true;
            for (int i = 0; i < keptCount; i++) leaves &= ends[kept[i]] - starts[kept[i]] == 1;
            if (leaves)
            {
                for (int i = 0; i < keptCount; i++) sel.Select(s, h, qb, starts[kept[i]]);
                return;
            }
            var nextStarts = new List<int>(2 * topK);
            var nextEnds = new List<int>(2 * topK);
            for (int i = 0; i < keptCount; i++)
            {
                int a = starts[kept[i]], b = ends[kept[i]];
                if (b - a == 1) { nextStarts.Add(a); nextEnds.Add(b); continue; }
                int mid = (a + b) / 2;
                nextStarts.Add(a); nextEnds.Add(mid);
                nextStarts.Add(mid); nextEnds.Add(b);
            }
            starts = nextStarts;
            ends = nextEnds;
        }
    }
}

/// <summary><c>attend run --method hip</c>: <see cref="HiP"/> on named tensors.</summary>
public sealed class HiPMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("hip", "sparse", "method",
        "HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention Pruning (Lee et al., 2024)", ["cpu", "cuda"], "implemented",
        "tree search: 2k chunks scored by their centre key, keep k, halve, repeat to key blocks; exact attention on them")
    {
        Parameters =
        [
            new("query-block", "int", "64", "query rows sharing one search"),
            new("key-block", "int", "64", "keys per leaf"),
            new("top-k", "int", "8", "key blocks kept per query block"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new HiPOptions
        {
            QueryBlockSize = RoutingAdapter.OptionalInt(arguments, "query-block", 1),
            KeyBlockSize = RoutingAdapter.OptionalInt(arguments, "key-block", 1),
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, HiP.Plan(SelectorInput.From(inputs), options), scale);
    }
}
