namespace Attend;

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
