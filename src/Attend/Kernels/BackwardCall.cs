namespace Attend;

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
