using System.Text;
using Attend.Cuda.Interop;

namespace Attend.Cuda;

/// <summary>
/// The primary context of one CUDA device, made current on whichever thread uses it. <see cref="Default"/> is device 0,
/// created on first use; <see cref="CudaBackend.IsAvailable"/> says beforehand whether that can work.
/// </summary>
public sealed class CudaContext : IDisposable
{
    private static readonly Lazy<CudaContext> s_default = new(() => new CudaContext(0), LazyThreadSafetyMode.ExecutionAndPublication);
    private nint _context;

    /// <summary>Retains the primary context of device <paramref name="ordinal"/>.</summary>
    /// <exception cref="CudaException">No driver, no such device, or the driver refused.</exception>
    public unsafe CudaContext(int ordinal)
    {
        CudaException.CheckDriver(Driver.cuInit(0), nameof(Driver.cuInit));
        CudaException.CheckDriver(Driver.cuDeviceGet(out int device, ordinal), nameof(Driver.cuDeviceGet));
        Device = device;
        CudaException.CheckDriver(Driver.cuDevicePrimaryCtxRetain(out _context, device), nameof(Driver.cuDevicePrimaryCtxRetain));
        MakeCurrent();
        byte* name = stackalloc byte[256];
        CudaException.CheckDriver(Driver.cuDeviceGetName(name, 256, device), nameof(Driver.cuDeviceGetName));
        Name = Encoding.UTF8.GetString(name, new ReadOnlySpan<byte>(name, 256).IndexOf((byte)0));
        ComputeMajor = Attribute(Driver.AttrComputeCapabilityMajor);
        ComputeMinor = Attribute(Driver.AttrComputeCapabilityMinor);
        Multiprocessors = Attribute(Driver.AttrMultiprocessorCount);
        MaxSharedBytesPerBlock = Attribute(Driver.AttrMaxSharedMemoryPerBlockOptin);
    }

    /// <summary>Device 0's context, created on first use.</summary>
    public static CudaContext Default => s_default.Value;

    /// <summary>The device handle.</summary>
    public int Device { get; }

    /// <summary>The device's name, e.g. <c>NVIDIA H100 80GB HBM3</c>.</summary>
    public string Name { get; }

    /// <summary>Compute capability, major part (9 on Hopper).</summary>
    public int ComputeMajor { get; }

    /// <summary>Compute capability, minor part.</summary>
    public int ComputeMinor { get; }

    /// <summary>Streaming multiprocessors.</summary>
    public int Multiprocessors { get; }

    /// <summary>Most dynamic shared memory one block may opt into, in bytes.</summary>
    public int MaxSharedBytesPerBlock { get; }

    /// <summary>
    /// The NVRTC target: <c>sm_90a</c> on Hopper (the architecture-specific target, so wgmma-era features are allowed),
    /// otherwise <c>sm_XY</c>.
    /// </summary>
    public string Architecture => ComputeMajor == 9 && ComputeMinor == 0 ? "sm_90a" : $"sm_{ComputeMajor}{ComputeMinor}";

    /// <summary>Makes this context current on the calling thread.</summary>
    public void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(_context == 0, this);
        CudaException.CheckDriver(Driver.cuCtxSetCurrent(_context), nameof(Driver.cuCtxSetCurrent));
    }

    /// <summary>Waits for all work on the device.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        CudaException.CheckDriver(Driver.cuCtxSynchronize(), nameof(Driver.cuCtxSynchronize));
    }

    /// <summary>Free and total device memory in bytes.</summary>
    public (long Free, long Total) MemoryInfo()
    {
        MakeCurrent();
        CudaException.CheckDriver(Driver.cuMemGetInfo(out nuint free, out nuint total), nameof(Driver.cuMemGetInfo));
        return ((long)free, (long)total);
    }

    private int Attribute(int attribute)
    {
        CudaException.CheckDriver(Driver.cuDeviceGetAttribute(out int value, attribute, Device), nameof(Driver.cuDeviceGetAttribute));
        return value;
    }

    /// <summary>Releases the primary context (the default context is never released).</summary>
    public void Dispose()
    {
        if (_context == 0 || (s_default.IsValueCreated && ReferenceEquals(s_default.Value, this))) return;
        Driver.cuDevicePrimaryCtxRelease(Device);
        _context = 0;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} (sm_{ComputeMajor}{ComputeMinor}, {Multiprocessors} SMs)";
}
