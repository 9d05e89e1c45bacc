namespace Attend;

/// <summary>
/// One kernel variant of the softmax family (FlashAttention-2 on the CPU with a given vector width, split-KV decode,
/// the float64 reference, …). Variants are registered in preference order in <see cref="KernelRegistry"/>; a call uses
/// the first that supports it, or the one forced by <see cref="AttentionOptions.Variant"/>.
/// </summary>
public abstract class AttentionKernel
{
    /// <summary>Unique name, e.g. <c>CpuFlashVector512</c>.</summary>
    public abstract string Name { get; }

    /// <summary>Backend the variant runs on (<c>cpu</c>, <c>cuda</c>).</summary>
    public abstract string Backend { get; }

    /// <summary>One line on what it does.</summary>
    public abstract string Summary { get; }

    /// <summary>Query rows per block of the <see cref="BlockMask"/> this variant runs on.</summary>
    public virtual int QueryBlockSize => 64;

    /// <summary>Keys per block of the <see cref="BlockMask"/> this variant runs on.</summary>
    public virtual int KeyBlockSize => 64;

    /// <summary>True when the variant can compute <paramref name="problem"/>; otherwise <paramref name="reason"/> says why.</summary>
    public abstract bool IsSupported(in KernelProblem problem, out string reason);

    internal abstract void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
        where T : unmanaged
        where TMask : struct, IMaskMod<TMask>
        where TScore : struct, IScoreMod<TScore>;

    internal virtual void Backward<T, TMask, TScore>(BackwardCall<T> call, TMask mask, TScore score)
        where T : unmanaged
        where TMask : struct, IMaskMod<TMask>
        where TScore : struct, IScoreMod<TScore>
        => throw new NotSupportedException($"{Name} has no backward pass.");

    /// <inheritdoc/>
    public override string ToString() => Name;
}
