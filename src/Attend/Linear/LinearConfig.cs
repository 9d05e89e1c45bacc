namespace Attend.Linear;

/// <summary>
/// One call's inputs and options checked and resolved (defaults filled, dimensions derived), shared by the float32
/// engine and the float64 reference so both compute the same definition.
/// </summary>
internal sealed class LinearConfig
{
    public required LinearShape Shape { get; init; }
    public required LinearForm Form { get; init; }
    public required FeatureMap Map { get; init; }
    public required float Scale { get; init; }
    public required LinearDecay Decay { get; init; }
    /// <summary>log γ_h per query head (FixedPerHead), else null.</summary>
    public required float[]? LogHeadDecay { get; init; }
    public required LinearUpdate Update { get; init; }
    public required LinearNormalization Normalization { get; init; }
    public required float Epsilon { get; init; }
    public required int ChunkSize { get; init; }
    public required int Threads { get; init; }
    public required SeqOffsets? Offsets { get; init; }
    public required bool HasGate { get; init; }
    public required bool HasBeta { get; init; }
    public required bool HasInitialState { get; init; }

    /// <summary>Df: width of φ(q), φ(k) and rows of the state.</summary>
    public int FeatureDim => Map.OutputDim(Shape.KeyDim);

    /// <summary>Columns of the state: Dv, plus one (the normaliser z) with a denominator.</summary>
    public int StateColumns => Shape.ValueDim + (Normalization == LinearNormalization.Denominator ? 1 : 0);

    /// <summary>N: states per head (batch entries, or sequences when varlen).</summary>
    public int Sequences => Offsets?.Count ?? Shape.Batch;

    public long StateLength => (long)Sequences * Shape.Heads * FeatureDim * StateColumns;

    public bool IsDelta => Update != LinearUpdate.Additive;

    /// <summary>Batch row and token range [start, end) of sequence <paramref name="n"/>.</summary>
    public void Range(int n, out int batch, out int start, out int end)
    {
        if (Offsets is { } o) { batch = 0; start = o.Start(n); end = start + o.Length(n); }
        else { batch = n; start = 0; end = Shape.Tokens; }
    }

    /// <summary>Checks <paramref name="inputs"/> against <paramref name="options"/> and resolves the defaults.</summary>
    /// <exception cref="ArgumentException">A mis-shaped input or an invalid option; the message names it and the dimension.</exception>
    public static LinearConfig Resolve(in LinearInputs inputs, LinearAttentionOptions? options)
    {
        options ??= new LinearAttentionOptions();
        LinearShape s = inputs.Shape;
        if (s.Batch < 0 || s.Tokens < 0) throw new ArgumentException($"Batch ({s.Batch}) and tokens ({s.Tokens}) must not be negative.", nameof(inputs));
        if (s.Heads <= 0 || s.KvHeads <= 0 || s.Heads % s.KvHeads != 0)
            throw new ArgumentException($"Heads H = {s.Heads} must be a positive multiple of key/value heads Hkv = {s.KvHeads}.", nameof(inputs));
        if (s.KeyDim <= 0 || s.ValueDim <= 0)
            throw new ArgumentException($"Head dims must be positive; got Dk = {s.KeyDim}, Dv = {s.ValueDim}.", nameof(inputs));
        CheckLength("q", inputs.Q.Length, (long)s.Batch * s.Tokens * s.Heads * s.KeyDim, "[B, T, H, Dk]");
        CheckLength("k", inputs.K.Length, (long)s.Batch * s.Tokens * s.KvHeads * s.KeyDim, "[B, T, Hkv, Dk]");
        CheckLength("v", inputs.V.Length, (long)s.Batch * s.Tokens * s.KvHeads * s.ValueDim, "[B, T, Hkv, Dv]");
        if (inputs.Offsets is { } offsets)
        {
            if (s.Batch != 1) throw new ArgumentException($"A varlen call (offsets given) needs B = 1; got B = {s.Batch}.", nameof(inputs));
            if (offsets.TotalTokens != s.Tokens)
                throw new ArgumentException($"Offsets cover {offsets.TotalTokens} tokens but T = {s.Tokens}.", nameof(inputs));
        }

        FeatureMap map = options.FeatureMap ?? FeatureMaps.Identity;
        int df = map.OutputDim(s.KeyDim);
        if (df <= 0) throw new ArgumentException($"Feature map '{map.Name}' gives width {df} for Dk = {s.KeyDim}.", nameof(options));

        float scale = options.Scale ?? 1f;
        if (!float.IsFinite(scale)) throw new ArgumentException($"Scale must be finite; got {scale}.", nameof(options));

        LinearDecay decay = options.Decay ?? (options.HeadDecay != null ? LinearDecay.FixedPerHead : LinearDecay.None);
        float[]? logHeadDecay = null;
        if (decay == LinearDecay.FixedPerHead)
        {
            IReadOnlyList<float> gamma = options.HeadDecay
                ?? throw new ArgumentException("Decay FixedPerHead needs HeadDecay (one γ per query head).", nameof(options));
            if (gamma.Count != s.Heads)
                throw new ArgumentException($"HeadDecay has {gamma.Count} values; it needs one per query head (H = {s.Heads}).", nameof(options));
            logHeadDecay = new float[s.Heads];
            for (int h = 0; h < s.Heads; h++)
            {
                if (!(gamma[h] > 0f && gamma[h] <= 1f))
                    throw new ArgumentOutOfRangeException(nameof(options), $"HeadDecay[{h}] = {gamma[h]}: a decay must be in (0, 1] (negative or zero decays are not allowed).");
                logHeadDecay[h] = MathF.Log(gamma[h]);
            }
        }
        else if (options.HeadDecay != null)
            throw new ArgumentException($"HeadDecay is given but the decay is {decay}; it applies to FixedPerHead only.", nameof(options));

        bool gated = decay is LinearDecay.ScalarGate or LinearDecay.ChannelGate;
        if (gated)
        {
            long want = (long)s.Batch * s.Tokens * s.Heads * (decay == LinearDecay.ChannelGate ? df : 1);
            string shape = decay == LinearDecay.ChannelGate ? $"[B, T, H, Df] with Df = {df} (the feature width of the state)" : "[B, T, H]";
            CheckLength("gate", inputs.Gate.Length, want, shape);
            ReadOnlySpan<float> gate = inputs.Gate;
            for (int i = 0; i < gate.Length; i++)
                if (!(gate[i] <= 0f))
                    throw new ArgumentOutOfRangeException("gate", $"gate[{i}] = {gate[i]}: log decay gates must be ≤ 0 (a decay in (0, 1]) and not NaN.");
        }
        else if (!inputs.Gate.IsEmpty)
            throw new ArgumentException($"A gate was given but the decay is {decay}; use ScalarGate or ChannelGate.", nameof(inputs));

        LinearUpdate update = options.Update ?? LinearUpdate.Additive;
        if (update == LinearUpdate.Delta && decay != LinearDecay.None)
            throw new ArgumentException($"Update Delta takes no decay (got {decay}); use GatedDelta.", nameof(options));
        if (update == LinearUpdate.GatedDelta && decay == LinearDecay.None)
            throw new ArgumentException("Update GatedDelta needs a decay (FixedPerHead, ScalarGate or ChannelGate).", nameof(options));
        if (update == LinearUpdate.Additive && !inputs.Beta.IsEmpty)
            throw new ArgumentException("beta is given but the update is Additive; β belongs to the delta rules.", nameof(inputs));
        if (!inputs.Beta.IsEmpty)
        {
            CheckLength("beta", inputs.Beta.Length, (long)s.Batch * s.Tokens * s.Heads, "[B, T, H]");
            // The transition I − β k kᵀ (unit k) has eigenvalue 1 − β along k: inside [0, 2] it never amplifies the state;
            // outside it (a negative β, say) the state grows geometrically and a long run overflows.
            ReadOnlySpan<float> beta = inputs.Beta;
            for (int i = 0; i < beta.Length; i++)
                if (!(beta[i] >= 0f && beta[i] <= 2f))
                    throw new ArgumentOutOfRangeException("beta", $"beta[{i}] = {beta[i]}: β must be in [0, 2] (the delta rule's I − βkkᵀ has eigenvalue 1 − β along k) and not NaN.");
        }

        LinearNormalization norm = options.Normalization ?? LinearNormalization.None;
        if (norm == LinearNormalization.Denominator && update != LinearUpdate.Additive)
            throw new ArgumentException($"A denominator needs the Additive update; the {update} rule has no normaliser sum.", nameof(options));
        float eps = options.Epsilon ?? 1e-6f;
        if (!(eps >= 0f) || !float.IsFinite(eps)) throw new ArgumentException($"Epsilon must be finite and ≥ 0; got {eps}.", nameof(options));

        int chunk = options.ChunkSize ?? 64;
        if (chunk < 1 || chunk > 1024) throw new ArgumentOutOfRangeException(nameof(options), $"ChunkSize must be in [1, 1024]; got {chunk}.");
        int threads = options.Threads ?? Environment.ProcessorCount;
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(options), $"Threads must be ≥ 1; got {threads}.");

        var config = new LinearConfig
        {
            Shape = s, Form = options.Form ?? LinearForm.Chunked, Map = map, Scale = scale, Decay = decay,
            LogHeadDecay = logHeadDecay, Update = update, Normalization = norm, Epsilon = eps, ChunkSize = chunk,
            Threads = threads, Offsets = inputs.Offsets, HasGate = gated, HasBeta = !inputs.Beta.IsEmpty,
            HasInitialState = !inputs.InitialState.IsEmpty,
        };
        if (!inputs.InitialState.IsEmpty)
            CheckLength("initial state", inputs.InitialState.Length, config.StateLength,
                $"[N = {config.Sequences}, H = {s.Heads}, Df = {df}, Dv' = {config.StateColumns}] (Df is the feature map's width)");
        return config;
    }

    /// <summary>Checks an output or gradient span: empty (not wanted) when <paramref name="optional"/>, else exactly <paramref name="want"/> long.</summary>
    public static void CheckOutput(string name, int length, long want, string shape, bool optional)
    {
        if (optional && length == 0) return;
        CheckLength(name, length, want, shape);
    }

    private static void CheckLength(string name, long length, long want, string shape)
    {
        if (length != want)
            throw new ArgumentException($"'{name}' has {length} elements; {shape} needs {want}.", name);
    }
}
