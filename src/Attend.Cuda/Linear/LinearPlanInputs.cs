using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>
/// What the CUDA linear plans (<see cref="CudaLinearPlan"/>, <see cref="CudaDeltaRulePlan"/>) read from their options and
/// check of their tensors the same way: the fixed per-head decays as logs, the sequences of a (possibly varlen) call,
/// and a tensor's element type and shape against the plan's.
/// </summary>
internal static class LinearPlanInputs
{
    /// <summary>
    /// log γ per query head for <see cref="LinearDecay.FixedPerHead"/>, else <c>[0]</c> (unused by the kernels).
    /// </summary>
    /// <exception cref="ArgumentException">HeadDecay missing, of the wrong count, or given for another decay.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A γ outside (0, 1].</exception>
    public static float[] LogHeadDecay(LinearAttentionOptions options, LinearDecay decay, int heads)
    {
        if (decay != LinearDecay.FixedPerHead)
        {
            if (options.HeadDecay != null)
                throw new ArgumentException($"HeadDecay is given but the decay is {decay}; it applies to FixedPerHead only.", nameof(options));
            return [0f];
        }
        IReadOnlyList<float> gamma = options.HeadDecay ?? throw new ArgumentException("Decay FixedPerHead needs HeadDecay (one γ per query head).", nameof(options));
        if (gamma.Count != heads)
            throw new ArgumentException($"HeadDecay has {gamma.Count} values; it needs one per query head (H = {heads}).", nameof(options));
        var log = new float[heads];
        for (int h = 0; h < heads; h++)
        {
            if (!(gamma[h] > 0f && gamma[h] <= 1f))
                throw new ArgumentOutOfRangeException(nameof(options), $"HeadDecay[{h}] = {gamma[h]}: a decay must be in (0, 1].");
            log[h] = MathF.Log(gamma[h]);
        }
        return log;
    }

    /// <summary>(first token in the flattened [B·T] axis, length) of each sequence: B rows of T, or one per varlen sequence.</summary>
    public static (int[] Starts, int[] Lengths) Sequences(LinearShape shape, SeqOffsets? offsets)
    {
        int n = offsets?.Count ?? shape.Batch;
        var starts = new int[n];
        var lengths = new int[n];
        for (int i = 0; i < n; i++)
        {
            starts[i] = offsets is null ? i * shape.Tokens : offsets.Start(i);
            lengths[i] = offsets is null ? shape.Tokens : offsets.Length(i);
        }
        return (starts, lengths);
    }

    /// <summary>Checks that <paramref name="t"/> is a <c>[B, T, heads, dim]</c> tensor of the plan's element type.</summary>
    /// <exception cref="ArgumentException">Another element type or shape; the message names <paramref name="name"/>.</exception>
    public static void RequireTensor(CudaTensor t, string name, ElementType elementType, LinearShape shape, int heads, int dim)
    {
        ArgumentNullException.ThrowIfNull(t, name);
        if (t.ElementType != elementType)
            throw new ArgumentException($"{name} holds {t.ElementType.ShortName()}; the plan is for {elementType.ShortName()}.", name);
        if (t.Batch != shape.Batch || t.Tokens != shape.Tokens || t.Heads != heads || t.Dim != dim)
            throw new ArgumentException($"{name} must have shape [{shape.Batch}, {shape.Tokens}, {heads}, {dim}] as planned; got [{t.Batch}, {t.Tokens}, {t.Heads}, {t.Dim}].", name);
    }
}
