namespace Attend.Methods.Sparse.Routing;

/// <summary>The routing / retrieval / pruning selectors of the sparse family, as runnable methods.</summary>
public static class RoutingSparseMethods
{
    /// <summary>Every method of this group, in the order of issue 4.</summary>
    public static IAttentionMethod[] All =>
    [
        new BiFormerMethod(),
        new RoutingTransformerMethod(),
        new HiPMethod(),
        new LandmarkMethod(),
        new RetrievalAttentionMethod(),
        new DhsaMethod(),
        new CcaMethod(),
        new SeaMethod(),
        new LongHeadsMethod(),
        new RecycledMethod(),
        new DeltaMethod(),
        new SuperlinearMethod(),
        new SpAttenMethod(),
    ];
}
