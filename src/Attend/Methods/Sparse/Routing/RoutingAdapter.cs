namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// The common half of the routing methods' <see cref="IAttentionMethod"/> adapters: the shared parameters, and
/// running a plan on named tensors into a <see cref="MethodResult"/> with density, selector time and coverage.
/// </summary>
internal static class RoutingAdapter
{
    public static MethodParameter CausalParameter => new("causal", "bool", "true", "intersect the selection with the causal mask (bottom-right aligned)");

    public static MethodParameter ScaleParameter => new("scale", "float", "1/sqrt(D)", "score scale (also used by the selector)");

    public static bool Causal(MethodArguments a) => a.GetBool("causal", true);

    public static float? Scale(MethodArguments a) => a.Has("scale") ? (float)a.GetDouble("scale", 0) : null;

    public static int? OptionalInt(MethodArguments a, string name, int min, int max = int.MaxValue) =>
        a.Has(name) ? a.GetInt(name, 0, min, max) : null;

    public static double? OptionalDouble(MethodArguments a, string name, double min, double max = double.MaxValue) =>
        a.Has(name) ? a.GetDouble(name, 0, min, max) : null;

    /// <summary>
    /// Runs <paramref name="plan"/> on the inputs' q, k, v and reports it; <paramref name="clusterSorted"/> runs a
    /// cluster-routing plan in its sorted form (<see cref="ClusterSortedAttention"/>: the same pairs).
    /// </summary>
    public static MethodResult Run(MethodInputs inputs, SparsePlan plan, float? scale, bool clusterSorted = false)
    {
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        if (v.Dim(0) != k.Dim(0) || v.Dim(1) != k.Dim(1) || v.Dim(2) != k.Dim(2))
            throw new ArgumentException($"v {v} must match k {k} in batch, tokens and heads.", "v");
        int b = q.Dim(0), tq = q.Dim(1), h = q.Dim(2), dv = v.Dim(3);
        var o = new float[(long)b * tq * h * dv];
        var lse = new float[(long)b * h * tq];
        string kernel = clusterSorted
            ? "cluster-sorted: " + (ClusterSortedAttention.Forward(q.Data, k.Data, v.Data, plan, dv, scale, o, lse)?.Name ?? "window only")
            : plan.Forward(q.Data, k.Data, v.Data, dv, o, lse, scale).Name;
        var result = new MethodResult(new MethodTensor(o, b, tq, h, dv))
        {
            Density = plan.Density,
            SelectorMs = plan.SelectorMilliseconds,
            Coverage = plan.Coverage,
        };
        result.Extras["lse"] = new MethodTensor(lse, b, h, tq);
        result.Report.Add(new("kernel", kernel));
        result.Report.Add(new("plan", plan.Mask.ToString() ?? ""));
        return result;
    }
}
