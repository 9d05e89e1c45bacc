using Xunit;
using Attend.Cuda;

namespace Attend.Tests.Cuda;

/// <summary>A fact that needs an NVIDIA GPU: skipped, with the reason, on machines without a usable CUDA driver (CI).</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    /// <summary>Sets <see cref="FactAttribute.Skip"/> when <see cref="CudaBackend.IsAvailable"/> says no.</summary>
    public CudaFactAttribute()
    {
        if (!CudaBackend.IsAvailable(out string why)) Skip = "needs a CUDA GPU: " + why;
    }
}
