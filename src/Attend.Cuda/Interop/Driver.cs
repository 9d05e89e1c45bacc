using System.Runtime.InteropServices;

namespace Attend.Cuda.Interop;

/// <summary>The CUDA driver API (<c>libcuda.so.1</c>) calls the backend uses. Every result is checked by the caller
/// through <see cref="CudaException.CheckDriver"/>.</summary>
internal static unsafe partial class Driver
{
    static Driver() => NativeLibraries.Install();

    public const int AttrMultiprocessorCount = 16;
    public const int AttrComputeCapabilityMajor = 75;
    public const int AttrComputeCapabilityMinor = 76;
    public const int AttrMaxSharedMemoryPerBlockOptin = 97;
    public const int FuncAttrLocalSizeBytes = 3;
    public const int FuncAttrNumRegs = 4;
    public const int FuncAttrMaxDynamicSharedSizeBytes = 8;

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuInit(uint flags);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDriverGetVersion(out int version);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetCount(out int count);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetAttribute(out int value, int attribute, int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuCtxSetCurrent(nint context);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuCtxSynchronize();
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemGetInfo_v2")] public static partial int cuMemGetInfo(out nuint free, out nuint total);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemAlloc_v2")] public static partial int cuMemAlloc(out ulong pointer, nuint bytes);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemFree_v2")] public static partial int cuMemFree(ulong pointer);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemAllocHost_v2")] public static partial int cuMemAllocHost(out void* pointer, nuint bytes);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuMemFreeHost(void* pointer);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyHtoD_v2")] public static partial int cuMemcpyHtoD(ulong destination, void* source, nuint bytes);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoH_v2")] public static partial int cuMemcpyDtoH(void* destination, ulong source, nuint bytes);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoD_v2")] public static partial int cuMemcpyDtoD(ulong destination, ulong source, nuint bytes);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyHtoDAsync_v2")] public static partial int cuMemcpyHtoDAsync(ulong destination, void* source, nuint bytes, nint stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoHAsync_v2")] public static partial int cuMemcpyDtoHAsync(void* destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemsetD8_v2")] public static partial int cuMemsetD8(ulong destination, byte value, nuint count);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuMemsetD8Async(ulong destination, byte value, nuint count, nint stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamCreate(out nint stream, uint flags);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuStreamDestroy_v2")] public static partial int cuStreamDestroy(nint stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamSynchronize(nint stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamWaitEvent(nint stream, nint evt, uint flags);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventCreate(out nint evt, uint flags);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuEventDestroy_v2")] public static partial int cuEventDestroy(nint evt);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventRecord(nint evt, nint stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventSynchronize(nint evt);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventElapsedTime(out float milliseconds, nint start, nint end);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleLoadData(out nint module, void* image);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleUnload(nint module);
    [LibraryImport(NativeLibraries.Driver, StringMarshalling = StringMarshalling.Utf8)] public static partial int cuModuleGetFunction(out nint function, nint module, string name);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuFuncSetAttribute(nint function, int attribute, int value);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuFuncGetAttribute(out int value, int attribute, nint function);
    [LibraryImport(NativeLibraries.Driver)]
    public static partial int cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, nint stream, void** parameters, void** extra);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGetErrorName(int error, out nint name);

    /// <summary>The driver's name for <paramref name="code"/>, falling back to <see cref="CudaErrors"/>.</summary>
    public static string ErrorName(int code)
    {
        try
        {
            if (cuGetErrorName(code, out nint p) == 0 && p != 0) return Marshal.PtrToStringUTF8(p) ?? CudaErrors.DriverName(code);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
        }
        return CudaErrors.DriverName(code);
    }
}

/// <summary>NVRTC (<c>libnvrtc.so.13</c>): run-time compilation of the embedded kernel sources.</summary>
internal static unsafe partial class Nvrtc
{
    static Nvrtc() => NativeLibraries.Install();

    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcVersion(out int major, out int minor);
    [LibraryImport(NativeLibraries.Nvrtc, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int nvrtcCreateProgram(out nint program, string source, string name, int headers, nint headerSources, nint includeNames);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcCompileProgram(nint program, int optionCount, byte** options);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetProgramLogSize(nint program, out nuint size);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetProgramLog(nint program, byte* log);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetCUBINSize(nint program, out nuint size);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetCUBIN(nint program, byte* cubin);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcDestroyProgram(ref nint program);
}

/// <summary>cuBLAS (<c>libcublas.so.13</c>): the bf16 matrix product that measures the GPU's ceiling in the bench.</summary>
internal static unsafe partial class Cublas
{
    static Cublas() => NativeLibraries.Install();

    public const int OpN = 0;
    public const int OpT = 1;
    public const int DataR32F = 0;
    public const int DataR16BF = 14;
    public const int ComputeR32F = 68;
    public const int GemmDefault = -1;

    [LibraryImport(NativeLibraries.Cublas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(out nint handle);
    [LibraryImport(NativeLibraries.Cublas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(nint handle);
    [LibraryImport(NativeLibraries.Cublas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(nint handle, nint stream);
    [LibraryImport(NativeLibraries.Cublas)]
    public static partial int cublasGemmEx(nint handle, int transA, int transB, int m, int n, int k, void* alpha, ulong a, int aType, int lda,
        ulong b, int bType, int ldb, void* beta, ulong c, int cType, int ldc, int computeType, int algorithm);
}
