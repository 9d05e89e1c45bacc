using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="SpAtten"/>; null fields take the defaults given.</summary>
public sealed record SpAttenOptions
{
    /// <summary>Fraction of the still-kept tokens this layer keeps (default 0.5).</summary>
    public double? TokenKeep { get; init; }

    /// <summary>
    /// Fraction of the still-kept heads this layer keeps (default 1: no head pruning). With a previous layer's state the
    /// heads are ranked by its accumulated importance (the cascade); without one, by this layer's own output magnitude
    /// on the sampled rows, which needs the values (<see cref="SpAtten.Plan(SelectorInput, float[], int, SpAttenOptions?, float?)"/>).
    /// </summary>
    public double? HeadKeep { get; init; }

    /// <summary>Number of the still-kept heads this layer keeps (instead of <see cref="HeadKeep"/>; default: all).</summary>
    public int? HeadCount { get; init; }

    /// <summary>Every how many query rows one scores token importance (default 64; the last row always does).</summary>
    public int? QuerySample { get; init; }
}

/// <summary>
/// What SpAtten carries from layer to layer: cumulative token importance (attention probability received) and head
/// importance (output magnitude), and which tokens and heads are still kept — pruning is a cascade, never undone.
/// </summary>
public sealed class SpAttenState
{
    internal SpAttenState(double[][] tokenImportance, bool[][] keptTokens, double[] headImportance, bool[][] sequenceKeptHeads)
    {
        TokenImportance = tokenImportance;
        KeptTokens = keptTokens;
        HeadImportance = headImportance;
        SequenceKeptHeads = sequenceKeptHeads;
        KeptHeads = new bool[headImportance.Length];
        foreach (bool[] heads in sequenceKeptHeads)
            for (int h = 0; h < heads.Length; h++) KeptHeads[h] |= heads[h];
    }

    /// <summary>Cumulative importance of each token, per sequence.</summary>
    public double[][] TokenImportance { get; }

    /// <summary>Tokens still kept, per sequence.</summary>
    public bool[][] KeptTokens { get; }

    /// <summary>Cumulative importance of each head (Σ of |output|).</summary>
    public double[] HeadImportance { get; }

    /// <summary>Heads still kept in at least one sequence (in a batch of one: the heads still kept).</summary>
    public bool[] KeptHeads { get; }

    /// <summary>
    /// Heads still kept, per sequence: a one-layer use ranks heads by each sequence's own output magnitude, so a
    /// packed batch prunes each sequence's heads as that sequence alone would; the cascade then prunes every sequence by
    /// the shared <see cref="HeadImportance"/>.
    /// </summary>
    public bool[][] SequenceKeptHeads { get; }

    /// <summary>Adds each head's output magnitude Σ|o| (SpAtten's head importance) from a layer's output <c>[B, Tq, H, Dv]</c>.</summary>
    /// <exception cref="ArgumentException">An output whose length is not a multiple of the head count.</exception>
    public void AddHeadImportance(ReadOnlySpan<float> output, int heads, int valueDim)
    {
        if (heads != HeadImportance.Length) throw new ArgumentException($"The state has {HeadImportance.Length} heads; got {heads}.", nameof(heads));
        if (valueDim < 1 || output.Length % (heads * valueDim) != 0)
            throw new ArgumentException($"An output of {output.Length} values is not [.., {heads}, {valueDim}].", nameof(output));
        for (int row = 0; row < output.Length / (heads * valueDim); row++)
            for (int h = 0; h < heads; h++)
            {
                ReadOnlySpan<float> o = output.Slice((row * heads + h) * valueDim, valueDim);
                if (!float.IsNaN(o[0])) HeadImportance[h] += TensorPrimitives.SumOfMagnitudes(o);
            }
    }
}

/// <summary>
/// The mask of a SpAtten layer: kept heads see the kept tokens; pruned heads see nothing (their output is 0). Tokens
/// and heads are kept per sequence (batch entry or varlen sequence).
/// </summary>
public readonly struct SpAttenMask : IMaskMod<SpAttenMask>
{
    private readonly bool[][]? _kept;
    private readonly bool[][]? _heads;
    private readonly int[]? _queryLengths, _keyLengths;

    internal SpAttenMask(bool[][] kept, bool[][] heads, int[] queryLengths, int[] keyLengths)
    {
        _kept = kept;
        _heads = heads;
        _queryLengths = queryLengths;
        _keyLengths = keyLengths;
    }

    private bool[][] Kept => _kept ?? throw new InvalidOperationException("default(SpAttenMask) is not a plan; build it with SpAtten.Plan.");

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        int e = Kept.Length == 1 ? 0 : batch;
        int row = q - (_keyLengths![e] - _queryLengths![e]);
        return (uint)row < (uint)_queryLengths[e] && (uint)k < (uint)_keyLengths[e] && _heads![e][head] && Kept[e][k];
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int e = Kept.Length == 1 ? 0 : batch, tq = _queryLengths![e], tk = _keyLengths![e], shift = tk - tq;
        int r0 = Math.Max(qStart - shift, 0), r1 = Math.Min(qEnd - shift, tq), k0 = Math.Max(kStart, 0), k1 = Math.Min(kEnd, tk);
        if (!_heads![e][head] || r1 <= r0 || k1 <= k0) return BlockKind.Empty;
        int kept = 0;
        for (int k = k0; k < k1; k++) kept += Kept[e][k] ? 1 : 0;
        if (kept == 0) return BlockKind.Empty;
        bool inside = r0 == qStart - shift && r1 == qEnd - shift && k0 == kStart && k1 == kEnd;
        return kept == k1 - k0 && inside ? BlockKind.Full : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead
    {
        get
        {
            foreach (bool[] heads in _heads!) if (Array.IndexOf(heads, false) >= 0) return true;
            return false;
        }
    }

    /// <inheritdoc/>
    public bool DependsOnBatch => Kept.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => "spatten";
}

/// <summary>
/// SpAtten's cascade token and head pruning (Wang, Zhang, Han, "SpAtten: Efficient Sparse Attention Architecture with
/// Cascade Token and Head Pruning", HPCA 2021) as a selector: a token's importance is the attention probability it
/// receives, summed over heads and queries and accumulated across layers; each layer keeps the top fraction of the
/// tokens still kept, and heads are likewise ranked by their accumulated output magnitude Σ|o| and pruned for good.
/// The plan is a <see cref="SpAttenMask"/> (kept heads × kept tokens) under the causal mask; the next layer's state is
/// <see cref="StateOf"/>.
/// </summary>
/// <remarks>
/// Deviations: (1) the hardware side (top-k engine, progressive quantisation) is out of scope; (2) SpAtten prunes
/// the later layers with the importance of the earlier ones; with a <c>previous</c> state this selector does the
/// same, and without one it scores this layer's own attention first (a one-layer use): tokens by the probability they
/// receive, heads (when <see cref="SpAttenOptions.HeadKeep"/> or <see cref="SpAttenOptions.HeadCount"/> asks) by the
/// magnitude Σ|o| of their output on the sampled rows, computed over the same probabilities and the values;
/// (3) importance comes from a sample of the query rows (every <see cref="SpAttenOptions.QuerySample"/>-th, and the
/// last), not every row, so the selector costs a fraction of the attention; (4) causal (GPT-2 style); (5) pruned tokens
/// still have their query rows computed (over the kept keys); a caller drops them; (6) a pruned head is dropped from
/// the computation and its output rows are 0 (LSE −∞): the paper removes the head, and the output projection that
/// follows sees the same as a zero head output; (7) the paper runs one sentence at a time; in a batch the one-layer head
/// ranking is per sequence (a packed batch prunes each sequence as it would alone), while a cascade state's head
/// importance is shared by the batch.
/// </remarks>
public static class SpAtten
{
    /// <summary>Scores, prunes and freezes the plan; its <see cref="StateOf"/> feeds the next layer.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A keep fraction outside (0, 1], a head count outside [1, H] or a sample stride below 1 (the parameter is named).</exception>
    /// <exception cref="ArgumentException">A previous state for other lengths or heads; both HeadKeep and HeadCount; head pruning without a previous state (that needs the values: use the overload with values).</exception>
    public static SparsePlan Plan(SelectorInput input, SpAttenOptions? options = null, SpAttenState? previous = null, float? scale = null) =>
        Build(input, null, 0, options, previous, scale);

    /// <summary>
    /// One layer without a previous state that may prune heads: heads are ranked by their output magnitude on the
    /// sampled rows, from <paramref name="values"/> <c>[B, Tk, Hkv, Dv]</c> (packed <c>[1, T, Hkv, Dv]</c>, laid out like
    /// the keys) with head dim <paramref name="valueDim"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A keep fraction outside (0, 1], a head count outside [1, H] or a sample stride below 1 (the parameter is named).</exception>
    /// <exception cref="ArgumentException">Values of the wrong size; both HeadKeep and HeadCount.</exception>
    public static SparsePlan Plan(SelectorInput input, float[] values, int valueDim, SpAttenOptions? options = null, float? scale = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(values);
        if (valueDim < 1 || values.LongLength != (long)input.Batch * input.TotalKeyLength * input.KvHeads * valueDim)
            throw new ArgumentException($"values hold {values.LongLength} values; [B={input.Batch}, Tk={input.TotalKeyLength}, Hkv={input.KvHeads}, Dv={valueDim}] needs {(long)input.Batch * input.TotalKeyLength * input.KvHeads * Math.Max(valueDim, 0)}.", nameof(values));
        return Build(input, values, valueDim, options, null, scale);
    }

    private static SparsePlan Build(SelectorInput input, float[]? values, int valueDim, SpAttenOptions? options, SpAttenState? previous, float? scale)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new SpAttenOptions();
        double tokenKeep = options.TokenKeep ?? 0.5, headKeep = options.HeadKeep ?? 1.0;
        int sample = options.QuerySample ?? 64;
        if (!(tokenKeep > 0 && tokenKeep <= 1)) throw new ArgumentOutOfRangeException(nameof(SpAttenOptions.TokenKeep), tokenKeep, "The kept fraction must be in (0, 1].");
        if (!(headKeep > 0 && headKeep <= 1)) throw new ArgumentOutOfRangeException(nameof(SpAttenOptions.HeadKeep), headKeep, "The kept fraction must be in (0, 1].");
        if (options.HeadCount is int c && (c < 1 || c > input.Heads))
            throw new ArgumentOutOfRangeException(nameof(SpAttenOptions.HeadCount), c, $"The kept head count must be in [1, {input.Heads}] (the query heads).");
        if (options.HeadCount is not null && options.HeadKeep is not null)
            throw new ArgumentException("Give either HeadKeep (a fraction) or HeadCount (a count), not both.", nameof(options));
        if (sample < 1) throw new ArgumentOutOfRangeException(nameof(SpAttenOptions.QuerySample), sample, "The sample stride must be ≥ 1.");
        bool pruneHeads = headKeep < 1 || options.HeadCount is int count && count < input.Heads;
        if (pruneHeads && previous is null && values is null)
            throw new ArgumentException("Head pruning without a previous layer's state ranks the heads by this layer's output magnitude, which needs the values (use the Plan overload with values).", "values");
        int n = input.Sequences;
        if (previous is not null)
        {
            if (previous.KeptTokens.Length != n || previous.KeptHeads.Length != input.Heads)
                throw new ArgumentException($"The state covers {previous.KeptTokens.Length} sequences and {previous.KeptHeads.Length} heads; the input has {n} and {input.Heads}.", nameof(previous));
            for (int s = 0; s < n; s++)
                if (previous.KeptTokens[s].Length != input.KeyLength(s))
                    throw new ArgumentException($"Sequence {s}: the state has {previous.KeptTokens[s].Length} tokens; the input has {input.KeyLength(s)}.", nameof(previous));
        }
        float sc = SelectorMath.Scale(scale, input.Dim);
        return SparsePlan.Timed(() =>
        {
            var importance = new double[n][];
            var kept = new bool[n][];
            var heads = new bool[n][];
            var ql = new int[n];
            var kl = new int[n];
            double[] headImportance = previous is null ? new double[input.Heads] : (double[])previous.HeadImportance.Clone();
            for (int s = 0; s < n; s++)
            {
                ql[s] = input.QueryLength(s);
                kl[s] = input.KeyLength(s);
                importance[s] = previous is null ? new double[kl[s]] : (double[])previous.TokenImportance[s].Clone();
                kept[s] = previous is null ? AllTrue(kl[s]) : (bool[])previous.KeptTokens[s].Clone();
                heads[s] = previous is null ? AllTrue(input.Heads) : (bool[])previous.SequenceKeptHeads[s].Clone();
            }
            // This layer's attention, over the tokens and heads still kept, adds to the importance (the next layer's input);
            // with the values it also gives each head's output magnitude on the sampled rows (the one-layer head ranking).
            var layer = new double[n][];
            var headLayer = new double[n][];
            bool scoreHeads = pruneHeads && previous is null;
            SelectorMath.ForEach(n, s =>
            {
                layer[s] = new double[kl[s]];
                headLayer[s] = new double[input.Heads];
                var logits = new float[kl[s]];
                var output = new double[Math.Max(valueDim, 0)];
                for (int r = 0; r < ql[s]; r++)
                {
                    if (r % sample != 0 && r != ql[s] - 1) continue;
                    int end = Math.Clamp(input.QueryPosition(s, r) + 1, 0, kl[s]);
                    if (end == 0) continue;
                    for (int h = 0; h < input.Heads; h++)
                    {
                        if (!heads[s][h]) continue;
                        ReadOnlySpan<float> q = input.QueryRow(s, h, r);
                        Span<float> lg = logits.AsSpan(0, end);
                        for (int k = 0; k < end; k++) lg[k] = kept[s][k] ? sc * TensorPrimitives.Dot(q, input.KeyRow(s, h / input.GroupSize, k)) : float.NegativeInfinity;
                        float max = TensorPrimitives.Max(lg);
                        if (float.IsNegativeInfinity(max)) continue;
                        double z = 0;
                        for (int k = 0; k < end; k++) z += Math.Exp(lg[k] - max);
                        for (int k = 0; k < end; k++) if (kept[s][k]) layer[s][k] += Math.Exp(lg[k] - max) / z;
                        if (!scoreHeads) continue;
                        Array.Clear(output);
                        for (int k = 0; k < end; k++)
                        {
                            if (!kept[s][k]) continue;
                            double p = Math.Exp(lg[k] - max) / z;
                            ReadOnlySpan<float> v = ValueRow(input, values!, valueDim, s, h / input.GroupSize, k);
                            for (int i = 0; i < valueDim; i++) output[i] += p * v[i];
                        }
                        double magnitude = 0;
                        foreach (double x in output) magnitude += Math.Abs(x);
                        headLayer[s][h] += magnitude;
                    }
                }
            });
            for (int s = 0; s < n; s++)
            {
                for (int k = 0; k < kl[s]; k++) importance[s][k] += layer[s][k];
                // Prune by the importance known before this layer when there is one (the cascade), else by this layer's.
                double[] rank = previous is null ? layer[s] : previous.TokenImportance[s];
                Prune(kept[s], rank, tokenKeep, null);
                if (pruneHeads) Prune(heads[s], previous is null ? headLayer[s] : previous.HeadImportance, headKeep, options.HeadCount);
            }
            var state = new SpAttenState(importance, kept, headImportance, heads);
            var mask = new SpAttenMask(kept, heads, ql, kl);
            return new SparsePlan(input, Masks.And(Masks.Causal, mask), true, 0) { Tag = state };
        });
    }

    // The Dv values of key k of key head kvHead in sequence s (values laid out like the keys).
    private static ReadOnlySpan<float> ValueRow(SelectorInput input, float[] values, int valueDim, int s, int kvHead, int k)
    {
        long t = input.Offsets is SeqOffsets o ? o.Start(s) + (long)k : (long)s * input.TotalKeyLength + k;
        return new ReadOnlySpan<float>(values, checked((int)((t * input.KvHeads + kvHead) * valueDim)), valueDim);
    }

    /// <summary>The state a plan leaves for the next layer (add the layer's head magnitudes with <see cref="SpAttenState.AddHeadImportance"/>).</summary>
    /// <exception cref="ArgumentException">A plan of another method.</exception>
    public static SpAttenState StateOf(SparsePlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        return plan.Tag as SpAttenState ?? throw new ArgumentException("The plan was not made by SpAtten.", nameof(plan));
    }

    private static bool[] AllTrue(int n)
    {
        var a = new bool[n];
        Array.Fill(a, true);
        return a;
    }

    // Keeps the ⌈fraction·kept⌉ (or, given, the keepCount) most important of the still-kept entries (ties to the lower
    // index); never revives one.
    private static void Prune(bool[] kept, double[] importance, double fraction, int? keepCount)
    {
        int count = 0;
        foreach (bool b in kept) count += b ? 1 : 0;
        int keep = keepCount ?? Math.Max(count == 0 ? 0 : 1, (int)Math.Ceiling(fraction * count));
        if (keep >= count) return;
        var scores = new float[kept.Length];
        for (int i = 0; i < kept.Length; i++) scores[i] = kept[i] ? (float)importance[i] : float.NegativeInfinity;
        var chosen = new int[keep];
        int found = SelectorMath.TopK(scores, keep, chosen);
        Array.Clear(kept);
        for (int i = 0; i < found; i++) kept[chosen[i]] = true;
    }
}

/// <summary>
/// <c>attend run --method spatten</c>: one <see cref="SpAtten"/> layer. It scores its own attention on the sampled rows,
/// then prunes the tokens (<c>token-keep</c>) and, when <c>head-keep</c> asks, the heads by their output magnitude;
/// pruned heads output 0 (LSE −∞).
/// </summary>
public sealed class SpAttenMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("spatten", "sparse", "method",
        "SpAtten: Efficient Sparse Attention Architecture with Cascade Token and Head Pruning (Wang, Zhang, Han, HPCA 2021)", ["cpu", "cuda"], "implemented",
        "tokens ranked by attention probability received and heads by output magnitude Σ|o| (one layer: its own sampled rows); pruned heads output 0")
    {
        Parameters =
        [
            new("token-keep", "float", "0.5", "fraction of tokens kept"),
            new("head-keep", "float|int", "1", "heads kept: a fraction in (0, 1] of the heads, or a count ≥ 2 of heads (an integer above 1); ranked by Σ|output| on the sampled rows, pruned heads output 0"),
            new("query-sample", "int", "64", "every n-th query row scores importance"),
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        (double? headKeep, int? headCount) = HeadKeep(arguments);
        var options = new SpAttenOptions
        {
            TokenKeep = RoutingAdapter.OptionalDouble(arguments, "token-keep", double.Epsilon, 1),
            HeadKeep = headKeep,
            HeadCount = headCount,
            QuerySample = RoutingAdapter.OptionalInt(arguments, "query-sample", 1),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        if (headCount > inputs.Q.Dim(2))
            throw new ArgumentException($"Parameter 'head-keep' keeps {headCount} heads but q has {inputs.Q.Dim(2)} (dimension 2).", "head-keep");
        MethodTensor v = inputs.V;
        if (v.Dim(0) != inputs.K.Dim(0) || v.Dim(1) != inputs.K.Dim(1) || v.Dim(2) != inputs.K.Dim(2))
            throw new ArgumentException($"v {v} must match k {inputs.K} in batch, tokens and heads.", "v");
        SparsePlan plan = SpAtten.Plan(SelectorInput.From(inputs), v.Data, v.Dim(3), options, scale);
        MethodResult result = RoutingAdapter.Run(inputs, plan, scale);
        bool[][] heads = SpAtten.StateOf(plan).SequenceKeptHeads;
        result.Report.Add(new("kept heads", string.Join("; ", heads.Select(seq => string.Join(",", Enumerable.Range(0, seq.Length).Where(h => seq[h]))))));
        return result;
    }

    // head-keep: a fraction in (0, 1], or an integer count above 1.
    private static (double? Fraction, int? Count) HeadKeep(MethodArguments arguments)
    {
        string text = arguments.GetString("head-keep", "").Trim();
        if (text.Length == 0) return (null, null);
        var invariant = System.Globalization.CultureInfo.InvariantCulture;
        if (int.TryParse(text, System.Globalization.NumberStyles.None, invariant, out int count) && count > 1) return (null, count);
        if (double.TryParse(text, System.Globalization.NumberStyles.Float, invariant, out double fraction) && fraction > 0 && fraction <= 1) return (fraction, null);
        throw new ArgumentException($"Parameter 'head-keep' must be a fraction in (0, 1] or a head count ≥ 2; got '{text}'.", "head-keep");
    }
}
