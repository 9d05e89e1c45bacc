namespace Attend.Methods.Sparse.Static;

/// <summary>Every static sparse pattern (and Combiner, the static approximation), in catalog order.</summary>
public static class StaticSparseMethods
{
    /// <summary>The runnable adapters.</summary>
    public static IAttentionMethod[] All =>
    [
        new StreamingLlmMethod(),
        new DilatedWindowMethod(),
        new PowerAttentionMethod(),
        new AShapeMethod(),
        new S2AttentionMethod(),
        new SinkLoraMethod(),
        new MoaMethod(),
        new NeighborhoodAttentionMethod(),
        new AxialAttentionMethod(),
        new MaxVitMethod(),
        new HaloNetMethod(),
        new CombinerMethod(),
    ];
}
