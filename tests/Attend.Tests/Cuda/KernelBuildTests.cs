using Xunit;
using Attend.Cuda;

namespace Attend.Tests.Cuda;

/// <summary>The NVRTC cache key and the specialisation options: no GPU needed.</summary>
public class KernelBuildTests
{
    private static readonly string[] s_options = ["-DHEAD_DIM=128", "-DELEM_BF16=1", "--use_fast_math"];

    [Theory]
    [InlineData("flash_forward.cu")]
    [InlineData("flash_backward_mma.cu")]
    public void SharedTileHelpersAreExpandedIntoTheKernelsThatIncludeThem(string file)
    {
        string source = KernelCompiler.Source(file);
        Assert.DoesNotContain("#include \"", source);
        // Defined once, in mma_tiles.cuh, and present exactly once after the expansion.
        int first = source.IndexOf("void mma16816(", StringComparison.Ordinal);
        Assert.True(first >= 0, "the shared m16n8k16 helper is missing");
        Assert.Equal(-1, source.IndexOf("void mma16816(", first + 1, StringComparison.Ordinal));
        Assert.Contains("void load_tile(", source);
    }

    [Fact]
    public void SameSourceOptionsAndArchitectureShareAFile()
    {
        var a = KernelCacheKey.For("source", s_options, "sm_90a", "nvrtc 13.0");
        var b = KernelCacheKey.For("source", [.. s_options], "sm_90a", "nvrtc 13.0");
        Assert.Equal(a.FileName, b.FileName);
        Assert.Equal(a, b);
        Assert.EndsWith(".cubin", a.FileName);
    }

    [Fact]
    public void EveryPartOfTheKeyChangesTheFile()
    {
        string baseline = KernelCacheKey.For("source", s_options, "sm_90a", "nvrtc 13.0").FileName;
        Assert.NotEqual(baseline, KernelCacheKey.For("source ", s_options, "sm_90a", "nvrtc 13.0").FileName);
        Assert.NotEqual(baseline, KernelCacheKey.For("source", ["-DHEAD_DIM=64", "-DELEM_BF16=1", "--use_fast_math"], "sm_90a", "nvrtc 13.0").FileName);
        Assert.NotEqual(baseline, KernelCacheKey.For("source", ["-DELEM_BF16=1", "-DHEAD_DIM=128", "--use_fast_math"], "sm_90a", "nvrtc 13.0").FileName);
        Assert.NotEqual(baseline, KernelCacheKey.For("source", s_options, "sm_80", "nvrtc 13.0").FileName);
        Assert.NotEqual(baseline, KernelCacheKey.For("source", s_options, "sm_90a", "nvrtc 12.8").FileName);
    }

    [Fact]
    public void KernelSourceIsEmbedded()
    {
        string source = KernelCompiler.Source(CudaFlashForward.SourceFile);
        Assert.Contains(CudaFlashForward.EntryPoint, source);
        Assert.Throws<ArgumentException>(() => KernelCompiler.Source("missing.cu"));
    }

    [Fact]
    public void SpecialisationsDifferByHeadDimTypeAndMods()
    {
        IReadOnlyList<string> bf16 = CudaFlashForward.Options(128, ElementType.BFloat16, softcap: false, alibi: false);
        Assert.Contains("-DHEAD_DIM=128", bf16);
        Assert.Contains("-DELEM_BF16=1", bf16);
        Assert.Contains("-DSOFTCAP=0", bf16);
        Assert.Contains("-DELEM_BF16=0", CudaFlashForward.Options(128, ElementType.Float16, false, false));
        Assert.Contains("-DALIBI=1", CudaFlashForward.Options(64, ElementType.BFloat16, false, true));
        Assert.Contains("-DSOFTCAP=1", CudaFlashForward.Options(256, ElementType.BFloat16, true, false));
        Assert.Contains("-DWSKIP=0", bf16);
        Assert.Contains("-DMASK32=0", bf16);
        IReadOnlyList<string> heavy = CudaFlashForward.Options(128, ElementType.BFloat16, false, false, partialHeavy: true);
        Assert.Contains("-DWSKIP=1", heavy);
        Assert.Contains("-DMASK32=1", heavy);
    }

    [Fact]
    public void WgmmaSpecialisationPutsEveryWarpOfAWarpgroupInEachProduct()
    {
        // The wgmma form: 8 warps (two warpgroups of 64 rows) × 1 m-tile, Q from shared memory, and no per-warp block
        // skip (WSKIP), since a warpgroup product needs all four of its warps; the partial-block mask form stays.
        IReadOnlyList<string> wg = CudaFlashForward.Options(128, ElementType.BFloat16, false, false, partialHeavy: true, wgmma: true);
        foreach (string o in (string[])["-DWGMMA=1", "-DNWARPS=8", "-DMT=1", "-DQREG=0", "-DWSKIP=0", "-DMASK32=1"])
            Assert.Contains(o, wg);
        Assert.Contains("-DWGMMA=0", CudaFlashForward.Options(128, ElementType.BFloat16, false, false));
        // The skip of whole warpgroups (WGSKIP) exists only in the wgmma form (the kernel refuses it otherwise), and is on
        // for every plan unless the development switch changes it.
        Assert.Contains("-DWGSKIP=0", CudaFlashForward.Options(128, ElementType.BFloat16, false, false, partialHeavy: true));
        if (Environment.GetEnvironmentVariable("ATTEND_CUDA_FWD_WGSKIP") is null)
        {
            Assert.Contains("-DWGSKIP=1", wg);
            Assert.Contains("-DWGSKIP=1", CudaFlashForward.Options(128, ElementType.BFloat16, false, false, partialHeavy: false, wgmma: true));
        }
        Assert.Equal(256, CudaFlashForward.Threads(128, wgmma: true));
        Assert.Equal(CudaFlashForward.SharedBytes(128) + 1024, CudaFlashForward.SharedBytes(128, wgmma: true));
        // Two CTAs per SM (the register budget MINB = 2 is sized for) must also fit Hopper's 228 KB of shared memory.
        Assert.True(2 * CudaFlashForward.SharedBytes(128, wgmma: true) <= 228 * 1024);
    }

    [Fact]
    public void WgmmaHelpersAreExpandedIntoBothKernels()
    {
        foreach (string file in (string[])["flash_forward.cu", "flash_backward_mma.cu"])
        {
            string source = KernelCompiler.Source(file);
            Assert.Contains("wgmma.mma_async.sync.aligned.m64n128k16", source);
            Assert.DoesNotContain("#include \"wgmma_tiles.cuh\"", source);
        }
    }

    [Theory]
    [InlineData(32)]
    [InlineData(96)]
    [InlineData(512)]
    public void UnsupportedHeadDimsSayWhy(int d)
    {
        Assert.False(CudaFlashForward.IsSupportedHeadDim(d));
        var e = Assert.Throws<NotSupportedException>(() => CudaFlashForward.Options(d, ElementType.BFloat16, false, false));
        Assert.Contains($"head dim {d}", e.Message);
    }

    [Fact]
    public void SharedMemoryFitsHopper()
    {
        foreach (int d in (int[])[64, 128, 256])
            Assert.True(CudaFlashForward.SharedBytes(d) <= 227 * 1024, $"D={d}: {CudaFlashForward.SharedBytes(d)} bytes");
    }
}
