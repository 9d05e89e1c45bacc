using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// DeltaNet (Schlag, Irie, Schmidhuber 2021; the parallel chunked training of Yang, Wang, Zhang, Shen, Kim,
/// "Parallelizing Linear Transformers with the Delta Rule over Sequence Length", NeurIPS 2024):
/// <c>S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ</c>, <c>o_t = S_tᵀ q_t</c>, q and k L2-normalised. Chunked form: the
/// UT transform <c>U = (I + diag(β) L)⁻¹ diag(β)(V − K S)</c> inside each chunk, then the additive chunk form on U.
/// Input <c>beta</c> <c>[B, T, H]</c> (optional; default 1).
/// Deviations: the SiLU before the L2 norm, the short convolutions and the output norm belong to the layer; q is
/// scaled by 1/√Dk by default as in the authors' code.
/// </summary>
public sealed class DeltaNetMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "deltanet";

    /// <summary>The paper.</summary>
    public const string Paper = "Parallelizing Linear Transformers with the Delta Rule over Sequence Length (Yang et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "delta rule: S += β k (v − Sᵀk)ᵀ, L2-normalised q/k (input beta [B,T,H], default 1)")
    {
        Parameters = [FormParameter, ChunkParameter, new MethodParameter("scale", "float", "1/sqrt(Dk)", "multiplies q (after the L2 norm)")],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        float scale = (float)arguments.GetDouble("scale", 1 / Math.Sqrt(shape.KeyDim));
        float[]? beta = OptionalInput(inputs, "beta", (long)shape.Batch * shape.Tokens * shape.Heads, "[B, T, H]");
        return new LinearCall(new LinearAttentionOptions { FeatureMap = FeatureMaps.L2Norm, Update = LinearUpdate.Delta, Scale = scale }) { Beta = beta };
    }
}
