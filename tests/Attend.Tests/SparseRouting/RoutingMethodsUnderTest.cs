using Attend.Methods.Sparse.Routing;

namespace Attend.Tests.SparseRouting;

/// <summary>One routing method as the shared contract tests drive it.</summary>
/// <param name="Name">Name in the theories.</param>
/// <param name="Sparse">A plan with small budgets (so the selection matters at test sizes).</param>
/// <param name="KeepAll">A plan whose budgets cover everything, or null when the method has none.</param>
/// <param name="ClaimsRetrieval">Whether the planted-needle test applies.</param>
internal sealed record RoutingUnderTest(string Name, Func<SelectorInput, bool, SparsePlan> Sparse, Func<SelectorInput, bool, SparsePlan>? KeepAll, bool ClaimsRetrieval)
{
    public override string ToString() => Name;
}

internal static class RoutingMethodsUnderTest
{
    public static readonly RoutingUnderTest[] All =
    [
        new("biformer",
            (x, c) => BiFormer.Plan(x, new BiFormerOptions { RegionSize = 16, TopK = 2, Causal = c }),
            (x, c) => BiFormer.Plan(x, new BiFormerOptions { RegionSize = 16, TopK = 10_000, Causal = c }),
            ClaimsRetrieval: true),
        new("routing-transformer",
            (x, c) => RoutingTransformer.Plan(x, new RoutingTransformerOptions { Clusters = Math.Min(3, x.TotalKeyLength * x.Batch), Window = 8, Iterations = 2, Causal = c }),
            (x, c) => RoutingTransformer.Plan(x, new RoutingTransformerOptions { Clusters = 1, Window = 0, Causal = c }),
            ClaimsRetrieval: false),
    ];

    public static RoutingUnderTest Get(string name) => Array.Find(All, m => m.Name == name) ?? throw new ArgumentException(name);

    public static TheoryDataNames Names() => new(All.Select(m => m.Name));

    public static TheoryDataNames Retrievers() => new(All.Where(m => m.ClaimsRetrieval).Select(m => m.Name));

    public static TheoryDataNames KeepAllMethods() => new(All.Where(m => m.KeepAll is not null).Select(m => m.Name));
}

internal sealed class TheoryDataNames : Xunit.TheoryData<string>
{
    public TheoryDataNames(IEnumerable<string> names)
    {
        foreach (string n in names) Add(n);
    }
}
