namespace Attend;

/// <summary>Which computation a kernel variant is asked for.</summary>
public enum AttentionPass
{
    /// <summary>Output and log-sum-exp.</summary>
    Forward,

    /// <summary>dQ, dK, dV from the saved log-sum-exp.</summary>
    Backward,
}

/// <summary>What a kernel variant is asked to compute, for <see cref="AttentionKernel.IsSupported"/>.</summary>
public readonly record struct KernelProblem(
    AttentionPass Pass,
    ElementType ElementType,
    int Sequences,
    int Heads,
    int KvHeads,
    int HeadDim,
    int MaxQueryLength,
    int MaxKeyLength);

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

/// <summary>The arguments of a forward kernel call, pinned and validated.</summary>
internal sealed class ForwardCall<T> where T : unmanaged
{
    public required AttentionShape Shape { get; init; }
    public required BlockMask Blocks { get; init; }
    public required TensorView<T> Q { get; init; }
    public required TensorView<T> K { get; init; }
    public required TensorView<T> V { get; init; }
    public required TensorView<T> O { get; init; }

    /// <summary>May be null (<see cref="LseView.IsNull"/>) when the caller does not want it.</summary>
    public required LseView Lse { get; init; }
    public required float Scale { get; init; }
    public required int Threads { get; init; }
}

/// <summary>The arguments of a backward kernel call, pinned and validated.</summary>
internal sealed class BackwardCall<T> where T : unmanaged
{
    public required AttentionShape Shape { get; init; }
    public required BlockMask Blocks { get; init; }
    public required TensorView<T> Q { get; init; }
    public required TensorView<T> K { get; init; }
    public required TensorView<T> V { get; init; }
    public required TensorView<T> O { get; init; }
    public required TensorView<T> DO { get; init; }
    public required LseView Lse { get; init; }
    public required TensorView<T> DQ { get; init; }
    public required TensorView<T> DK { get; init; }
    public required TensorView<T> DV { get; init; }
    public required float Scale { get; init; }
    public required int Threads { get; init; }
    public required bool Deterministic { get; init; }
}
