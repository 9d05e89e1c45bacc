using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Gated DeltaNet (Yang, Kautz, Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025):
/// <c>S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ</c>, <c>o_t = S_tᵀ q_t</c>, a scalar data-dependent decay per
/// token and head, q and k L2-normalised. Inputs <c>g</c> <c>[B, T, H]</c> = log α (≤ 0) and <c>beta</c> <c>[B, T, H]</c>
/// (optional; default 1).
/// Deviations: the gate and β projections, short convolutions and output gate/norm belong to the layer; q is scaled
/// by 1/√Dk by default as in the authors' code.
/// </summary>
public sealed class GatedDeltaNetMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "gated-deltanet";

    /// <summary>The paper.</summary>
    public const string Paper = "Gated Delta Networks: Improving Mamba2 with Delta Rule (Yang, Kautz, Hatamizadeh, 2025)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "gated delta rule with a scalar decay per token and head (inputs g = log α [B,T,H], beta [B,T,H])")
    {
        Parameters = [FormParameter, ChunkParameter, new MethodParameter("scale", "float", "1/sqrt(Dk)", "multiplies q (after the L2 norm)")],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        float scale = (float)arguments.GetDouble("scale", 1 / Math.Sqrt(shape.KeyDim));
        float[] gate = inputs.Get("g", "log decay gates [B, T, H], each ≤ 0").Data;
        float[]? beta = OptionalInput(inputs, "beta", (long)shape.Batch * shape.Tokens * shape.Heads, "[B, T, H]");
        return new LinearCall(new LinearAttentionOptions
        {
            FeatureMap = FeatureMaps.L2Norm, Decay = LinearDecay.ScalarGate, Update = LinearUpdate.GatedDelta, Scale = scale,
        }) { Gate = gate, Beta = beta };
    }
}
