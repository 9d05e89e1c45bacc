namespace Attend;

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
