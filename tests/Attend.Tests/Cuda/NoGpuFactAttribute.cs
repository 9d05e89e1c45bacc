using Attend.Cuda;
using Xunit;

namespace Attend.Tests.Cuda;

/// <summary>A fact about what a machine without a GPU is told: skipped, with the reason, where a CUDA GPU is present.</summary>
public sealed class NoGpuFactAttribute : FactAttribute
{
    /// <summary>Sets <see cref="FactAttribute.Skip"/> when <see cref="CudaBackend.IsAvailable"/> says yes.</summary>
    public NoGpuFactAttribute()
    {
        if (CudaBackend.IsAvailable(out _)) Skip = "a CUDA GPU is present: this test checks the message a machine without one gets";
    }
}
