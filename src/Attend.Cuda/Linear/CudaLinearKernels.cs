using System.Collections.Concurrent;
using System.Globalization;
using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>How the state decays in the CUDA linear kernels (the <c>GATE</c> define of <c>linear_*.cu</c>).</summary>
internal enum CudaLinearGate
{
    /// <summary>No decay.</summary>
    None = 0,

    /// <summary>A scalar per token and head: a per-head constant (FixedPerHead) or a [tokens, H] gate (ScalarGate).</summary>
    Scalar = 1,

    /// <summary>A gate per token, head and key channel ([tokens, H, Dk]).</summary>
    Channel = 2,
}

/// <summary>The element-wise feature maps the CUDA pre-pass applies (the <c>map</c> argument of <c>attend_linear_feature_map</c>).</summary>
internal enum CudaLinearFeatureMap
{
    /// <summary>φ(x) = x: no pass.</summary>
    Identity = 0,

    /// <summary>φ(x) = elu(x) + 1.</summary>
    EluPlusOne = 1,

    /// <summary>φ(x) = max(x, 0).</summary>
    Relu = 2,

    /// <summary>A map the GPU does not compute (not element-wise, or widening).</summary>
    Unsupported = -1,
}

/// <summary>
/// The specialisations of <c>linear_chunk.cu</c> (key dim, element type, gate kind) and <c>linear_recurrent.cu</c>,
/// compiled by NVRTC (or read from the disk cache) once per context.
/// </summary>
internal static class CudaLinearKernels
{
    public const string ChunkSource = "linear_chunk.cu";
    public const string ChunkEntry = "attend_linear_chunk";
    public const string RecurrentSource = "linear_recurrent.cu";
    public const string RecurrentEntry = "attend_linear_recurrent";
    public const string BackwardSource = "linear_chunk_bwd.cu";
    public const string BackwardEntry = "attend_linear_chunk_bwd";
    public const string StateGradientEntry = "attend_linear_dstate";
    public const string ChannelBackwardEntry = "attend_linear_chunk_bwd_cg";

    /// <summary>Threads per CTA of <c>attend_linear_chunk_bwd_cg</c> (two groups of 4 warps).</summary>
    public const int ChannelBackwardThreads = 256;

    public const string PrepSource = "linear_prep.cu";

    /// <summary>Value columns the chunked backward holds per CTA at most (one or two 64-column blocks).</summary>
    public const int BackwardMaxValueDim = 128;

    /// <summary>Tokens per chunk and value columns per CTA of the chunked kernel.</summary>
    public const int Chunk = 64, ValueBlock = 64, RecurrentThreads = 256, RecurrentColumns = 32;

    private static readonly ConcurrentDictionary<(CudaContext, string, string, int, ElementType, CudaLinearGate), CudaKernelFunction> s_loaded = new();
    private static readonly ConcurrentDictionary<(CudaContext, string, int, ElementType, CudaLinearGate), CompiledKernel> s_images = new();
    private static readonly Lock s_gate = new();

    /// <summary>Dynamic shared memory of the chunked kernel (mirrors the OFF_* layout of linear_chunk.cu).</summary>
    public static int ChunkSharedBytes(int keyDim, CudaLinearGate gate)
    {
        int q = Chunk * keyDim * 2, v = Chunk * ValueBlock * 2, state = keyDim * ValueBlock * 2;
        int common = 4 * q + 2 * v;
        return gate switch
        {
            CudaLinearGate.None => common + 2 * state,
            CudaLinearGate.Scalar => common + 2 * state + 2 * Chunk * 4,
            _ => common + 2 * v + 2 * state + 2 * q + 2 * Chunk * keyDim * 4,
        };
    }

    /// <summary>Threads per CTA of the chunked kernel: 8 warps for the channel gate (two value halves share the gate work), else 4.</summary>
    public static int ChunkThreadsFor(CudaLinearGate gate) => gate == CudaLinearGate.Channel ? 256 : 128;

    /// <summary>Value columns per CTA of the chunked kernel: 128 for the channel gate, else 64.</summary>
    public static int ChunkColumnsFor(CudaLinearGate gate) => gate == CudaLinearGate.Channel ? 2 * ValueBlock : ValueBlock;

    /// <summary>CTAs of the chunked kernel one SM holds at once (shared memory is the limit: 228 KB per SM, 1 KB reserved per CTA).</summary>
    public static int ChunkCtasPerSm(int keyDim, CudaLinearGate gate) => Math.Max(1, 233472 / (ChunkSharedBytes(keyDim, gate) + 1024));

    public static CudaKernelFunction Chunked(CudaContext context, int keyDim, ElementType type, CudaLinearGate gate) =>
        Get(context, ChunkSource, ChunkEntry, keyDim, type, gate, ChunkSharedBytes(keyDim, gate));

    /// <summary>
    /// Dynamic shared memory of <c>attend_linear_chunk_bwd</c> (mirrors its OFF_* layout): Q, K, two V and dO blocks, two
    /// state slices, and with a scalar gate b and d b per row and the state term. The channel gate's chunk backward is
    /// <c>attend_linear_chunk_bwd_cg</c> (<see cref="ChannelBackwardSharedBytes"/>).
    /// </summary>
    public static int BackwardSharedBytes(int keyDim, CudaLinearGate gate)
    {
        int common = 2 * Chunk * keyDim * 2 + 4 * Chunk * ValueBlock * 2 + 2 * keyDim * ValueBlock * 2;
        return gate switch
        {
            CudaLinearGate.None => common,
            CudaLinearGate.Scalar => common + 2 * Chunk * 4 + 16,
            _ => throw new ArgumentOutOfRangeException(nameof(gate), gate, "the channel gate's chunk backward is attend_linear_chunk_bwd_cg (ChannelBackwardSharedBytes)"),
        };
    }

    /// <summary>
    /// Dynamic shared memory of <c>attend_linear_chunk_bwd_cg</c> (mirrors its CG_OFF_* layout): Q, K, two V and dO
    /// blocks, H0 and dH (two blocks each), the cumulative gate tile <c>[64][Dk + 4]</c> and the per-warp state factors
    /// <c>[2][4][Dk]</c> (float32), the per-warp scaled queries Q̂ (160 rows of the element type) and the 48 rows of the
    /// scaled keys K̃ that do not fit where the raw Q and K tiles were.
    /// </summary>
    public static int ChannelBackwardSharedBytes(int keyDim) =>
        2 * Chunk * keyDim * 2 + 4 * Chunk * ValueBlock * 2 + 4 * keyDim * ValueBlock * 2 + Chunk * (keyDim + 4) * 4 + 8 * keyDim * 4 + 160 * keyDim * 2 + 48 * keyDim * 2;

    /// <summary>Value blocks one CTA of <c>attend_linear_dstate</c> takes: 2 with a channel gate (8 warps share the Q and gate tiles), else 1 (4 warps).</summary>
    public static int StateGradientValueBlocks(CudaLinearGate gate) => gate == CudaLinearGate.Channel ? 2 : 1;

    /// <summary>Dynamic shared memory of <c>attend_linear_dstate</c>: Q, the CTA's dO blocks and the raw gates (none, 64 scalars or a [64][Dk] tile), two stages each.</summary>
    public static int StateGradientSharedBytes(int keyDim, CudaLinearGate gate)
    {
        int gateBytes = gate switch
        {
            CudaLinearGate.None => 0,
            CudaLinearGate.Scalar => Chunk * 4,
            _ => Chunk * keyDim * 4,
        };
        return 2 * Chunk * keyDim * 2 + 2 * StateGradientValueBlocks(gate) * Chunk * ValueBlock * 2 + 2 * gateBytes;
    }

    public static CudaKernelFunction ChunkBackward(CudaContext context, int keyDim, ElementType type, CudaLinearGate gate) =>
        Get(context, BackwardSource, BackwardEntry, keyDim, type, gate, BackwardSharedBytes(keyDim, gate));

    public static CudaKernelFunction ChannelBackward(CudaContext context, int keyDim) =>
        Get(context, BackwardSource, ChannelBackwardEntry, keyDim, ElementType.BFloat16, CudaLinearGate.Channel, ChannelBackwardSharedBytes(keyDim));

    public static CudaKernelFunction StateGradient(CudaContext context, int keyDim, ElementType type, CudaLinearGate gate) =>
        Get(context, BackwardSource, StateGradientEntry, keyDim, type, gate, StateGradientSharedBytes(keyDim, gate));

    /// <summary>An element-wise kernel of <c>linear_prep.cu</c> (feature maps, the denominator's passes).</summary>
    public static CudaKernelFunction Prep(CudaContext context, ElementType type, string entry) =>
        Get(context, PrepSource, entry, 0, type, CudaLinearGate.None, 0);

    public static CudaKernelFunction Recurrent(CudaContext context, int keyDim, ElementType type, CudaLinearGate gate) =>
        Get(context, RecurrentSource, RecurrentEntry, keyDim, type, gate, 0);

    private static CudaKernelFunction Get(CudaContext context, string file, string entry, int keyDim, ElementType type, CudaLinearGate gate, int smem)
    {
        // One entry per (file, kernel) pair: linear_chunk_bwd.cu has two kernels.
        var key = (context, file, entry, keyDim, type, gate); // a tuple of the parts: no string built per call
        if (s_loaded.TryGetValue(key, out CudaKernelFunction? f)) return f;
        lock (s_gate)
        {
            if (s_loaded.TryGetValue(key, out f)) return f;
            if (smem > context.MaxSharedBytesPerBlock)
                throw new NotSupportedException($"{file} at Dk = {keyDim} with gate {gate} needs {smem} bytes of shared memory per block; {context.Name} allows {context.MaxSharedBytesPerBlock}.");
            string[] options =
            [
                $"-DDK={keyDim}",
                $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}",
                $"-DGATE={(int)gate}",
                "--use_fast_math",
                "--std=c++17",
            ];
            CompiledKernel image = s_images.TryGetValue((context, file, keyDim, type, gate), out CompiledKernel? built)
                ? built
                : KernelCompiler.Build(file, KernelCompiler.Source(file), options, context.Architecture);
            s_images[(context, file, keyDim, type, gate)] = image;
            f = new CudaKernelFunction(context, image, entry, smem);
            s_loaded[key] = f;
            return f;
        }
    }

    /// <summary>One line per loaded specialisation: registers, local memory, compile time.</summary>
    public static IEnumerable<string> Describe()
    {
        foreach (KeyValuePair<(CudaContext, string, string, int, ElementType, CudaLinearGate), CudaKernelFunction> entry in s_loaded)
        {
            (_, string file, string kernel, int dk, ElementType type, CudaLinearGate gate) = entry.Key;
            CudaKernelFunction f = entry.Value;
            string origin = f.Image.FromCache ? "from the disk cache" : string.Create(CultureInfo.InvariantCulture, $"compiled in {f.Image.CompileSeconds:F2} s");
            yield return $"{file}:{kernel} Dk={dk} {type.ShortName()} gate={gate}: {f.Registers} registers, {f.LocalBytes} B local, {origin}";
        }
    }
}
