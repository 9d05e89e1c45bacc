using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Lightning Attention (Qin, Sun, Li, Shen, Sun, Zhong, "Various Lengths, Constant Speed: Efficient Language Modeling
/// with Lightning Attention", ICML 2024; the attention of TransNormerLLM): causal linear attention in blocks — inside
/// a block the masked product <c>(QKᵀ ⊙ M) V</c>, across blocks <c>Q · (Σ KᵀV)</c> — which is exactly the chunked form of
/// <see cref="LinearAttention"/> (no cumsum). No decay by default (<c>decay=tnl</c> adds TransNormerLLM's).
/// Deviations: the first Lightning Attention of the 2023 TransNormerLLM report tiled the quadratic left product; the
/// catalog's and the 2024 paper's block form with a carried state is what runs here. Normalisation (SRMSNorm) and
/// gating belong to the layer (<c>norm=rms</c> offers a parameter-free RMS norm).
/// </summary>
public sealed class LightningAttentionMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "lightning-attention";

    /// <summary>The paper.</summary>
    public const string Paper = "Various Lengths, Constant Speed: Efficient Language Modeling with Lightning Attention (Qin et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "intra-block masked QKᵀV + inter-block KᵀV state (Lightning Attention); optional TNL decay")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("decay", "none|tnl", "none", "tnl: TransNormerLLM's per-head decay λ_h (see transnormerllm)"),
            new MethodParameter("layer", "int", "0", "layer index l for the tnl decay"),
            new MethodParameter("layers", "int", "1", "layer count L for the tnl decay"),
            new MethodParameter("norm", "none|rms", "none", "RMS-normalise each head's output"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape) =>
        new(TransNormerLlmMethod.Options(arguments, shape, defaultDecay: "none", defaultNorm: "none", map: FeatureMaps.Identity));
}

/// <summary>
/// Lightning Attention-2 (Qin, Sun, Li, Shen, Sun, Zhong, "Lightning Attention-2: A Free Lunch for Handling Unlimited
/// Sequence Lengths in Large Language Models", 2024): the tiled intra-block / inter-block split of linear attention
/// with a per-head decay λ, <c>o_t = Σ_{s≤t} λ^{t−s} q_tᵀk_s v_s</c>, forward and backward in blocks.
/// Deviations: the decay defaults to TransNormerLLM's schedule (<c>decay=tnl</c>); blocks of 64 tokens by default
/// (<c>chunk</c>; the paper sizes blocks to the GPU's SRAM). Forward and backward are both chunked matrix products.
/// </summary>
public sealed class LightningAttention2Method : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "lightning-attention-2";

    /// <summary>The paper.</summary>
    public const string Paper = "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence Lengths in Large Language Models (Qin et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "Lightning Attention-2: intra/inter-block linear attention with per-head decay")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("decay", "none|tnl", "tnl", "per-head decay λ_h (tnl: TransNormerLLM's schedule)"),
            new MethodParameter("layer", "int", "0", "layer index l for the tnl decay"),
            new MethodParameter("layers", "int", "1", "layer count L for the tnl decay"),
            new MethodParameter("norm", "none|rms", "none", "RMS-normalise each head's output"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape) =>
        new(TransNormerLlmMethod.Options(arguments, shape, defaultDecay: "tnl", defaultNorm: "none", map: FeatureMaps.Identity));
}
