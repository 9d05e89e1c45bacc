using Attend.Cuda.Interop;

namespace Attend.Cuda;

/// <summary>A CUDA stream: an ordered queue of device work.</summary>
public sealed class CudaStream : IDisposable
{
    private readonly CudaContext _context;
    private nint _handle;

    // CU_STREAM_NON_BLOCKING: the stream does not synchronise with the legacy default stream (stream 0).
    private const uint NonBlockingFlag = 1;

    /// <summary>Creates a stream on <paramref name="context"/>.</summary>
    public CudaStream(CudaContext context) : this(context, nonBlocking: false) { }

    /// <summary>
    /// Creates a stream on <paramref name="context"/>; with <paramref name="nonBlocking"/> its work neither waits for nor
    /// is waited for by the legacy default stream (stream 0), so work on the two overlaps and only events order them.
    /// </summary>
    public CudaStream(CudaContext context, bool nonBlocking)
    {
        ArgumentNullException.ThrowIfNull(context);
        _context = context;
        context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuStreamCreate(out _handle, nonBlocking ? NonBlockingFlag : 0), nameof(Driver.cuStreamCreate));
    }

    internal nint Handle => _handle != 0 ? _handle : throw new ObjectDisposedException(nameof(CudaStream));

    /// <summary>Waits until every queued operation has finished; raises a kernel's asynchronous error here.</summary>
    public void Synchronize()
    {
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuStreamSynchronize(Handle), nameof(Driver.cuStreamSynchronize));
    }

    /// <summary>Destroys the stream.</summary>
    public void Dispose()
    {
        nint h = Interlocked.Exchange(ref _handle, 0);
        if (h != 0) Driver.cuStreamDestroy(h);
    }
}

/// <summary>A CUDA event, for timing device work (<see cref="ElapsedMilliseconds"/>).</summary>
public sealed class CudaEvent : IDisposable
{
    private readonly CudaContext _context;
    private nint _handle;

    /// <summary>Creates a timing event.</summary>
    public CudaEvent(CudaContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        _context = context;
        context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuEventCreate(out _handle, 0), nameof(Driver.cuEventCreate));
    }

    internal nint Handle => _handle != 0 ? _handle : throw new ObjectDisposedException(nameof(CudaEvent));

    /// <summary>Records the event on <paramref name="stream"/> (null: the default stream).</summary>
    public void Record(CudaStream? stream = null)
    {
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuEventRecord(Handle, stream?.Handle ?? 0), nameof(Driver.cuEventRecord));
    }

    /// <summary>Waits for the event.</summary>
    public void Synchronize() => CudaException.CheckDriver(Driver.cuEventSynchronize(Handle), nameof(Driver.cuEventSynchronize));

    /// <summary>Milliseconds between two recorded events (waits for <paramref name="end"/>).</summary>
    public static float ElapsedMilliseconds(CudaEvent start, CudaEvent end)
    {
        ArgumentNullException.ThrowIfNull(start);
        ArgumentNullException.ThrowIfNull(end);
        end.Synchronize();
        CudaException.CheckDriver(Driver.cuEventElapsedTime(out float ms, start.Handle, end.Handle), nameof(Driver.cuEventElapsedTime));
        return ms;
    }

    /// <summary>Destroys the event.</summary>
    public void Dispose()
    {
        nint h = Interlocked.Exchange(ref _handle, 0);
        if (h != 0) Driver.cuEventDestroy(h);
    }
}
