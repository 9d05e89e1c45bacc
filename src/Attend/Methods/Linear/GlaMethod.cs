using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Gated Linear Attention (Yang, Wang, Shen, Panda, Kim, "Gated Linear Attention Transformers with Hardware-Efficient
/// Training", ICML 2024): <c>S_t = diag(α_t) S_{t-1} + k_t v_tᵀ</c>, <c>o_t = S_tᵀ q_t</c>, with a data-dependent gate
/// per key channel. Input <c>g</c> <c>[B, T, H, Dk]</c> holds log α (≤ 0; the paper computes it as
/// log σ(x W₁W₂ + b)^{1/τ}, τ = 16, in the layer). Chunked form: intra-chunk products with the gates folded into q and k
/// relative to the chunk start (the paper's secondary-chunk log-space products are replaced by one exponential per
/// score only in chunks whose cumulative gate falls below e^-60).
/// Deviations: the gate projection, the output gate and the per-head norm belong to the layer and are not computed
/// here; q is scaled by 1/√Dk by default as in the authors' code.
/// </summary>
public sealed class GlaMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "gla";

    /// <summary>The paper.</summary>
    public const string Paper = "Gated Linear Attention Transformers with Hardware-Efficient Training (Yang et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "gated linear attention: data-dependent decay per key channel (input g = log α, [B,T,H,Dk])")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("scale", "float", "1/sqrt(Dk)", "multiplies q"),
            new MethodParameter("norm", "none|rms", "none", "RMS-normalise each head's output"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        float scale = (float)arguments.GetDouble("scale", 1 / Math.Sqrt(shape.KeyDim));
        bool rms = arguments.GetChoice("norm", "none", "none", "rms") == "rms";
        float[] gate = inputs.Get("g", "log decay gates [B, T, H, Dk], each ≤ 0").Data;
        return new LinearCall(new LinearAttentionOptions
        {
            Decay = LinearDecay.ChannelGate, Scale = scale,
            Normalization = rms ? LinearNormalization.RmsNorm : LinearNormalization.None,
        }) { Gate = gate };
    }
}
