using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using Attend.Cuda.Interop;

namespace Attend.Cuda;

/// <summary>
/// The key of one compiled specialisation: the source's SHA-256, the NVRTC options (defines and flags, in order), the
/// target architecture and the compiler's version. Two builds share a cache file only when all four agree.
/// </summary>
public sealed record KernelCacheKey(string SourceHash, IReadOnlyList<string> Options, string Architecture, string CompilerVersion)
{
    /// <summary>Creates the key of <paramref name="source"/> compiled with <paramref name="options"/> for <paramref name="architecture"/>.</summary>
    public static KernelCacheKey For(string source, IReadOnlyList<string> options, string architecture, string compilerVersion)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(options);
        return new KernelCacheKey(Hex(SHA256.HashData(Encoding.UTF8.GetBytes(source))), [.. options], architecture, compilerVersion);
    }

    /// <summary>A file name that is a hash of every part of the key.</summary>
    public string FileName
    {
        get
        {
            var text = new StringBuilder();
            text.Append(SourceHash).Append('\n').Append(Architecture).Append('\n').Append(CompilerVersion).Append('\n');
            foreach (string o in Options) text.Append(o).Append('\n');
            return Hex(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..32] + ".cubin";
        }
    }

    private static string Hex(byte[] bytes) => Convert.ToHexStringLower(bytes);

    /// <inheritdoc/>
    public bool Equals(KernelCacheKey? other) => other is not null && FileName == other.FileName;

    /// <inheritdoc/>
    public override int GetHashCode() => FileName.GetHashCode(StringComparison.Ordinal);
}

/// <summary>A compiled kernel image and what it cost.</summary>
/// <param name="Cubin">The device code.</param>
/// <param name="Key">What it was built from.</param>
/// <param name="CompileSeconds">NVRTC time of this build; 0 when it came from the disk cache.</param>
/// <param name="FromCache">True when read from the disk cache.</param>
public sealed record CompiledKernel(byte[] Cubin, KernelCacheKey Key, double CompileSeconds, bool FromCache);

/// <summary>
/// Compiles embedded kernel sources with NVRTC for the device's architecture and caches the images on disk
/// (<c>$ATTEND_CUDA_CACHE</c>, else <c>$XDG_CACHE_HOME/attend/cuda</c>, else <c>~/.cache/attend/cuda</c>), so only the
/// first run of a specialisation pays for compilation. <see cref="TotalCompileSeconds"/> lets the bench report it apart.
/// </summary>
public static unsafe class KernelCompiler
{
    private static double s_compileSeconds;
    private static int s_compiled;
    private static int s_cacheHits;

    /// <summary>Seconds spent in NVRTC by this process.</summary>
    public static double TotalCompileSeconds => Volatile.Read(ref s_compileSeconds);

    /// <summary>Specialisations compiled by this process.</summary>
    public static int Compiled => Volatile.Read(ref s_compiled);

    /// <summary>Specialisations read from the disk cache by this process.</summary>
    public static int CacheHits => Volatile.Read(ref s_cacheHits);

    /// <summary>The cache folder.</summary>
    public static string CacheDirectory
    {
        get
        {
            string? dir = Environment.GetEnvironmentVariable("ATTEND_CUDA_CACHE");
            if (!string.IsNullOrEmpty(dir)) return dir;
            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            string root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "attend", "cuda");
        }
    }

    /// <summary>
    /// The text of an embedded kernel source, e.g. <c>flash_forward.cu</c>, with each <c>#include "name.cuh"</c> line
    /// replaced by that embedded header's text (one level: headers include nothing). The kernels share their tile
    /// helpers this way; the cache key hashes the expanded text, so a header change rebuilds every kernel using it.
    /// </summary>
    /// <exception cref="ArgumentException">No such resource, or an include of a missing header.</exception>
    public static string Source(string fileName)
    {
        string text = Resource(fileName);
        if (!text.Contains("#include \"", StringComparison.Ordinal)) return text;
        var expanded = new StringBuilder(text.Length * 2);
        foreach (string line in text.Split('\n'))
        {
            string trimmed = line.Trim();
            if (trimmed.StartsWith("#include \"", StringComparison.Ordinal) && trimmed.EndsWith('"'))
                expanded.Append(Resource(trimmed["#include \"".Length..^1])).Append('\n');
            else
                expanded.Append(line).Append('\n');
        }
        return expanded.ToString();
    }

    private static string Resource(string fileName)
    {
        using Stream? s = typeof(KernelCompiler).Assembly.GetManifestResourceStream("Attend.Cuda.Kernels." + fileName)
            ?? throw new ArgumentException($"No embedded kernel source '{fileName}'.", nameof(fileName));
        using var reader = new StreamReader(s, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    /// <summary>NVRTC's version, e.g. <c>nvrtc 13.0</c>.</summary>
    public static string CompilerVersion()
    {
        CudaException.CheckNvrtc(Nvrtc.nvrtcVersion(out int major, out int minor), nameof(Nvrtc.nvrtcVersion));
        return $"nvrtc {major}.{minor}";
    }

    /// <summary>The image of <paramref name="source"/> built with <paramref name="options"/> for <paramref name="architecture"/>, from the cache or NVRTC.</summary>
    /// <exception cref="CudaException">The compilation failed; the message carries NVRTC's log.</exception>
    public static CompiledKernel Build(string name, string source, IReadOnlyList<string> options, string architecture)
    {
        var key = KernelCacheKey.For(source, options, architecture, CompilerVersion());
        string path = Path.Combine(CacheDirectory, key.FileName);
        if (File.Exists(path))
        {
            try
            {
                byte[] cached = File.ReadAllBytes(path);
                if (cached.Length > 0)
                {
                    Interlocked.Increment(ref s_cacheHits);
                    return new CompiledKernel(cached, key, 0, true);
                }
            }
            catch (IOException)
            {
                // An unreadable cache entry is rebuilt below.
            }
        }
        var watch = Stopwatch.StartNew();
        byte[] cubin = Compile(name, source, [.. options, $"--gpu-architecture={architecture}"]);
        double seconds = watch.Elapsed.TotalSeconds;
        lock (typeof(KernelCompiler)) s_compileSeconds += seconds;
        Interlocked.Increment(ref s_compiled);
        TryStore(path, cubin);
        return new CompiledKernel(cubin, key, seconds, false);
    }

    private static byte[] Compile(string name, string source, IReadOnlyList<string> options)
    {
        CudaException.CheckNvrtc(Nvrtc.nvrtcCreateProgram(out nint program, source, name, 0, 0, 0), nameof(Nvrtc.nvrtcCreateProgram));
        try
        {
            var utf8 = new nint[options.Count];
            try
            {
                for (int i = 0; i < options.Count; i++) utf8[i] = Marshal.StringToCoTaskMemUTF8(options[i]);
                fixed (nint* p = utf8)
                {
                    int result = Nvrtc.nvrtcCompileProgram(program, options.Count, (byte**)p);
                    if (result != 0) CudaException.CheckNvrtc(result, nameof(Nvrtc.nvrtcCompileProgram), Log(program));
                    // Kernel development: ATTEND_CUDA_NVRTC_LOG=1 prints the compiler's warnings of a successful build
                    // (e.g. ptxas serialising wgmma instructions), which are otherwise dropped.
                    if (Environment.GetEnvironmentVariable("ATTEND_CUDA_NVRTC_LOG") == "1" && Log(program) is { Length: > 0 } log)
                        Console.Error.WriteLine($"nvrtc {name} [{string.Join(' ', options)}]:\n{log}");
                }
            }
            finally
            {
                foreach (nint s in utf8) Marshal.FreeCoTaskMem(s);
            }
            CudaException.CheckNvrtc(Nvrtc.nvrtcGetCUBINSize(program, out nuint size), nameof(Nvrtc.nvrtcGetCUBINSize));
            var cubin = new byte[(int)size];
            fixed (byte* c = cubin)
                CudaException.CheckNvrtc(Nvrtc.nvrtcGetCUBIN(program, c), nameof(Nvrtc.nvrtcGetCUBIN));
            return cubin;
        }
        finally
        {
            Nvrtc.nvrtcDestroyProgram(ref program);
        }
    }

    private static string Log(nint program)
    {
        if (Nvrtc.nvrtcGetProgramLogSize(program, out nuint size) != 0 || size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* p = log)
            if (Nvrtc.nvrtcGetProgramLog(program, p) != 0) return "";
        // NUL-free: the log can hold the front end's and ptxas's parts, each NUL-terminated.
        return Encoding.UTF8.GetString(log, 0, log.Length - 1).Replace("\0", "", StringComparison.Ordinal).Trim();
    }

    // Write to a temporary file, then rename: concurrent processes never read a half-written image.
    private static void TryStore(string path, byte[] cubin)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string temp = path + "." + Environment.ProcessId + ".tmp";
            File.WriteAllBytes(temp, cubin);
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only cache only costs a recompilation next time.
        }
    }
}

/// <summary>A loaded module and one of its kernels, with the launch the kernels of this backend use.</summary>
internal sealed unsafe class CudaKernelFunction : IDisposable
{
    private readonly CudaContext _context;
    private nint _module;

    public CudaKernelFunction(CudaContext context, CompiledKernel image, string entryPoint, int dynamicSharedBytes)
    {
        _context = context;
        context.MakeCurrent();
        fixed (byte* p = image.Cubin)
            CudaException.CheckDriver(Driver.cuModuleLoadData(out _module, p), nameof(Driver.cuModuleLoadData));
        CudaException.CheckDriver(Driver.cuModuleGetFunction(out nint function, _module, entryPoint), nameof(Driver.cuModuleGetFunction));
        Function = function;
        EntryPoint = entryPoint;
        if (dynamicSharedBytes > 48 * 1024)
            CudaException.CheckDriver(Driver.cuFuncSetAttribute(function, Driver.FuncAttrMaxDynamicSharedSizeBytes, dynamicSharedBytes), nameof(Driver.cuFuncSetAttribute));
        CudaException.CheckDriver(Driver.cuFuncGetAttribute(out int regs, Driver.FuncAttrNumRegs, function), nameof(Driver.cuFuncGetAttribute));
        CudaException.CheckDriver(Driver.cuFuncGetAttribute(out int local, Driver.FuncAttrLocalSizeBytes, function), nameof(Driver.cuFuncGetAttribute));
        Registers = regs;
        LocalBytes = local;
        Image = image;
    }

    public nint Function { get; }
    public string EntryPoint { get; }
    public int Registers { get; }
    public int LocalBytes { get; }
    public CompiledKernel Image { get; }

    public void Launch(uint gridX, uint gridY, uint gridZ, uint threads, uint sharedBytes, CudaStream? stream, void** arguments)
    {
        // The hardware's grid limits (x < 2³¹, y and z ≤ 65535): a problem that outgrows them gets an argument error that
        // names the grid axis, not the driver's CUDA_ERROR_INVALID_VALUE.
        if (gridX > int.MaxValue || gridY > 65535 || gridZ > 65535)
            throw new ArgumentOutOfRangeException(gridX > int.MaxValue ? nameof(gridX) : gridY > 65535 ? nameof(gridY) : nameof(gridZ),
                $"{EntryPoint} needs a grid of {gridX} x {gridY} x {gridZ} blocks; CUDA allows at most 2147483647 x 65535 x 65535 " +
                "(y and z count heads, query blocks, segments or sequences: split the call).");
        _context.MakeCurrent();
        CudaException.CheckDriver(Driver.cuLaunchKernel(Function, gridX, gridY, gridZ, threads, 1, 1, sharedBytes, stream?.Handle ?? 0, arguments, null),
            nameof(Driver.cuLaunchKernel));
    }

    public void Dispose()
    {
        nint m = Interlocked.Exchange(ref _module, 0);
        if (m != 0) Driver.cuModuleUnload(m);
    }
}
