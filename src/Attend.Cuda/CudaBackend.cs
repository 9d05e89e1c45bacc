using Attend.Cuda.Interop;

namespace Attend.Cuda;

/// <summary>
/// Entry point of the CUDA backend: <see cref="Register"/> adds its variants to <see cref="KernelRegistry"/> (backend
/// <c>cuda</c>; CPU calls are unaffected), <see cref="IsAvailable"/> says whether this machine can run them and, if
/// not, why (no driver library, no device, driver too old, …).
/// </summary>
public static class CudaBackend
{
    private static readonly Lazy<(bool Ok, string Reason)> s_probe = new(Probe, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The backend's name in <see cref="AttentionOptions.Backend"/> and <c>--backend</c>.</summary>
    public const string Name = "cuda";

    /// <summary>The backend's variants.</summary>
    public static IReadOnlyList<AttentionKernel> Kernels { get; } = [new CudaFlashKernel(), new Sparse.CudaFlashFloat32Kernel()];

    /// <summary>Registers the variants (idempotent). Works on machines without a GPU: the variants then say why they cannot run.</summary>
    public static void Register()
    {
        foreach (AttentionKernel k in Kernels) KernelRegistry.Register(k);
        Attend.Linear.LinearBackends.Register(new Linear.CudaLinearBackend());
        Attend.Methods.Sparse.ColumnSparseKernels.Register(new Sparse.CudaColumnSparseKernel());
    }

    /// <summary>True when the driver loads, initialises and reports at least one device; otherwise <paramref name="reason"/> says why.</summary>
    public static bool IsAvailable(out string reason)
    {
        (bool ok, reason) = s_probe.Value;
        return ok;
    }

    private static (bool, string) Probe()
    {
        if (!NativeLibraries.TryLoad(NativeLibraries.Driver, out _, out string tried))
            return (false, $"no CUDA driver on this machine (none of {tried} could be loaded)");
        try
        {
            int init = Driver.cuInit(0);
            if (init != 0) return (false, $"the CUDA driver did not initialise: cuInit returned {Driver.ErrorName(init)}");
            int count = Driver.cuDeviceGetCount(out int devices);
            if (count != 0) return (false, $"cuDeviceGetCount returned {Driver.ErrorName(count)}");
            if (devices < 1) return (false, "the CUDA driver reports no device");
            if (!NativeLibraries.TryLoad(NativeLibraries.Nvrtc, out _, out string nvrtc))
                return (false, $"NVRTC (the run-time compiler of the kernels) is missing: none of {nvrtc} could be loaded");
            return (true, "");
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return (false, $"the CUDA driver library is unusable: {e.Message}");
        }
    }

    /// <summary>One line on the device, driver and compiler, for reports.</summary>
    public static string Describe()
    {
        if (!IsAvailable(out string why)) return "no GPU: " + why;
        CudaException.CheckDriver(Driver.cuDriverGetVersion(out int version), nameof(Driver.cuDriverGetVersion));
        CudaContext c = CudaContext.Default;
        return $"{c} | driver API {version / 1000}.{version % 1000 / 10} | {KernelCompiler.CompilerVersion()} | target {c.Architecture}";
    }
}
