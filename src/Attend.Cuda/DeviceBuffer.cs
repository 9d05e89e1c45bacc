using System.Runtime.InteropServices;
using Attend.Cuda.Interop;

namespace Attend.Cuda;

/// <summary>
/// Device memory (<c>cuMemAlloc</c>), freed by <see cref="Dispose"/> (or the finalizer, as a last resort).
/// <see cref="LiveAllocations"/> counts the buffers not yet freed, so tests can prove there are no leaks.
/// </summary>
public sealed unsafe class DeviceBuffer : IDisposable
{
    private static long s_live;
    private readonly CudaContext _context;
    private ulong _pointer;

    /// <summary>Allocates <paramref name="bytes"/> bytes (at least 1) on <paramref name="context"/>'s device.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative size.</exception>
    /// <exception cref="CudaException">The driver refused (e.g. <c>CUDA_ERROR_OUT_OF_MEMORY</c>).</exception>
    public DeviceBuffer(CudaContext context, long bytes)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _context = context;
        context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemAlloc(out _pointer, (nuint)Math.Max(bytes, 1)), nameof(Driver.cuMemAlloc));
        Bytes = bytes;
        Interlocked.Increment(ref s_live);
    }

    /// <summary>Buffers allocated and not yet freed, process-wide.</summary>
    public static long LiveAllocations => Interlocked.Read(ref s_live);

    /// <summary>Size in bytes.</summary>
    public long Bytes { get; }

    /// <summary>The device address (a <c>CUdeviceptr</c>).</summary>
    public ulong Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_pointer == 0, this);
            return _pointer;
        }
    }

    /// <summary>A buffer holding a copy of <paramref name="data"/>.</summary>
    public static DeviceBuffer From<T>(CudaContext context, ReadOnlySpan<T> data) where T : unmanaged
    {
        var buffer = new DeviceBuffer(context, (long)data.Length * sizeof(T));
        try
        {
            buffer.CopyFrom(data);
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
        return buffer;
    }

    /// <summary>Copies host data to the start of the buffer (synchronous).</summary>
    /// <exception cref="ArgumentException">More data than the buffer holds.</exception>
    public void CopyFrom<T>(ReadOnlySpan<T> source, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)source.Length * sizeof(T);
        CheckRange(byteOffset, bytes, nameof(source));
        if (bytes == 0) return;
        _context.MakeCurrent();
        fixed (T* p = source)
            CudaException.CheckDriver(Driver.cuMemcpyHtoD(Pointer + (ulong)byteOffset, p, (nuint)bytes), nameof(Driver.cuMemcpyHtoD));
    }

    /// <summary>Copies the start of the buffer to host memory (synchronous).</summary>
    /// <exception cref="ArgumentException">A destination larger than the buffer.</exception>
    public void CopyTo<T>(Span<T> destination, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)destination.Length * sizeof(T);
        CheckRange(byteOffset, bytes, nameof(destination));
        if (bytes == 0) return;
        _context.MakeCurrent();
        fixed (T* p = destination)
            CudaException.CheckDriver(Driver.cuMemcpyDtoH(p, Pointer + (ulong)byteOffset, (nuint)bytes), nameof(Driver.cuMemcpyDtoH));
    }

    /// <summary>Queues a copy from pinned host memory on <paramref name="stream"/>.</summary>
    public void CopyFromAsync(PinnedHostBuffer source, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(stream);
        CheckRange(0, source.Bytes, nameof(source));
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemcpyHtoDAsync(Pointer, source.Pointer, (nuint)source.Bytes, stream.Handle), nameof(Driver.cuMemcpyHtoDAsync));
    }

    /// <summary>Queues a copy into pinned host memory on <paramref name="stream"/>.</summary>
    public void CopyToAsync(PinnedHostBuffer destination, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(stream);
        CheckRange(0, destination.Bytes, nameof(destination));
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemcpyDtoHAsync(destination.Pointer, Pointer, (nuint)destination.Bytes, stream.Handle), nameof(Driver.cuMemcpyDtoHAsync));
    }

    /// <summary>Sets every byte to <paramref name="value"/> (0xFF poisons float and 16-bit float data with NaN).</summary>
    public void Fill(byte value)
    {
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemsetD8(Pointer, value, (nuint)Bytes), nameof(Driver.cuMemsetD8));
    }

    /// <summary>
    /// Queues setting every byte to <paramref name="value"/> on <paramref name="stream"/> (null: the legacy default stream),
    /// ordered with the stream's kernels whatever kind of stream it is (a non-blocking stream included, which
    /// <see cref="Fill(byte)"/> on the legacy stream would not be ordered with).
    /// </summary>
    public void Fill(byte value, CudaStream? stream)
    {
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemsetD8Async(Pointer, value, (nuint)Bytes, stream?.Handle ?? 0), nameof(Driver.cuMemsetD8Async));
    }

    private void CheckRange(long offset, long bytes, string name)
    {
        if (offset < 0 || offset + bytes > Bytes)
            throw new ArgumentException($"{name}: {bytes} bytes at offset {offset} exceed the buffer's {Bytes} bytes.", name);
    }

    /// <summary>Frees the memory.</summary>
    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees memory a caller forgot to dispose.</summary>
    ~DeviceBuffer() => Free();

    private void Free()
    {
        ulong p = Interlocked.Exchange(ref _pointer, 0);
        if (p == 0) return;
        Driver.cuMemFree(p); // best effort: a failing free at teardown has no one to report to
        Interlocked.Decrement(ref s_live);
    }
}

/// <summary>Page-locked host memory (<c>cuMemAllocHost</c>) for asynchronous copies; counted like device buffers.</summary>
public sealed unsafe class PinnedHostBuffer : IDisposable
{
    private static long s_live;
    private void* _pointer;

    /// <summary>Allocates <paramref name="bytes"/> bytes of pinned host memory.</summary>
    public PinnedHostBuffer(CudaContext context, long bytes)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemAllocHost(out _pointer, (nuint)Math.Max(bytes, 1)), nameof(Driver.cuMemAllocHost));
        Bytes = bytes;
        Interlocked.Increment(ref s_live);
    }

    /// <summary>Pinned buffers not yet freed, process-wide.</summary>
    public static long LiveAllocations => Interlocked.Read(ref s_live);

    /// <summary>Size in bytes.</summary>
    public long Bytes { get; }

    internal void* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(PinnedHostBuffer));

    /// <summary>The memory as a span of <typeparamref name="T"/>.</summary>
    public Span<T> AsSpan<T>() where T : unmanaged => new(Pointer, checked((int)(Bytes / sizeof(T))));

    /// <summary>Frees the memory.</summary>
    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees memory a caller forgot to dispose.</summary>
    ~PinnedHostBuffer() => Free();

    private void Free()
    {
        void* p = _pointer;
        if (p == null) return;
        _pointer = null;
        Driver.cuMemFreeHost(p);
        Interlocked.Decrement(ref s_live);
    }
}
