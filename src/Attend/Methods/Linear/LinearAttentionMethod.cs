using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Linear attention, the family's baseline: <c>o_t = φ(q_t)ᵀ Σ_{s≤t} φ(k_s) v_sᵀ / (φ(q_t)ᵀ Σ_{s≤t} φ(k_s) + ε)</c> with
/// φ = elu + 1 (Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast Autoregressive Transformers with
/// Linear Attention", ICML 2020) or φ = ReLU.
/// Deviations: ε = 1e-6 is added to the denominator (the paper divides by the sum alone; with ReLU the sum can be 0);
/// no 1/√d scale (as in the paper; <c>scale</c> sets one); the denominator can be switched off (<c>normalize=false</c>).
/// Runs on <see cref="LinearAttention"/>: no decay, additive update, denominator normalisation.
/// </summary>
public sealed class LinearAttentionMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "linear-attention";

    /// <summary>The paper.</summary>
    public const string Paper = "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention (Katharopoulos et al., 2020)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "causal linear attention with elu+1 or ReLU features and the running denominator")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("map", "elu|relu", "elu", "feature map φ"),
            new MethodParameter("normalize", "bool", "true", "divide by φ(q)ᵀΣφ(k) (the state gains a z column)"),
            new MethodParameter("scale", "float", "1", "multiplies φ(q)"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        FeatureMap map = arguments.GetChoice("map", "elu", "elu", "relu") == "relu" ? FeatureMaps.Relu : FeatureMaps.EluPlusOne;
        bool normalize = arguments.GetBool("normalize", true);
        float scale = (float)arguments.GetDouble("scale", 1);
        return new LinearCall(new LinearAttentionOptions
        {
            FeatureMap = map, Scale = scale,
            Normalization = normalize ? LinearNormalization.Denominator : LinearNormalization.None,
        });
    }
}
