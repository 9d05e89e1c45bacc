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
