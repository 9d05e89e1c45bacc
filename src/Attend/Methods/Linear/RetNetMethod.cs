using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// RetNet-style retention with a fixed decay per head (Sun et al., "Retentive Network: A Successor to Transformer for
/// Large Language Models", 2023): <c>S_t = γ_h S_{t-1} + k_t v_tᵀ</c>, <c>o_t = S_tᵀ q_t</c>, multi-scale decays
/// γ_h = 1 − 2^(−5−h) (h = 0..H−1, the paper's schedule for H heads), keys scaled by 1/√d.
/// Deviations: the xPos/rotary rotation of q and k is left to the caller (apply it to the inputs); the per-head
/// GroupNorm after retention is offered as an RMS norm without learned gain (<c>norm=rms</c>; default none) — it
/// subtracts no mean; the swish output gate belongs to the layer, not to attention.
/// </summary>
public sealed class RetNetMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "retnet";

    /// <summary>The paper.</summary>
    public const string Paper = "Retentive Network: A Successor to Transformer for Large Language Models (Sun et al., 2023)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu", "cuda"], "implemented",
        "retention: fixed multi-scale decay per head, parallel (chunked) and recurrent forms")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("gamma", "float", "1-2^(-5-h)", "one decay for every head instead of the multi-scale schedule"),
            new MethodParameter("norm", "none|rms", "none", "RMS-normalise each head's output (stands in for GroupNorm)"),
            new MethodParameter("scale", "float", "1/sqrt(Dk)", "multiplies q"),
        ],
    };

    /// <summary>RetNet's decay of head <paramref name="head"/>: 1 − 2^(−5−h).</summary>
    public static float Decay(int head) => 1f - MathF.Pow(2f, -5f - head);

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        var gamma = new float[shape.Heads];
        bool fixedGamma = arguments.Has("gamma");
        float one = (float)arguments.GetDouble("gamma", 0.9, min: double.Epsilon, max: 1);
        for (int h = 0; h < shape.Heads; h++) gamma[h] = fixedGamma ? one : Decay(h);
        bool rms = arguments.GetChoice("norm", "none", "none", "rms") == "rms";
        float scale = (float)arguments.GetDouble("scale", 1 / Math.Sqrt(shape.KeyDim));
        return new LinearCall(new LinearAttentionOptions
        {
            Decay = LinearDecay.FixedPerHead, HeadDecay = gamma, Scale = scale,
            Normalization = rms ? LinearNormalization.RmsNorm : LinearNormalization.None,
        });
    }
}
