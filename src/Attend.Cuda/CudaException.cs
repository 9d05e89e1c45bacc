using Attend.Cuda.Interop;

namespace Attend.Cuda;

/// <summary>A CUDA driver, NVRTC or cuBLAS call that failed: names the function and the library's error name.</summary>
public sealed class CudaException : Exception
{
    /// <summary>Creates the exception for <paramref name="function"/> returning <paramref name="code"/> named <paramref name="errorName"/>.</summary>
    public CudaException(string function, int code, string errorName, string? detail = null)
        : base($"{function} failed: {errorName} ({code})" + (string.IsNullOrEmpty(detail) ? "" : $": {detail}"))
    {
        Function = function;
        Code = code;
        ErrorName = errorName;
    }

    /// <summary>The native function that failed, e.g. <c>cuMemAlloc_v2</c>.</summary>
    public string Function { get; }

    /// <summary>The numeric result.</summary>
    public int Code { get; }

    /// <summary>The result's name, e.g. <c>CUDA_ERROR_OUT_OF_MEMORY</c>.</summary>
    public string ErrorName { get; }

    /// <summary>Throws for a failed driver call (code ≠ 0).</summary>
    internal static void CheckDriver(int code, string function)
    {
        if (code != 0) throw new CudaException(function, code, Driver.ErrorName(code));
    }

    /// <summary>Throws for a failed NVRTC call.</summary>
    internal static void CheckNvrtc(int code, string function, string? log = null)
    {
        if (code != 0) throw new CudaException(function, code, CudaErrors.NvrtcName(code), log);
    }

    /// <summary>Throws for a failed cuBLAS call.</summary>
    internal static void CheckCublas(int code, string function)
    {
        if (code != 0) throw new CudaException(function, code, CudaErrors.CublasName(code));
    }
}
