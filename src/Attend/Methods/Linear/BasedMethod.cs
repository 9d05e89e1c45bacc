using System.Globalization;
using Attend.Linear;
using Attend.Methods.Softmax;

namespace Attend.Methods.Linear;

/// <summary>
/// Based (Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra, Ré, "Simple linear attention language models
/// balance the recall-throughput tradeoff", ICML 2024): linear attention with the 2nd-order Taylor feature map of
/// exp(q·k/√d) (<see cref="FeatureMaps.Taylor2"/>: width 1 + d + d², so the state is (1 + d + d²) × Dv and d is kept
/// small, 16 in the paper), normalised by its running denominator, combined with exact sliding-window softmax attention
/// (the softmax family's kernel, mask <c>window:W−1,0</c>) for precise local recall.
/// Deviations: in the Based model the linear and sliding-window attentions are separate layers with their own
/// projections; here both branches run on the same q, k, v: the output is the Taylor linear branch, the window branch
/// is returned as <c>Extras["window"]</c> (<c>combine=sum</c> adds it to the output instead). The feature projection to
/// d = 16 belongs to the layer (pass projected q/k). The window branch sees only the tokens of the call (it keeps no KV
/// cache), so in a decode step (T = 1) it attends to that token alone: a decoder keeps the last W keys and values itself.
/// </summary>
public sealed class BasedMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "based";

    /// <summary>The paper.</summary>
    public const string Paper = "Simple linear attention language models balance the recall-throughput tradeoff (Arora et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "Taylor (2nd-order) feature-map linear attention + exact sliding-window softmax branch")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("window", "int", "64", "sliding-window size W of the softmax branch (0: no branch)"),
            new MethodParameter("combine", "none|sum", "none", "none: window branch in Extras[\"window\"]; sum: added to the output"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        int window = arguments.GetInt("window", 64, 0);
        bool sum = arguments.GetChoice("combine", "none", "none", "sum") == "sum";
        if (shape.KeyDim > 64)
            throw new ArgumentException($"Based's Taylor map widens Dk = {shape.KeyDim} to {1 + shape.KeyDim + shape.KeyDim * shape.KeyDim} features; project q/k to a small dim (16 in the paper, at most 64 here).", "q");
        return new LinearCall(new LinearAttentionOptions { FeatureMap = FeatureMaps.Taylor2, Normalization = LinearNormalization.Denominator })
        {
            After = window == 0 ? null : (i, s, r) => AddWindow(i, r, window, sum),
        };
    }

    private static void AddWindow(MethodInputs inputs, MethodResult result, int window, bool sum)
    {
        string mask = "window:" + (window - 1).ToString(CultureInfo.InvariantCulture) + ",0";
        MethodResult local = new ExactAttentionMethod().Run(inputs, MethodArguments.Parse([$"mask={mask}"]));
        if (sum)
        {
            float[] o = result.Output.Data, w = local.Output.Data;
            for (int i = 0; i < o.Length; i++) o[i] += w[i];
        }
        else result.Extras["window"] = local.Output;
        result.Report.Add(new("window", $"{window} ({(sum ? "summed into the output" : "Extras[window]")})"));
    }
}
