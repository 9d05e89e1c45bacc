using System.Runtime.CompilerServices;

namespace Attend.Tests.Cuda;

/// <summary>
/// Registers the CUDA variants when the test assembly loads, before any test runs: tests that enumerate
/// <see cref="KernelRegistry.Softmax"/> then always see the same list (registration mid-run would race with them).
/// </summary>
internal static class RegisterCudaBackend
{
    [ModuleInitializer]
    internal static void Register() => Attend.Cuda.CudaBackend.Register();
}
