namespace Attend.Cuda.Interop;

/// <summary>
/// Names of the driver's and NVRTC's result codes, for messages (the driver's own <c>cuGetErrorName</c> is used when the
/// driver is loaded; this table also answers on machines without one).
/// </summary>
public static class CudaErrors
{
    private static readonly Dictionary<int, string> s_driver = new()
    {
        [0] = "CUDA_SUCCESS",
        [1] = "CUDA_ERROR_INVALID_VALUE",
        [2] = "CUDA_ERROR_OUT_OF_MEMORY",
        [3] = "CUDA_ERROR_NOT_INITIALIZED",
        [4] = "CUDA_ERROR_DEINITIALIZED",
        [34] = "CUDA_ERROR_STUB_LIBRARY",
        [35] = "CUDA_ERROR_INSUFFICIENT_DRIVER",
        [100] = "CUDA_ERROR_NO_DEVICE",
        [101] = "CUDA_ERROR_INVALID_DEVICE",
        [200] = "CUDA_ERROR_INVALID_IMAGE",
        [201] = "CUDA_ERROR_INVALID_CONTEXT",
        [209] = "CUDA_ERROR_NO_BINARY_FOR_GPU",
        [218] = "CUDA_ERROR_INVALID_PTX",
        [222] = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        [300] = "CUDA_ERROR_INVALID_SOURCE",
        [400] = "CUDA_ERROR_INVALID_HANDLE",
        [500] = "CUDA_ERROR_NOT_FOUND",
        [600] = "CUDA_ERROR_NOT_READY",
        [700] = "CUDA_ERROR_ILLEGAL_ADDRESS",
        [701] = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        [702] = "CUDA_ERROR_LAUNCH_TIMEOUT",
        [716] = "CUDA_ERROR_MISALIGNED_ADDRESS",
        [719] = "CUDA_ERROR_LAUNCH_FAILED",
        [999] = "CUDA_ERROR_UNKNOWN",
    };

    private static readonly string[] s_nvrtc =
    [
        "NVRTC_SUCCESS", "NVRTC_ERROR_OUT_OF_MEMORY", "NVRTC_ERROR_PROGRAM_CREATION_FAILURE", "NVRTC_ERROR_INVALID_INPUT",
        "NVRTC_ERROR_INVALID_PROGRAM", "NVRTC_ERROR_INVALID_OPTION", "NVRTC_ERROR_COMPILATION",
        "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE", "NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION",
        "NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION", "NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID", "NVRTC_ERROR_INTERNAL_ERROR",
    ];

    private static readonly Dictionary<int, string> s_cublas = new()
    {
        [0] = "CUBLAS_STATUS_SUCCESS", [1] = "CUBLAS_STATUS_NOT_INITIALIZED", [3] = "CUBLAS_STATUS_ALLOC_FAILED",
        [7] = "CUBLAS_STATUS_INVALID_VALUE", [8] = "CUBLAS_STATUS_ARCH_MISMATCH", [11] = "CUBLAS_STATUS_MAPPING_ERROR",
        [13] = "CUBLAS_STATUS_EXECUTION_FAILED", [14] = "CUBLAS_STATUS_INTERNAL_ERROR", [15] = "CUBLAS_STATUS_NOT_SUPPORTED",
    };

    /// <summary>The name of a driver result (<c>CUresult</c>), e.g. 2 → <c>CUDA_ERROR_OUT_OF_MEMORY</c>.</summary>
    public static string DriverName(int code) => s_driver.TryGetValue(code, out string? n) ? n : $"CUresult {code}";

    /// <summary>The name of an NVRTC result (<c>nvrtcResult</c>).</summary>
    public static string NvrtcName(int code) => (uint)code < (uint)s_nvrtc.Length ? s_nvrtc[code] : $"nvrtcResult {code}";

    /// <summary>The name of a cuBLAS status (<c>cublasStatus_t</c>).</summary>
    public static string CublasName(int code) => s_cublas.TryGetValue(code, out string? n) ? n : $"cublasStatus {code}";
}
