using System.Diagnostics;
using System.Numerics.Tensors;
using Attend.Methods.Approximation;

namespace Attend.Methods.Sparse.Dynamic;

/// <summary>
/// The runnable adapters of the dynamic prefill selectors on the token-level path (MInference, FlexPrefill,
/// AnchorAttention) and of the approximations HyperAttention and Scatterbrain, as one array for
/// <see cref="MethodCatalog"/>.
/// </summary>
public static class DynamicSparseMethods
{
    /// <summary>Every method of this group, in catalog order.</summary>
    public static IAttentionMethod[] All { get; } =
    [
        new MInferenceMethod(),
        new FlexPrefillMethod(),
        new AnchorAttentionMethod(),
        new HyperAttentionMethod(),
        new ScatterbrainMethod(),
    ];
}

/// <summary>The q, k, v of a method call as tensor spans, with the shape read once.</summary>
internal readonly struct MethodSpans
{
    public readonly int B, Tq, Tk, H, Hkv, D;
    public readonly float[] Q, K, V;
    public readonly SeqOffsets? Offsets;

    public MethodSpans(MethodInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        (B, Tq, H, D) = (q.Dim(0), q.Dim(1), q.Dim(2), q.Dim(3));
        (Tk, Hkv) = (k.Dim(1), k.Dim(2));
        if (k.Dim(0) != B) throw new ArgumentException($"Input 'k' has batch {k.Dim(0)} (dimension 0); q has {B}.", "k");
        if (k.Dim(3) != D) throw new ArgumentException($"Input 'k' has head dim {k.Dim(3)} (dimension 3); q has {D}.", "k");
        if (v.Dim(0) != B || v.Dim(1) != Tk || v.Dim(2) != Hkv || v.Dim(3) != D)
            throw new ArgumentException($"Input 'v' must have shape ({B}, {Tk}, {Hkv}, {D}) like k; got {v}.", "v");
        Q = q.Data;
        K = k.Data;
        V = v.Data;
        Offsets = inputs.Offsets;
    }

    public ReadOnlyTensorSpan<float> QSpan => AttentionLayout.Bthd<float>(Q, B, Tq, H, D);
    public ReadOnlyTensorSpan<float> KSpan => AttentionLayout.Bthd<float>(K, B, Tk, Hkv, D);
    public ReadOnlyTensorSpan<float> VSpan => AttentionLayout.Bthd<float>(V, B, Tk, Hkv, D);

    public float[] NewOutput() => new float[(long)B * Tq * H * D];
    public float[] NewLse() => new float[(long)B * H * Tq];
    public TensorSpan<float> OutSpan(float[] o) => AttentionLayout.Bthd<float>(o, B, Tq, H, D);
    public TensorSpan<float> LseSpan(float[] l) => AttentionLayout.Lse(l, B, H, Tq);

    public MethodResult Result(float[] o, float[] lse, double? density, double? selectorMs, IPairCoverage? coverage)
    {
        var result = new MethodResult(new MethodTensor(o, B, Tq, H, D)) { Density = density, SelectorMs = selectorMs, Coverage = coverage };
        result.Extras["lse"] = new MethodTensor(lse, B, H, Tq);
        return result;
    }
}

/// <summary><c>attend run --method minference</c>.</summary>
public sealed class MInferenceMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "minference";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "sparse", "method", MInference.Paper, ["cpu", "cuda"], "implemented",
        "per-head A-shape / vertical-slash (token-level path) / block-sparse (block kernel); offline pattern search, online index build; causal")
    {
        Parameters =
        [
            new MethodParameter("pattern", "search|a-shape|vertical-slash|block-sparse", "vertical-slash", "every head uses that pattern; search: the offline per-head search, calibrated on this input (its time is reported as search_ms and is part of the run, not of the selector)"),
            new MethodParameter("budget", "int", "max(128, Tk/16)", "keys per row the candidates of the search spend (and the default budget of a fixed pattern)"),
            new MethodParameter("vertical", "int", "budget/7 (A-shape: 64)", "vertical-slash: top-k columns; A-shape: sink tokens"),
            new MethodParameter("slash", "int", "budget − vertical", "vertical-slash: top-k diagonals; A-shape: local window"),
            new MethodParameter("blocks", "int", "budget/64", "block-sparse: top-k key blocks per query block"),
            new MethodParameter("last_q", "int", "64", "query rows of the vertical-slash estimate"),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale"),
            new MethodParameter("coverage", "diagonals|blocks", "diagonals", "what a slash line computes: diagonals = the token-level definition (one pair per row and offset); blocks = the authors' kernel (convert_vertical_slash_indexes: the 64-key ranges covering each 64-row block's diagonals, computed densely); density counts the pairs actually computed"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(inputs);
        // A packed batch is planned one sequence at a time: the budget and the per-head pattern depend on the sequence.
        if (inputs.Offsets is not null) return PackedBatch.RunEachSequence(inputs, arguments, causal: true, Run);
        string pattern = arguments.GetChoice("pattern", "vertical-slash", "search", "a-shape", "vertical-slash", "block-sparse");
        // The search calibrates on its input: on a padded batch, each entry is calibrated (and run) alone, as packed.
        if (pattern == "search" && inputs.Q.Dim(0) > 1) return PackedBatch.RunEachEntry(inputs, arguments, causal: true, Run);
        var x = new MethodSpans(inputs);
        SlashCoverage coverage = arguments.GetChoice("coverage", "diagonals", "diagonals", "blocks") == "blocks" ? SlashCoverage.Blocks : SlashCoverage.Diagonals;
        int budget = arguments.GetInt("budget", Math.Max(128, x.Tk / 16), min: 2);
        int vertical = arguments.GetInt("vertical", pattern == "a-shape" ? Math.Min(64, budget / 2) : Math.Max(1, budget / 7), min: 1);
        int slash = arguments.GetInt("slash", Math.Max(1, budget - vertical), min: 1);
        int blocks = arguments.GetInt("blocks", Math.Max(1, budget / HybridSparsePlan.BlockSize), min: 1);
        int lastQ = arguments.GetInt("last_q", 64, min: 1);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        arguments.ThrowIfUnused(Name);

        var options = new MInferenceOptions { LastQueries = lastQ, Scale = scale, Offsets = x.Offsets, Coverage = coverage };
        double searchMs = 0;
        MInferenceHeadPattern[] heads;
        if (pattern == "search")
        {
            var watch = Stopwatch.StartNew();
            heads = MInference.SearchPatterns(x.QSpan, x.KSpan, x.VSpan, MInference.Candidates(budget), options);
            searchMs = watch.Elapsed.TotalMilliseconds;
        }
        else
        {
            MInferenceHeadPattern fixedPattern = pattern switch
            {
                "a-shape" => new(MInferencePattern.AShape, Vertical: vertical, Slash: slash),
                "vertical-slash" => new(MInferencePattern.VerticalSlash, Vertical: vertical, Slash: slash),
                _ => new(MInferencePattern.BlockSparse, Blocks: blocks),
            };
            heads = Enumerable.Repeat(fixedPattern, x.H).ToArray();
        }
        float[] o = x.NewOutput(), lse = x.NewLse();
        (HybridSparsePlan plan, double ms) = MInference.Forward(x.QSpan, x.KSpan, x.VSpan, options with { Heads = heads }, x.OutSpan(o), x.LseSpan(lse));
        MethodResult result = x.Result(o, lse, plan.Density, ms, plan);
        result.Report.Add(new("patterns", string.Join(" ", heads.Select(p => p.ToString()))));
        if (pattern == "search") result.Report.Add(new("search_ms", searchMs.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }
}

/// <summary><c>attend run --method flexprefill</c>.</summary>
public sealed class FlexPrefillMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "flexprefill";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "sparse", "method", FlexPrefill.Paper, ["cpu", "cuda"], "implemented",
        "per head: query-aware blocks or vertical-slash by Jensen-Shannon distance, budgets by cumulative attention γ; causal")
    {
        Parameters =
        [
            new MethodParameter("gamma", "float", "0.9", "cumulative-attention threshold γ in (0, 1]"),
            new MethodParameter("tau", "float", "0.1", "JS-distance threshold τ ≥ 0 for query-aware heads"),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        var x = new MethodSpans(inputs);
        double gamma = arguments.GetDouble("gamma", 0.9, min: double.Epsilon, max: 1);
        double tau = arguments.GetDouble("tau", 0.1, min: 0);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        arguments.ThrowIfUnused(Name);
        float[] o = x.NewOutput(), lse = x.NewLse();
        var options = new FlexPrefillOptions { Gamma = gamma, Tau = tau, Scale = scale, Offsets = x.Offsets };
        (HybridSparsePlan plan, bool[][] queryAware, double ms) = FlexPrefill.Forward(x.QSpan, x.KSpan, x.VSpan, options, x.OutSpan(o), x.LseSpan(lse));
        MethodResult result = x.Result(o, lse, plan.Density, ms, plan);
        // One choice per sequence and head: heads joined by spaces, sequences by "; ".
        result.Report.Add(new("patterns", string.Join("; ", queryAware.Select(seq => string.Join(" ", seq.Select(a => a ? "QA" : "VS"))))));
        return result;
    }
}

/// <summary><c>attend run --method anchor-attention</c>.</summary>
public sealed class AnchorAttentionMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "anchor-attention";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "sparse", "method", AnchorAttention.Paper, ["cpu", "cuda"], "implemented",
        "anchor = max score over sinks + local window; stripes within θ of it per query block, on the token-level path; causal")
    {
        Parameters =
        [
            new MethodParameter("theta", "float", "0.5", "difference threshold θ ≥ 0 (scaled logits of the block-mean query)"),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        var x = new MethodSpans(inputs);
        double theta = arguments.GetDouble("theta", 0.5, min: 0);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        arguments.ThrowIfUnused(Name);
        float[] o = x.NewOutput(), lse = x.NewLse();
        var options = new AnchorAttentionOptions { Theta = theta, Scale = scale, Offsets = x.Offsets };
        (HybridSparsePlan plan, double ms) = AnchorAttention.Forward(x.QSpan, x.KSpan, x.VSpan, options, x.OutSpan(o), x.LseSpan(lse));
        return x.Result(o, lse, plan.Density, ms, plan);
    }
}
