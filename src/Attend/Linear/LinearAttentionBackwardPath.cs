namespace Attend.Linear;

/// <summary>The chunked backward of gates and delta rules, for <see cref="LinearAttention.GatedBackward"/>.</summary>
internal enum GatedBackwardPath
{
    /// <summary>Chosen by the configuration.</summary>
    Auto,

    /// <summary>Always the matrix-product kernel (where it applies).</summary>
    MatrixProducts,

    /// <summary>Always the chunk-checkpointed reverse recurrence.</summary>
    ReverseRecurrence,
}

public static partial class LinearAttention
{
    /// <summary>
    /// Which chunked backward computes gates and delta rules: <see cref="GatedBackwardPath.Auto"/> (the default: matrix
    /// products, except the delta rules with Df &lt; 64, where the reverse recurrence measured faster), or one forced
    /// (paired before/after timings; tests that check one against the other). Per calling thread, so a test that sets
    /// it does not change another's run.
    /// </summary>
    internal static GatedBackwardPath GatedBackward { get => t_gatedBackward; set => t_gatedBackward = value; }

    [ThreadStatic] private static GatedBackwardPath t_gatedBackward;
}
