using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Kimi Delta Attention (Kimi Team, "Kimi Linear: An Expressive, Efficient Attention Architecture", 2025): the gated
/// delta rule with a per-channel gate, <c>S_t = (I − β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ</c>,
/// <c>o_t = S_tᵀ q_t</c>, q and k L2-normalised. Inputs <c>g</c> <c>[B, T, H, Dk]</c> = log α (≤ 0) and <c>beta</c>
/// <c>[B, T, H]</c> (optional; default 1).
/// Deviations: the paper's chunk kernel is a specialised diagonal-plus-low-rank (DPLR) form; here the general chunked
/// gated-delta form (gates folded into q/k relative to the chunk start, UT transform for the delta rule) computes the
/// same recurrence. Gate/β projections, short convolutions and the output gate/norm belong to the layer.
/// </summary>
public sealed class KimiDeltaAttentionMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "kda";

    /// <summary>The paper.</summary>
    public const string Paper = "Kimi Linear: An Expressive, Efficient Attention Architecture (Kimi Team, 2025)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "Kimi Delta Attention: gated delta rule with a per-channel decay (inputs g = log α [B,T,H,Dk], beta [B,T,H])")
    {
        Parameters = [FormParameter, ChunkParameter, new MethodParameter("scale", "float", "1/sqrt(Dk)", "multiplies q (after the L2 norm)")],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        float scale = (float)arguments.GetDouble("scale", 1 / Math.Sqrt(shape.KeyDim));
        float[] gate = inputs.Get("g", "log decay gates [B, T, H, Dk], each ≤ 0").Data;
        float[]? beta = OptionalInput(inputs, "beta", (long)shape.Batch * shape.Tokens * shape.Heads, "[B, T, H]");
        return new LinearCall(new LinearAttentionOptions
        {
            FeatureMap = FeatureMaps.L2Norm, Decay = LinearDecay.ChannelGate, Update = LinearUpdate.GatedDelta, Scale = scale,
        }) { Gate = gate, Beta = beta };
    }
}
