using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="RecycledAttention"/>; null fields take the defaults given.</summary>
public sealed record RecycledOptions
{
    /// <summary>Queries per period: the first of each is a full step (default 64).</summary>
    public int? Stride { get; init; }

    /// <summary>Most-attended tokens of the full step the partial steps reuse (default 256).</summary>
    public int? TopK { get; init; }
}

/// <summary>
/// The recycled pattern of one call, which a later decode call can reuse: per (sequence, head, period) the key
/// position of the period's full step and the top-K keys it attended most.
/// </summary>
public sealed class RecycledPattern
{
    internal RecycledPattern(TokenSelection tokens, int[][] fullPosition, bool[][] firstRowFull, int stride)
    {
        Tokens = tokens;
        FullPosition = fullPosition;
        FirstRowFull = firstRowFull;
        Stride = stride;
    }

    internal TokenSelection Tokens { get; }

    internal int[][] FullPosition { get; }   // [sequence][period]: key position of the full step

    internal bool[][] FirstRowFull { get; }  // [sequence][period]: whether the period's first row is itself the full step

    /// <summary>Queries per period.</summary>
    public int Stride { get; }
}

/// <summary>
/// The causal mask of <see cref="RecycledAttention"/>: a full-step row sees every earlier key; any other row sees the
/// top-K keys recorded at its period's full step and every key after that step (the tokens it could not record).
/// </summary>
public readonly struct RecycledMask : IMaskMod<RecycledMask>, IMaskRowWords
{
    private readonly TokenSelectionMask _tokens;
    private readonly int[][]? _full;
    private readonly bool[][]? _firstFull;
    private readonly int[]? _queryLengths, _keyLengths;
    private readonly int[][]? _freeFrom; // [entry][row]: FreeFrom precomputed (IsVisible runs for every pair of a partial tile)
    private readonly int _stride;

    internal RecycledMask(TokenSelectionMask tokens, int[][] full, bool[][] firstFull, int[] queryLengths, int[] keyLengths, int stride)
    {
        _tokens = tokens;
        _full = full;
        _firstFull = firstFull;
        _queryLengths = queryLengths;
        _keyLengths = keyLengths;
        _stride = stride;
        _freeFrom = new int[full.Length][];
        for (int e = 0; e < full.Length; e++)
        {
            _freeFrom[e] = new int[queryLengths[e]];
            for (int r = 0; r < queryLengths[e]; r++) _freeFrom[e][r] = FreeFrom(e, r);
        }
    }

    private int[][] Full => _full ?? throw new InvalidOperationException("default(RecycledMask) is not a plan; build it with RecycledAttention.Plan.");

    // The first key the row sees without the recorded set: 0 for a full step, else one past its period's full step.
    private int FreeFrom(int e, int row)
    {
        int period = row / _stride;
        return _firstFull![e][period] && row % _stride == 0 ? 0 : Full[e][period] + 1;
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        int e = Full.Length == 1 ? 0 : batch;
        int row = q - (_keyLengths![e] - _queryLengths![e]);
        if ((uint)row >= (uint)_queryLengths[e] || k < 0 || k > q || k >= _keyLengths[e]) return false;
        return k >= _freeFrom![e][row] || _tokens.IsVisible(batch, head, q, k);
    }

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        int e = Full.Length == 1 ? 0 : batch;
        int row = q - (_keyLengths![e] - _queryLengths![e]);
        if ((uint)row >= (uint)_queryLengths[e] || k0 < 0) return 0;
        ulong allowed = MaskRowWords.AtMost(q, k0) & MaskRowWords.Range(0, _keyLengths[e], k0);
        return allowed & (MaskRowWords.Range(_freeFrom![e][row], long.MaxValue, k0) | _tokens.RowWord(batch, head, q, k0, candidates));
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int e = Full.Length == 1 ? 0 : batch, tk = _keyLengths![e], tq = _queryLengths![e], shift = tk - tq;
        if (new CausalMask().ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd) == BlockKind.Empty) return BlockKind.Empty;
        int r0 = Math.Max(qStart - shift, 0), r1 = Math.Min(qEnd - shift, tq);
        if (r1 <= r0 || kEnd <= kStart) return BlockKind.Empty;
        // The rows' free ranges [FreeFrom, q]; outside them only the recorded tokens count.
        int minFree = int.MaxValue, maxFree = int.MinValue;
        for (int r = r0; r < r1; r++)
        {
            int f = _freeFrom![e][r];
            minFree = Math.Min(minFree, f);
            maxFree = Math.Max(maxFree, f);
        }
        BlockKind tokens = _tokens.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        bool causalFull = new CausalMask().ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd) == BlockKind.Full;
        if (tokens == BlockKind.Empty && kEnd - 1 < minFree) return BlockKind.Empty;
        if (causalFull && (kStart >= maxFree || tokens == BlockKind.Full) && r0 == qStart - shift && r1 == qEnd - shift && kEnd <= tk) return BlockKind.Full;
        return BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => _tokens.DependsOnHead;

    /// <inheritdoc/>
    public bool DependsOnBatch => Full.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => $"recycled(stride {_stride})";
}

/// <summary>
/// Recycled Attention (Xu, Goyal, Choi, "Recycled Attention: Efficient Inference for Long-Context
/// Language Models", 2024): generation alternates full-attention steps over the whole context with partial steps; a
/// partial step reuses the attention pattern of the last full step and attends only to its top-K most-attended tokens
/// (plus the tokens that came after it). Here a call's query rows are cut into periods of <see cref="RecycledOptions.Stride"/>;
/// each period's first row is a full step whose exact attention ranks the keys, and the other rows are partial
/// steps (<see cref="RecycledMask"/>). A decode call can instead reuse the <see cref="RecycledPattern"/> of an
/// earlier call, so that its single query is a partial step.
/// </summary>
/// <remarks>
/// Deviations: (1) full steps come at a fixed stride (the paper also has a query-similarity trigger); (2) on a
/// prefill the periods are consecutive query rows of one call (the paper runs on decoding steps, where they are
/// consecutive generated tokens — the same relation); (3) no continued pre-training; (4) causal only.
/// </remarks>
public static class RecycledAttention
{
    /// <summary>Runs the full steps, records their top-K and freezes the plan (its pattern is <see cref="PatternOf"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A stride or top-k below 1 (the parameter is named).</exception>
    public static SparsePlan Plan(SelectorInput input, RecycledOptions? options = null, float? scale = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new RecycledOptions();
        int stride = options.Stride ?? 64, topK = options.TopK ?? 256;
        if (stride < 1) throw new ArgumentOutOfRangeException(nameof(RecycledOptions.Stride), stride, "The stride must be ≥ 1.");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(RecycledOptions.TopK), topK, "Top-k must be ≥ 1 token.");
        float sc = SelectorMath.Scale(scale, input.Dim);
        return SparsePlan.Timed(() =>
        {
            var tokens = new TokenSelection(input, input.Heads, stride);
            int n = input.Sequences;
            var full = new int[n][];
            var firstFull = new bool[n][];
            for (int s = 0; s < n; s++)
            {
                full[s] = new int[tokens.QueryBlocks(s)];
                firstFull[s] = new bool[tokens.QueryBlocks(s)];
                for (int p = 0; p < full[s].Length; p++)
                {
                    full[s][p] = input.QueryPosition(s, p * stride);
                    firstFull[s][p] = true;
                }
            }
            // Work items of (sequence, head, run of periods): each period's full step writes only its own row, and a
            // long single sequence then fills every core (one item per (sequence, head) left half of 16 cores idle).
            const int periodsPerItem = 16;
            var items = new List<(int S, int H, int First)>();
            for (int s = 0; s < n; s++)
                for (int h = 0; h < input.Heads; h++)
                    for (int p = 0; p < full[s].Length; p += periodsPerItem) items.Add((s, h, p));
            SelectorMath.ForEach(items.Count, item =>
            {
                (int s, int h, int first) = items[item];
                int tk = input.KeyLength(s);
                // Rented: at 128k a fresh row per item was 512 MB of large-object garbage per plan (H = 8).
                float[] logits = System.Buffers.ArrayPool<float>.Shared.Rent(Math.Max(1, tk));
                var chosen = new int[topK];
                try
                {
                    for (int p = first; p < Math.Min(first + periodsPerItem, full[s].Length); p++)
                    {
                        int end = Math.Clamp(full[s][p] + 1, 0, tk);
                        if (end == 0) continue;
                        ReadOnlySpan<float> q = input.QueryRow(s, h, p * stride);
                        for (int k = 0; k < end; k++) logits[k] = TensorPrimitives.Dot(q, input.KeyRow(s, h / input.GroupSize, k));
                        int found = SelectorMath.TopK(logits.AsSpan(0, end), topK, chosen);
                        for (int i = 0; i < found; i++) tokens.Select(s, h, p, chosen[i]);
                    }
                }
                finally
                {
                    System.Buffers.ArrayPool<float>.Shared.Return(logits);
                }
            });
            return Freeze(input, new RecycledPattern(tokens, full, firstFull, stride));
        });
    }

    /// <summary>A decode step (or any call) that reuses an earlier call's pattern: every row is a partial step of the
    /// earlier call's last period.</summary>
    /// <exception cref="ArgumentException">A pattern of another number of sequences or heads.</exception>
    public static SparsePlan Plan(SelectorInput input, RecycledPattern previous)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(previous);
        if (previous.FullPosition.Length != input.Sequences)
            throw new ArgumentException($"The pattern covers {previous.FullPosition.Length} sequences; the input has {input.Sequences}.", nameof(previous));
        if (previous.Tokens.Heads != input.Heads)
            throw new ArgumentException($"The pattern has {previous.Tokens.Heads} heads; the input has {input.Heads}.", nameof(previous));
        return SparsePlan.Timed(() =>
        {
            // One period spanning all rows of this call, whose full step is the previous call's last one.
            int n = input.Sequences, maxRows = 1;
            for (int s = 0; s < n; s++) maxRows = Math.Max(maxRows, input.QueryLength(s));
            var tokens = new TokenSelection(input, input.Heads, maxRows);
            var full = new int[n][];
            var firstFull = new bool[n][];
            for (int s = 0; s < n; s++)
            {
                int last = previous.FullPosition[s].Length - 1;
                full[s] = [last >= 0 ? previous.FullPosition[s][last] : -1];
                firstFull[s] = [false];
                if (last < 0 || tokens.QueryBlocks(s) == 0) continue;
                for (int h = 0; h < input.Heads; h++)
                    for (int k = 0; k <= Math.Min(full[s][0], input.KeyLength(s) - 1); k++)
                        if (previous.Tokens.IsSelected(s, h, last, k)) tokens.Select(s, h, 0, k);
            }
            return Freeze(input, new RecycledPattern(tokens, full, firstFull, maxRows));
        });
    }

    /// <summary>The pattern a plan from <see cref="Plan(SelectorInput, RecycledOptions?, float?)"/> recorded, for later decode calls.</summary>
    /// <exception cref="ArgumentException">A plan of another method.</exception>
    public static RecycledPattern PatternOf(SparsePlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        return plan.Tag as RecycledPattern ?? throw new ArgumentException("The plan was not made by RecycledAttention.", nameof(plan));
    }

    private static SparsePlan Freeze(SelectorInput input, RecycledPattern pattern)
    {
        var ql = new int[input.Sequences];
        var kl = new int[input.Sequences];
        for (int s = 0; s < ql.Length; s++) { ql[s] = input.QueryLength(s); kl[s] = input.KeyLength(s); }
        var mask = new RecycledMask(pattern.Tokens.ToMask(), pattern.FullPosition, pattern.FirstRowFull, ql, kl, pattern.Stride);
        return new SparsePlan(input, mask, true, 0) { Tag = pattern };
    }
}

/// <summary><c>attend run --method recycled</c>: <see cref="RecycledAttention"/> on named tensors.</summary>
public sealed class RecycledMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("recycled", "sparse", "method",
        "Recycled Attention: Efficient Inference for Long-Context Language Models (Xu, Goyal, Choi, 2024)", ["cpu", "cuda"], "implemented",
        "a full step every stride queries records its top-K keys; the steps in between attend to them and the newer tokens")
    {
        Parameters =
        [
            new("stride", "int", "64", "queries per period (the first is a full step)"),
            new("top-k", "int", "256", "recorded keys reused by the partial steps"),
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new RecycledOptions
        {
            Stride = RoutingAdapter.OptionalInt(arguments, "stride", 1),
            TopK = RoutingAdapter.OptionalInt(arguments, "top-k", 1),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        return RoutingAdapter.Run(inputs, RecycledAttention.Plan(SelectorInput.From(inputs), options, scale), scale);
    }
}
