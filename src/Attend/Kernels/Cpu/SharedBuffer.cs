namespace Attend.Kernels.Cpu;

/// <summary>
/// A pinned float32 workspace shared by the workers of one kernel call (packed K/V panels, dQ accumulators). Kept
/// per calling thread and per slot, and only grown, like a FlashInfer workspace buffer: a call allocates nothing once
/// its largest shape has been seen.
/// </summary>
internal sealed unsafe class SharedBuffer
{
    public const int Slots = 4;

    [ThreadStatic] private static SharedBuffer?[]? t_slots;
    private float[] _array = [];

    public float* Pointer { get; private set; }

    public long Capacity { get; private set; }

    /// <summary>The calling thread's buffer <paramref name="slot"/>, grown to at least <paramref name="floats"/> floats.</summary>
    public static SharedBuffer Rent(int slot, long floats)
    {
        t_slots ??= new SharedBuffer?[Slots];
        SharedBuffer buffer = t_slots[slot] ??= new SharedBuffer();
        buffer.Ensure(floats);
        return buffer;
    }

    private void Ensure(long floats)
    {
        if (Capacity >= floats) return;
        long size = Math.Max(floats, Capacity + Capacity / 2) + 16;
        _array = GC.AllocateUninitializedArray<float>(checked((int)size), pinned: true);
        fixed (float* p = _array)
        {
            Pointer = (float*)(((nint)p + 63) & ~(nint)63);
        }
        Capacity = size - 16;
    }
}
