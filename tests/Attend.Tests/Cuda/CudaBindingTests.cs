using Xunit;
using Attend.Cuda;
using Attend.Cuda.Interop;

namespace Attend.Tests.Cuda;

/// <summary>What the bindings do without a GPU: error names, exceptions, library resolution, availability.</summary>
public class CudaBindingTests
{
    [Theory]
    [InlineData(0, "CUDA_SUCCESS")]
    [InlineData(1, "CUDA_ERROR_INVALID_VALUE")]
    [InlineData(2, "CUDA_ERROR_OUT_OF_MEMORY")]
    [InlineData(100, "CUDA_ERROR_NO_DEVICE")]
    [InlineData(700, "CUDA_ERROR_ILLEGAL_ADDRESS")]
    [InlineData(719, "CUDA_ERROR_LAUNCH_FAILED")]
    public void DriverResultsHaveTheirNames(int code, string name) => Assert.Equal(name, CudaErrors.DriverName(code));

    [Fact]
    public void UnknownCodesKeepTheirNumber()
    {
        Assert.Equal("CUresult 12345", CudaErrors.DriverName(12345));
        Assert.Equal("nvrtcResult 99", CudaErrors.NvrtcName(99));
        Assert.Equal("cublasStatus 42", CudaErrors.CublasName(42));
        Assert.Equal("nvrtcResult -1", CudaErrors.NvrtcName(-1));
    }

    [Fact]
    public void NvrtcAndCublasResultsHaveTheirNames()
    {
        Assert.Equal("NVRTC_ERROR_COMPILATION", CudaErrors.NvrtcName(6));
        Assert.Equal("NVRTC_SUCCESS", CudaErrors.NvrtcName(0));
        Assert.Equal("CUBLAS_STATUS_NOT_SUPPORTED", CudaErrors.CublasName(15));
    }

    [Fact]
    public void CudaExceptionNamesFunctionAndError()
    {
        var e = new CudaException("cuMemAlloc_v2", 2, "CUDA_ERROR_OUT_OF_MEMORY");
        Assert.Equal("cuMemAlloc_v2", e.Function);
        Assert.Equal(2, e.Code);
        Assert.Equal("CUDA_ERROR_OUT_OF_MEMORY", e.ErrorName);
        Assert.Contains("cuMemAlloc_v2", e.Message);
        Assert.Contains("CUDA_ERROR_OUT_OF_MEMORY", e.Message);
    }

    [Fact]
    public void FailedNvrtcCallCarriesTheLog()
    {
        var e = Assert.Throws<CudaException>(() => CudaException.CheckNvrtc(6, "nvrtcCompileProgram", "flash_forward.cu(12): error: identifier \"x\" is undefined"));
        Assert.Equal("NVRTC_ERROR_COMPILATION", e.ErrorName);
        Assert.Contains("identifier", e.Message);
        CudaException.CheckNvrtc(0, "nvrtcCompileProgram"); // success does not throw
    }

    [Fact]
    public void LibrariesAreLookedUpByTheirVersionedNames()
    {
        if (OperatingSystem.IsWindows()) return;
        Assert.Equal("libcuda.so.1", NativeLibraries.Candidates(NativeLibraries.Driver)[0]);
        Assert.Equal("libnvrtc.so.13", NativeLibraries.Candidates(NativeLibraries.Nvrtc)[0]);
        Assert.Equal("libcublas.so.13", NativeLibraries.Candidates(NativeLibraries.Cublas)[0]);
        Assert.Contains("/usr/local/cuda/lib64/libnvrtc.so.13", NativeLibraries.Candidates(NativeLibraries.Nvrtc));
    }

    [Fact]
    public void AvailabilityAlwaysComesWithAReason()
    {
        bool available = CudaBackend.IsAvailable(out string why);
        if (available) Assert.Equal("", why);
        else Assert.False(string.IsNullOrWhiteSpace(why));
        Assert.False(string.IsNullOrWhiteSpace(CudaBackend.Describe()));
    }
}
