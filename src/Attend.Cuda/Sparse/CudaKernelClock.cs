namespace Attend.Cuda.Sparse;

/// <summary>
/// Device time of the kernels that host-tensor calls launch (<see cref="Attention.Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{float})"/>
/// with the float32 CUDA variant, and the token-level sparse kernel), measured with CUDA events around each launch and
/// summed. A method run that packs, converts and copies on the host and launches once or more reports here only the
/// GPU's own time: what <c>attend bench sparse --backend cuda</c> calls the kernel time. Off unless
/// <see cref="Enabled"/>; the sum is per process (one bench thread reads it).
/// </summary>
public static class CudaKernelClock
{
    private static double s_total;
    private static int s_launches;

    /// <summary>Whether launches are timed (events cost a synchronisation per launch, so only the bench turns this on).</summary>
    public static bool Enabled { get; set; }

    /// <summary>Milliseconds of device time summed since the last <see cref="Reset"/>.</summary>
    public static double TotalMilliseconds => Volatile.Read(ref s_total);

    /// <summary>Timed launches since the last <see cref="Reset"/>.</summary>
    public static int Launches => Volatile.Read(ref s_launches);

    /// <summary>Clears the sum.</summary>
    public static void Reset()
    {
        Volatile.Write(ref s_total, 0);
        Volatile.Write(ref s_launches, 0);
    }

    /// <summary>Runs <paramref name="launch"/> (queued on the default stream) and, when enabled, adds its device time.</summary>
    internal static void Time(CudaContext context, Action launch)
    {
        if (!Enabled)
        {
            launch();
            return;
        }
        using var start = new CudaEvent(context);
        using var end = new CudaEvent(context);
        start.Record();
        launch();
        end.Record();
        float ms = CudaEvent.ElapsedMilliseconds(start, end);
        lock (typeof(CudaKernelClock))
        {
            s_total += ms;
            s_launches++;
        }
    }
}
