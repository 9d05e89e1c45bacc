using System.Reflection;
using System.Runtime.InteropServices;

namespace Attend.Cuda.Interop;

/// <summary>
/// Resolves the logical library names of the bindings (<c>cuda</c>, <c>nvrtc</c>, <c>cublas</c>) to the versioned files a
/// machine has, at run time: the driver ships only <c>libcuda.so.1</c>, and the toolkit's libraries carry their major
/// version (<c>libnvrtc.so.13</c>, <c>libcublas.so.13</c> on CUDA 13). Nothing is loaded until a binding is first called.
/// </summary>
internal static class NativeLibraries
{
    public const string Driver = "cuda";
    public const string Nvrtc = "nvrtc";
    public const string Cublas = "cublas";

    private static readonly string[] s_toolkitDirs =
    [
        "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu",
    ];

    private static int s_installed;

    /// <summary>The file names tried for a logical name, in order (a bare name is searched on the loader's path).</summary>
    public static IReadOnlyList<string> Candidates(string logicalName)
    {
        if (OperatingSystem.IsWindows())
        {
            return logicalName switch
            {
                Driver => ["nvcuda.dll"],
                Nvrtc => ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"],
                Cublas => ["cublas64_13.dll", "cublas64_12.dll"],
                _ => [],
            };
        }
        string[] files = logicalName switch
        {
            Driver => ["libcuda.so.1", "libcuda.so"],
            Nvrtc => ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
            Cublas => ["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
            _ => [],
        };
        if (logicalName == Driver) return files;
        var all = new List<string>(files);
        foreach (string dir in s_toolkitDirs)
            foreach (string f in files)
                all.Add(Path.Combine(dir, f));
        return all;
    }

    /// <summary>Installs the resolver for this assembly (once).</summary>
    public static void Install()
    {
        if (Interlocked.Exchange(ref s_installed, 1) == 1) return;
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
    }

    /// <summary>Loads <paramref name="logicalName"/>; false with the names tried when none loads.</summary>
    public static bool TryLoad(string logicalName, out nint handle, out string tried)
    {
        IReadOnlyList<string> candidates = Candidates(logicalName);
        foreach (string candidate in candidates)
        {
            if (NativeLibrary.TryLoad(candidate, out handle))
            {
                tried = candidate;
                return true;
            }
        }
        handle = 0;
        tried = string.Join(", ", candidates.Where(c => !c.Contains('/')));
        return false;
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name is not (Driver or Nvrtc or Cublas)) return 0;
        if (TryLoad(name, out nint handle, out string tried)) return handle;
        throw new DllNotFoundException($"The CUDA library '{name}' was not found (tried {tried}).");
    }
}
