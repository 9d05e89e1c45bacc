namespace Attend.Kernels.Cpu;

/// <summary>
/// A pinned float32 workspace shared by the workers of one kernel call (packed K/V panels, dQ accumulators), like a
/// FlashInfer workspace buffer. Kept per calling thread and per slot and grown as needed, so repeated calls allocate
/// nothing; a buffer above 64 MB is replaced by a smaller one when a call needing less than half of it follows.
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

    // Buffers above this size are not kept for reuse once a smaller call comes (long-context backward accumulators
    // can reach hundreds of MB; holding them for the thread's life would be a leak in all but name).
    private const long RetainFloats = 16L << 20;

    private void Ensure(long floats)
    {
        bool oversized = Capacity > RetainFloats && floats * 2 < Capacity;
        if (Capacity >= floats && !oversized) return;
        long size = (oversized ? floats : Math.Max(floats, Capacity + Capacity / 2)) + 16;
        _array = GC.AllocateUninitializedArray<float>(checked((int)size), pinned: true);
        fixed (float* p = _array)
        {
            Pointer = (float*)(((nint)p + 63) & ~(nint)63);
        }
        Capacity = size - 16;
    }
}
