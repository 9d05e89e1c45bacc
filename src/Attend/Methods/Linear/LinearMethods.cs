namespace Attend.Methods.Linear;

/// <summary>The linear / recurrent family's runnable methods (state-kernel methods), in catalog order.</summary>
public static class LinearMethods
{
    /// <summary>Every method of this family that runs on <see cref="Attend.Linear.LinearAttention"/>.</summary>
    public static IAttentionMethod[] All { get; } =
    [
        new LinearAttentionMethod(),
        new BasedMethod(),
        new HedgehogMethod(),
        new LightningAttentionMethod(),
        new LightningAttention2Method(),
        new TransNormerMethod(),
        new TransNormerLlmMethod(),
        new RetNetMethod(),
        new GlaMethod(),
        new DeltaNetMethod(),
        new GatedDeltaNetMethod(),
        new KimiDeltaAttentionMethod(),
        new NaLaFormerMethod(),
    ];
}
