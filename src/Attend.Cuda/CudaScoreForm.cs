namespace Attend.Cuda;

/// <summary>
/// The score mods the CUDA kernel computes itself: a soft cap (<c>cap·tanh(s/cap)</c>, first) and ALiBi (per-head
/// slopes, second), the order <see cref="Attention"/> composes them in. Any other score mod has no CUDA form yet and
/// is refused with the reason (never silently dropped).
/// </summary>
internal readonly record struct CudaScoreForm(float? Softcap, float[]? AlibiSlopes)
{
    /// <summary>The form of a typed score mod (as the core's dispatch passes it: soft cap composed in front).</summary>
    /// <exception cref="NotSupportedException">A score mod without a CUDA form.</exception>
    public static CudaScoreForm Of<TScore>(TScore score) where TScore : struct, IScoreMod<TScore> => Of((object)score);

    /// <summary>The form of <see cref="AttentionOptions.Softcap"/> and <see cref="AttentionOptions.ScoreMod"/>.</summary>
    public static CudaScoreForm Of(float? softcap, IScoreMod? scoreMod)
    {
        CudaScoreForm rest = scoreMod is null ? default : Of((object)scoreMod);
        if (softcap is not null && rest.Softcap is not null)
            throw new NotSupportedException("The CUDA kernel applies one soft cap; the call has two.");
        return rest with { Softcap = softcap ?? rest.Softcap };
    }

    private static CudaScoreForm Of(object score) => score switch
    {
        IdentityScoreMod => default,
        SoftcapScoreMod s => new CudaScoreForm(s.Cap, null),
        AlibiScoreMod a => new CudaScoreForm(null, a.Slopes.ToArray()),
        ComposedScoreMod<SoftcapScoreMod, IdentityScoreMod> c => new CudaScoreForm(c.First.Cap, null),
        ComposedScoreMod<SoftcapScoreMod, AlibiScoreMod> c => new CudaScoreForm(c.First.Cap, c.Second.Slopes.ToArray()),
        ComposedScoreMod<IdentityScoreMod, IdentityScoreMod> => default,
        _ => throw new NotSupportedException(
            $"The CUDA kernel has no form of the score mod {score} ({score.GetType().Name}); it computes soft caps and ALiBi. Use the cpu backend for other score mods."),
    };
}
