using Attend.Linear;
using Attend.Methods.Softmax;

namespace Attend.Methods.Linear;

/// <summary>
/// TransNormer (Qin, Han, Sun, Li, Kong, Barnes, Zhong, "The Devil in Linear Transformer", EMNLP 2022). Two attentions:
/// <c>attention=norm</c> (NormAttention, later layers): kernel linear attention without the denominator, whose output
/// is normalised instead, <c>o = Norm(φ(Q)(φ(K)ᵀV))</c>, φ = 1 + elu (the authors' code default); and
/// <c>attention=diag</c> (DiagAttention, early layers): exact softmax attention restricted to non-overlapping
/// diagonal blocks of <c>block</c> tokens (causal inside), computed by the softmax family (<see cref="Attention"/>).
/// Deviations: the norm is a parameter-free RMS norm per head (the paper uses a LayerNorm/RMSNorm with learned gain,
/// part of the layer); DiagAttention does not take varlen batches (the block mask is global); DiagAttention has no
/// recurrent state, so it returns no <c>state</c> and ignores <c>form</c>/<c>chunk</c> beyond validating them.
/// </summary>
public sealed class TransNormerMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "transnormer";

    /// <summary>The paper.</summary>
    public const string Paper = "The Devil in Linear Transformer (Qin et al., 2022)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "NormAttention (linear attention, output norm instead of denominator) or DiagAttention (block-diagonal softmax)")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("attention", "norm|diag", "norm", "NormAttention or DiagAttention"),
            new MethodParameter("map", "elu|relu", "elu", "feature map of NormAttention"),
            new MethodParameter("block", "int", "64", "DiagAttention block size"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        string attention = arguments.GetChoice("attention", "norm", "norm", "diag");
        FeatureMap map = arguments.GetChoice("map", "elu", "elu", "relu") == "relu" ? FeatureMaps.Relu : FeatureMaps.EluPlusOne;
        int block = arguments.GetInt("block", 64, 1);
        return new LinearCall(new LinearAttentionOptions { FeatureMap = map, Normalization = LinearNormalization.RmsNorm })
        {
            Instead = attention == "diag" ? (i, s) => DiagAttention(i, s, block) : null,
        };
    }

    /// <summary>Exact causal softmax attention inside non-overlapping blocks of <paramref name="block"/> tokens.</summary>
    /// <exception cref="ArgumentException">A varlen batch.</exception>
    public static MethodResult DiagAttention(MethodInputs inputs, LinearShape shape, int block)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (inputs.Offsets != null) throw new ArgumentException("DiagAttention takes no varlen batch (its block mask is global).", "attention");
        var offsets = new List<string> { "0" };
        for (int t = block; t < shape.Tokens; t += block) offsets.Add(t.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (shape.Tokens > 0) offsets.Add(shape.Tokens.ToString(System.Globalization.CultureInfo.InvariantCulture));
        string mask = shape.Tokens == 0 ? "causal" : "causal+doc:" + string.Join(",", offsets);
        MethodResult diag = new ExactAttentionMethod().Run(inputs, MethodArguments.Parse([$"mask={mask}"]));
        var result = new MethodResult(diag.Output);
        result.Report.Add(new("attention", $"diag (softmax in blocks of {block})"));
        return result;
    }
}

/// <summary>
/// TransNormerLLM (Qin et al., "TransNormerLLM: A Faster and Better Large Language Model with Improved TransNormer",
/// 2023): NormAttention with an exponential decay per head, <c>o_t = Norm(Σ_{s≤t} λ_h^{t−s} q_tᵀk_s v_s)</c>, computed
/// by Lightning Attention. λ_h = exp(−slope_h · (1 − l/L)) with ALiBi-style slopes slope_h = 2^(−8(h+1)/H) (the
/// authors' code; l = <c>layer</c>, L = <c>layers</c>; a small floor keeps the last layer's decay below 1).
/// Deviations: LRPE (the relative position encoding applied to q/k) and the gates are left to the caller; the
/// normalisation is a parameter-free RMS norm (SRMSNorm without gain); φ = identity (TNL uses no kernel function).
/// </summary>
public sealed class TransNormerLlmMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "transnormerllm";

    /// <summary>The paper.</summary>
    public const string Paper = "TransNormerLLM: A Faster and Better Large Language Model with Improved TransNormer (Qin et al., 2023)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "NormAttention with per-head exponential decay (Lightning Attention), RMS-normalised output")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("decay", "none|tnl", "tnl", "per-head decay λ_h = exp(−2^(−8(h+1)/H)·(1 − l/L))"),
            new MethodParameter("layer", "int", "0", "layer index l"),
            new MethodParameter("layers", "int", "1", "layer count L"),
            new MethodParameter("norm", "none|rms", "rms", "RMS-normalise each head's output"),
        ],
    };

    /// <summary>TransNormerLLM's decay for head <paramref name="head"/> of <paramref name="heads"/> in layer <paramref name="layer"/> of <paramref name="layers"/>.</summary>
    public static float Decay(int head, int heads, int layer, int layers)
    {
        double slope = Math.Pow(2, -8.0 * (head + 1) / heads);
        double depth = layers <= 1 ? 1 : 1 - (double)layer / (layers - 1) + 1e-5;
        return (float)Math.Exp(-slope * depth);
    }

    internal static LinearAttentionOptions Options(MethodArguments arguments, LinearShape shape, string defaultDecay, string defaultNorm, FeatureMap map)
    {
        bool decay = arguments.GetChoice("decay", defaultDecay, "none", "tnl") == "tnl";
        int layers = arguments.GetInt("layers", 1, 1);
        int layer = arguments.GetInt("layer", 0, 0, layers - 1);
        bool rms = arguments.GetChoice("norm", defaultNorm, "none", "rms") == "rms";
        float[]? gamma = null;
        if (decay)
        {
            gamma = new float[shape.Heads];
            for (int h = 0; h < shape.Heads; h++) gamma[h] = Decay(h, shape.Heads, layer, layers);
        }
        return new LinearAttentionOptions
        {
            FeatureMap = map, HeadDecay = gamma,
            Normalization = rms ? LinearNormalization.RmsNorm : LinearNormalization.None,
        };
    }

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape) =>
        new(Options(arguments, shape, defaultDecay: "tnl", defaultNorm: "rms", map: FeatureMaps.Identity));
}
