namespace Attend.Kernels.Cpu;

/// <summary>
/// Per-thread float32 scratch for kernels: one pinned, 64-byte-aligned buffer per thread that only grows, so a
/// kernel call allocates nothing once the thread has seen its largest tile.
/// </summary>
internal static unsafe class Scratch
{
    [ThreadStatic] private static float[]? t_buffer;
    [ThreadStatic] private static float* t_aligned;
    [ThreadStatic] private static long t_capacity;

    /// <summary>At least <paramref name="floats"/> floats, 64-byte aligned, valid until the next call on this thread.</summary>
    public static float* Get(long floats)
    {
        if (t_capacity < floats)
        {
            long size = Math.Max(floats, t_capacity * 2) + 16;
            t_buffer = GC.AllocateUninitializedArray<float>(checked((int)size), pinned: true);
            fixed (float* p = t_buffer)
            {
                // Pinned arrays never move, so the aligned pointer stays valid for the buffer's life.
                t_aligned = (float*)(((nint)p + 63) & ~(nint)63);
            }
            t_capacity = size - 16;
        }
        return t_aligned;
    }
}

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
