namespace Attend.Linear;

/// <summary>Which of the three agreeing forms computes a linear-attention call.</summary>
public enum LinearForm
{
    /// <summary>The quadratic form in float64 (<see cref="Reference.ReferenceLinearAttention"/>): the oracle; O(T²) per sequence.</summary>
    Naive,

    /// <summary>The chunked parallel form (prefill and training): exact products inside a chunk, the state passed between chunks.</summary>
    Chunked,

    /// <summary>The recurrent step form (decode): one state update per token, constant memory.</summary>
    Recurrent,
}

/// <summary>How the state decays between tokens: <c>S_t = diag(α_t) S_{t-1} + …</c>.</summary>
public enum LinearDecay
{
    /// <summary>No decay (α = 1): plain linear attention, DeltaNet.</summary>
    None,

    /// <summary>
    /// A fixed scalar per head, <see cref="LinearAttentionOptions.HeadDecay"/> γ_h ∈ (0, 1] (RetNet, Lightning Attention,
    /// TransNormer).
    /// </summary>
    FixedPerHead,

    /// <summary>A data-dependent scalar per token and head: input gate <c>[B, T, H]</c> of log α ≤ 0 (Gated DeltaNet, Mamba-2 style).</summary>
    ScalarGate,

    /// <summary>A data-dependent gate per token, head and key channel: input gate <c>[B, T, H, Df]</c> of log α ≤ 0 (GLA, Kimi Delta Attention).</summary>
    ChannelGate,
}

/// <summary>How a token writes into the state.</summary>
public enum LinearUpdate
{
    /// <summary><c>S_t = diag(α_t) S_{t-1} + φ(k_t) v_tᵀ</c>.</summary>
    Additive,

    /// <summary>
    /// The delta rule without decay: <c>S_t = S_{t-1} + β_t φ(k_t) (v_t − S_{t-1}ᵀ φ(k_t))ᵀ</c> (DeltaNet). Requires
    /// <see cref="LinearDecay.None"/>.
    /// </summary>
    Delta,

    /// <summary>
    /// The gated delta rule: <c>S_t = (I − β_t φ(k_t) φ(k_t)ᵀ) diag(α_t) S_{t-1} + β_t φ(k_t) v_tᵀ</c> (Gated DeltaNet with a
    /// scalar gate, Kimi Delta Attention with a channel gate). Requires a decay other than <see cref="LinearDecay.None"/>.
    /// </summary>
    GatedDelta,
}

/// <summary>How the read-out <c>o_t = S_tᵀ φ(q_t)</c> is normalised.</summary>
public enum LinearNormalization
{
    /// <summary>No normalisation (RetNet, GLA, DeltaNet: a norm layer outside attention, if any).</summary>
    None,

    /// <summary>
    /// Divide by <c>φ(q_t)ᵀ z_t + ε</c> where <c>z_t</c> is the (decayed) sum of φ(k): the original linear attention.
    /// The state then carries z as an extra value column: shape <c>[N, H, Df, Dv + 1]</c>. Additive update only.
    /// </summary>
    Denominator,

    /// <summary>
    /// RMS-normalise each head's output over its value dim (no learned gain): TransNormer's NormAttention
    /// (<c>o = RMSNorm(φ(q)ᵀ S)</c>).
    /// </summary>
    RmsNorm,
}

/// <summary>
/// Options of one <see cref="LinearAttention"/> call. Every field is nullable; null means the documented default.
/// </summary>
public sealed record LinearAttentionOptions
{
    /// <summary>The form; default <see cref="LinearForm.Chunked"/>.</summary>
    public LinearForm? Form { get; init; }

    /// <summary>The feature map φ applied to queries and keys; default <see cref="FeatureMaps.Identity"/>.</summary>
    public FeatureMap? FeatureMap { get; init; }

    /// <summary>Multiplies φ(q) (after the map); default 1.</summary>
    public float? Scale { get; init; }

    /// <summary>The decay; default <see cref="LinearDecay.None"/>, or <see cref="LinearDecay.FixedPerHead"/> when <see cref="HeadDecay"/> is set.</summary>
    public LinearDecay? Decay { get; init; }

    /// <summary>γ per query head, each in (0, 1], for <see cref="LinearDecay.FixedPerHead"/>.</summary>
    public IReadOnlyList<float>? HeadDecay { get; init; }

    /// <summary>The update rule; default <see cref="LinearUpdate.Additive"/>.</summary>
    public LinearUpdate? Update { get; init; }

    /// <summary>The normalisation; default <see cref="LinearNormalization.None"/>.</summary>
    public LinearNormalization? Normalization { get; init; }

    /// <summary>ε of the denominator or the RMS norm; default 1e-6.</summary>
    public float? Epsilon { get; init; }

    /// <summary>Tokens per chunk of the chunked form (1..1024); default 64.</summary>
    public int? ChunkSize { get; init; }

    /// <summary>Worker threads; default all cores.</summary>
    public int? Threads { get; init; }

    /// <summary>
    /// Where the chunked or recurrent form runs: null or <c>cpu</c> for this engine, else a registered
    /// <see cref="ILinearAttentionBackend"/> (e.g. <c>cuda</c> once <c>Attend.Cuda.CudaBackend.Register()</c> ran). The naive form
    /// always runs on the CPU.
    /// </summary>
    public string? Backend { get; init; }
}

/// <summary>
/// The dimensions of one linear-attention call: q <c>[B, T, H, Dk]</c>, k <c>[B, T, Hkv, Dk]</c>, v <c>[B, T, Hkv, Dv]</c>
/// (Hkv divides H; key/value head <c>h / (H / Hkv)</c> serves query head h). For a varlen batch B = 1 and T is the packed length.
/// </summary>
/// <param name="Batch">B.</param>
/// <param name="Tokens">T.</param>
/// <param name="Heads">H (query heads; the state has one matrix per query head).</param>
/// <param name="KvHeads">Hkv.</param>
/// <param name="KeyDim">Dk, the head dim of q and k before the feature map.</param>
/// <param name="ValueDim">Dv.</param>
public readonly record struct LinearShape(int Batch, int Tokens, int Heads, int KvHeads, int KeyDim, int ValueDim)
{
    /// <summary>A shape with as many key/value heads as query heads and one head dim.</summary>
    public static LinearShape Mha(int batch, int tokens, int heads, int dim) => new(batch, tokens, heads, heads, dim, dim);
}

/// <summary>
/// The inputs of one linear-attention call. Q, K, V are dense <c>[B, T, H(kv), D]</c> float32; the others are optional
/// (an empty span means absent).
/// </summary>
public readonly ref struct LinearInputs
{
    /// <summary>The dimensions.</summary>
    public required LinearShape Shape { get; init; }

    /// <summary>Queries <c>[B, T, H, Dk]</c>.</summary>
    public required ReadOnlySpan<float> Q { get; init; }

    /// <summary>Keys <c>[B, T, Hkv, Dk]</c>.</summary>
    public required ReadOnlySpan<float> K { get; init; }

    /// <summary>Values <c>[B, T, Hkv, Dv]</c>.</summary>
    public required ReadOnlySpan<float> V { get; init; }

    /// <summary>
    /// Log decay gates (log α ≤ 0): <c>[B, T, H]</c> for <see cref="LinearDecay.ScalarGate"/>, <c>[B, T, H, Df]</c> for
    /// <see cref="LinearDecay.ChannelGate"/> (Df = the feature map's width); empty otherwise.
    /// </summary>
    public ReadOnlySpan<float> Gate { get; init; }

    /// <summary>Delta-rule write strengths β <c>[B, T, H]</c> (usually in (0, 1]); empty means β = 1. Delta rules only.</summary>
    public ReadOnlySpan<float> Beta { get; init; }

    /// <summary>The initial state <c>[N, H, Df, Dv']</c> (N = B, or the number of sequences when varlen; Dv' = Dv, +1 with a denominator); empty means zero.</summary>
    public ReadOnlySpan<float> InitialState { get; init; }

    /// <summary>Varlen offsets into the token axis (then B = 1); each sequence starts from its own initial state.</summary>
    public SeqOffsets? Offsets { get; init; }
}

/// <summary>The gradients one <see cref="LinearAttention.Backward"/> call writes (an empty span: not wanted).</summary>
public readonly ref struct LinearGradients
{
    /// <summary>dL/dq <c>[B, T, H, Dk]</c>.</summary>
    public Span<float> Q { get; init; }

    /// <summary>dL/dk <c>[B, T, Hkv, Dk]</c> (summed over the query heads of a group).</summary>
    public Span<float> K { get; init; }

    /// <summary>dL/dv <c>[B, T, Hkv, Dv]</c>.</summary>
    public Span<float> V { get; init; }

    /// <summary>dL/d(log gate), shaped like <see cref="LinearInputs.Gate"/>.</summary>
    public Span<float> Gate { get; init; }

    /// <summary>dL/dβ <c>[B, T, H]</c>.</summary>
    public Span<float> Beta { get; init; }

    /// <summary>dL/d(initial state), shaped like the state.</summary>
    public Span<float> InitialState { get; init; }
}
