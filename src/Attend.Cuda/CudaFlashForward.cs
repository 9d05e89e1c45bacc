using System.Collections.Concurrent;
using System.Globalization;

namespace Attend.Cuda;

/// <summary>
/// The specialisations of <c>flash_forward.cu</c>: one compiled kernel per (head dim, element type, soft cap, ALiBi,
/// partial-heavy plan, wgmma form), the wgmma form (warpgroup products) on Hopper at head dims 64 and 128,
/// with the tile shape chosen per head dim (docs/CUDA-KERNELS.md records why), loaded once per context.
/// </summary>
internal static class CudaFlashForward
{
    public const string SourceFile = "flash_forward.cu";
    public const string EntryPoint = "attend_flash_forward";

    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, bool, bool, bool, bool), CudaKernelFunction> s_loaded = new();

    // Kernel-development switches (environment, read once; docs/CUDA-KERNELS.md records what they measured):
    //   ATTEND_CUDA_FWD_WGMMA=0       the mma.sync kernel on Hopper too (default there: the wgmma form at D = 64 and 128,
    //                                 8 warps = two warpgroups of 64 query rows; measured 1.37x the mma.sync kernel at
    //                                 causal 16k, run wg2);
    //   ATTEND_CUDA_FWD_WG_MINB=1     its registers sized for 1 CTA per SM (255) instead of 2 (128; measured −17 %);
    //   ATTEND_CUDA_FWD_WGSKIP=0|heavy  the warpgroup skip of partial blocks (WGSKIP, default on for every plan) off, or
    //                                 only for partial-heavy plans (measured, run window-1: window 1024 at 32k +3.8 %, dense
    //                                 causal +1.5 to +2 %);
    //   ATTEND_CUDA_FWD_MASK32=0      partial-heavy plans test their mask with the 64-bit form instead of MASK32.
    private static readonly bool WgmmaAllowed = Environment.GetEnvironmentVariable("ATTEND_CUDA_FWD_WGMMA") != "0";
    private static readonly int WgmmaCtasPerSm = Environment.GetEnvironmentVariable("ATTEND_CUDA_FWD_WG_MINB") == "1" ? 1 : 2;
    private static readonly string? WgSkipSwitch = Environment.GetEnvironmentVariable("ATTEND_CUDA_FWD_WGSKIP");
    private static readonly bool Mask32Allowed = Environment.GetEnvironmentVariable("ATTEND_CUDA_FWD_MASK32") != "0";

    /// <summary>Whether the wgmma form skips, per warpgroup, partial blocks its 64 rows cannot see (and drops the mask on
    /// those all its rows see fully): on for every plan unless switched off (<c>0</c>) or limited to partial-heavy plans
    /// (<c>heavy</c>).</summary>
    public static bool WarpgroupSkip(bool partialHeavy, bool wgmma) => wgmma && WgSkipSwitch switch
    {
        "0" => false,
        "heavy" => partialHeavy,
        _ => true,
    };

    /// <summary>Whether the wgmma form runs for this head dim on this device (Hopper's sm_90a target, D = 64 or 128, switch on).</summary>
    public static bool UsesWgmma(CudaContext context, int headDim) => WgmmaAllowed && (headDim is 64 or 128) && context.Architecture == "sm_90a";
    private static readonly Lock s_gate = new();

    /// <summary>Warps, m16 tiles per warp, and whether Q stays in registers, per head dim (128 query rows in every case);
    /// the wgmma form is always 8 warps × 1 tile with Q in shared memory.</summary>
    public static (int Warps, int MTiles, bool QInRegisters) TileShape(int headDim, bool wgmma = false) => wgmma ? (8, 1, false) : headDim switch
    {
        64 => (4, 2, true),
        128 => (4, 2, false),
        256 => (8, 1, false),
        _ => throw new NotSupportedException(SupportReason(headDim)),
    };

    /// <summary>Why a head dim has no kernel (null when it has one).</summary>
    public static string SupportReason(int headDim) =>
        $"head dim {headDim} has no CUDA kernel: the flash kernel is specialised for head dims 64, 128 and 256 (its tiles are whole 16x16 tensor-core fragments of D)";

    public static bool IsSupportedHeadDim(int headDim) => headDim is 64 or 128 or 256;

    /// <summary>Dynamic shared memory: the Q tile and two stages of K and V tiles (the wgmma form: 1 KB more, to align them).</summary>
    public static int SharedBytes(int headDim, bool wgmma = false) => (FlashBlockPlan.QueryBlock * headDim + 4 * FlashBlockPlan.KeyBlock * headDim) * 2 + (wgmma ? 1024 : 0);

    /// <summary>
    /// The NVRTC options of a specialisation (defines first, then flags). <paramref name="partialHeavy"/> (a plan whose
    /// visited blocks are at least 1/8 partial, <see cref="FlashBlockPlan.PartialHeavy"/>) turns on the kernel's
    /// partial-block switches MASK32 and WSKIP.
    /// </summary>
    public static IReadOnlyList<string> Options(int headDim, ElementType type, bool softcap, bool alibi, bool partialHeavy = false, bool wgmma = false)
    {
        _ = TileShape(headDim); // throws for head dims without a kernel
        (int warps, int mt, bool qreg) = TileShape(headDim, wgmma);
        return
        [
            $"-DHEAD_DIM={headDim}",
            $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}",
            $"-DNWARPS={warps}",
            $"-DMT={mt}",
            $"-DBLOCK_N={FlashBlockPlan.KeyBlock}",
            $"-DQREG={(qreg ? 1 : 0)}",
            $"-DSOFTCAP={(softcap ? 1 : 0)}",
            $"-DALIBI={(alibi ? 1 : 0)}",
            $"-DMASK32={(partialHeavy && Mask32Allowed ? 1 : 0)}",
            $"-DWSKIP={(partialHeavy && !wgmma ? 1 : 0)}",
            $"-DWGMMA={(wgmma ? 1 : 0)}",
            $"-DWGSKIP={(WarpgroupSkip(partialHeavy, wgmma) ? 1 : 0)}",
            $"-DMINB={(wgmma ? WgmmaCtasPerSm : 1)}",
            "--use_fast_math",
            "--std=c++17",
        ];
    }

    /// <summary>Threads per CTA of a head dim's specialisation.</summary>
    public static int Threads(int headDim, bool wgmma = false) => TileShape(headDim, wgmma).Warps * 32;

    /// <summary>The loaded kernel of a specialisation (compiled or read from the disk cache on first use).</summary>
    public static CudaKernelFunction Get(CudaContext context, int headDim, ElementType type, bool softcap, bool alibi, bool partialHeavy = false, bool wgmma = false)
    {
        var key = (context, headDim, type, softcap, alibi, partialHeavy, wgmma);
        if (s_loaded.TryGetValue(key, out CudaKernelFunction? f)) return f;
        lock (s_gate)
        {
            if (s_loaded.TryGetValue(key, out f)) return f;
            int smem = SharedBytes(headDim, wgmma);
            if (smem > context.MaxSharedBytesPerBlock)
                throw new NotSupportedException($"head dim {headDim} needs {smem} bytes of shared memory per block; {context.Name} allows {context.MaxSharedBytesPerBlock}.");
            CompiledKernel image = KernelCompiler.Build(SourceFile, KernelCompiler.Source(SourceFile), Options(headDim, type, softcap, alibi, partialHeavy, wgmma), context.Architecture);
            f = new CudaKernelFunction(context, image, EntryPoint, smem);
            s_loaded[key] = f;
            return f;
        }
    }

    /// <summary>One line per loaded specialisation: options, registers, local memory, compile time.</summary>
    public static IEnumerable<string> Describe()
    {
        foreach (KeyValuePair<(CudaContext, int, ElementType, bool, bool, bool, bool), CudaKernelFunction> entry in s_loaded)
        {
            (_, int d, ElementType type, bool sc, bool al, bool ph, bool wg) = entry.Key;
            CudaKernelFunction f = entry.Value;
            string origin = f.Image.FromCache ? "from the disk cache" : string.Create(CultureInfo.InvariantCulture, $"compiled in {f.Image.CompileSeconds:F2} s");
            yield return $"flash_forward D={d} {type.ShortName()} softcap={sc} alibi={al} partial-heavy={ph}{(wg ? $" wgmma (registers for {WgmmaCtasPerSm} CTAs per SM, warpgroup skip {(WarpgroupSkip(ph, wg) ? "on" : "off")})" : "")}: {f.Registers} registers, {f.LocalBytes} B local, {origin}";
        }
    }
}
