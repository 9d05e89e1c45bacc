using System.Collections.Concurrent;

namespace Attend.Cuda;

/// <summary>
/// The backward pass on tensor cores (<c>flash_backward_mma.cu</c>): FlashAttention-2's backward on mma.sync m16n8k16
/// (bf16/fp16 operands, float32 accumulation). Δ = rowsum(dO ⊙ O); dK/dV per 64-key block looping over the query heads
/// of its group and the query blocks that see it (the plan's transposed lists, mask words on partial blocks); dQ per 64
/// query rows over the forward's key block list when <see cref="AttentionOptions.Deterministic"/> is set (no atomics:
/// grouped-query gradients sum inside one CTA in a fixed order, so the gradients are bitwise reproducible); otherwise
/// dQ can be added with float32 atomics from the dK/dV kernel (five matrix products instead of seven; slower as measured,
/// so only behind a development switch below): the default is the separate dQ kernel whatever Deterministic says. Head dims 64 and 128; other head dims run on the CUDA-core backward (<see cref="CudaFlashBackward"/>).
/// On Hopper (the <c>sm_90a</c> target) the same two kernels are compiled with <c>WGMMA=1</c>: every matrix product is a
/// warpgroup product (<c>wgmma.mma_async</c>, the CTA's 4 warps being one warpgroup), the rest of the code unchanged;
/// other GPUs, and <c>ATTEND_CUDA_BWD_WGMMA=0</c>, run the mma.sync form.
/// </summary>
internal static unsafe class CudaFlashBackwardMma
{
    private const int Threads = 128;
    private const int KeyBlock = 64, QueryRowsPerDqBlock = 64;

    // Kernel-development switches (environment, read once; docs/CUDA-KERNELS.md records what they measured):
    //   ATTEND_CUDA_BWD_BR=32           query rows per dK/dV step (default 64);
    //   ATTEND_CUDA_BWD_ATOMIC_DQ=1     dQ by float32 atomics from the dK/dV kernel when not Deterministic (measured 0.58×
    //                                   the separate dQ kernel at causal 16k, so off by default);
    //   ATTEND_CUDA_BWD_SKIP=dkdv       skip the dK/dV launch (timing of Δ + dQ alone; dK and dV stay zero);
    //   ATTEND_CUDA_BWD_NOVOLATILE=1    compile the mma.sync asm without `volatile` (mma_tiles.cuh's MMA_NOVOLATILE);
    //   ATTEND_CUDA_BWD_WGMMA=0         the mma.sync kernels on Hopper too (default there: the wgmma form);
    //   ATTEND_CUDA_BWD_WG_CTAS=2       wgmma form at D = 64: registers for 2 resident CTAs per SM (default 3: 168
    //                                   registers, measured +1 to +4 % at 16k, within the run-to-run spread).
    private static readonly int QueryRowsPerStep = Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_BR") == "32" ? 32 : 64;
    private static readonly bool AtomicDqAllowed = Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_ATOMIC_DQ") == "1" && QueryRowsPerStep == 64;
    private static readonly bool SkipDkDv = Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_SKIP") == "dkdv";
    private static readonly bool MmaNotVolatile = Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_NOVOLATILE") == "1";
    private static readonly bool WgmmaAllowed = Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_WGMMA") != "0" && QueryRowsPerStep == 64;
    private static readonly int WgmmaCtasPerSm = Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_WG_CTAS") == "2" ? 2 : 3;
    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, bool, bool, bool, bool), (CudaKernelFunction Delta, CudaKernelFunction DkDv, CudaKernelFunction Dq, CudaKernelFunction Convert)> s_loaded = new();

    // The wgmma form needs the sm_90a target (wgmma is an architecture-specific instruction) and no atomic dQ.
    private static bool UsesWgmma(CudaContext context, bool atomic) => WgmmaAllowed && !atomic && context.Architecture == "sm_90a";

    /// <summary>Whether the tensor-core backward takes this head dim (64 or 128: the register budget of the dK/dV accumulators).</summary>
    public static bool Supports(int headDim) => headDim is 64 or 128;

    // The wgmma form aligns its tiles to 1024 bytes inside the dynamic shared memory: 1 KB more.
    private static int DkDvSharedBytes(int d, bool atomic, bool wgmma) =>
        2 * KeyBlock * d * 2 + 4 * QueryRowsPerStep * d * 2 + 4 * QueryRowsPerStep * sizeof(float) + (atomic ? KeyBlock * QueryRowsPerStep * 2 : 0) + (wgmma ? 1024 : 0);

    private static int DqSharedBytes(int d, bool wgmma) => 2 * QueryRowsPerDqBlock * d * 2 + 4 * KeyBlock * d * 2 + (wgmma ? 1024 : 0);

    private static (CudaKernelFunction Delta, CudaKernelFunction DkDv, CudaKernelFunction Dq, CudaKernelFunction Convert) Get(
        CudaContext context, int d, ElementType type, bool softcap, bool alibi, bool atomic, bool wgmma) =>
        s_loaded.GetOrAdd((context, d, type, softcap, alibi, atomic, wgmma), _ =>
        {
            string[] options =
            [
                $"-DHEAD_DIM={d}", $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}", $"-DSOFTCAP={(softcap ? 1 : 0)}", $"-DALIBI={(alibi ? 1 : 0)}",
                $"-DBR={QueryRowsPerStep}", $"-DDQ_ATOMIC={(atomic ? 1 : 0)}", $"-DMMA_NOVOLATILE={(MmaNotVolatile ? 1 : 0)}",
                $"-DWGMMA={(wgmma ? 1 : 0)}", $"-DWG_CTAS={WgmmaCtasPerSm}", "--use_fast_math", "--std=c++17",
            ];
            CompiledKernel image = KernelCompiler.Build("flash_backward_mma.cu", KernelCompiler.Source("flash_backward_mma.cu"), options, context.Architecture);
            return (new CudaKernelFunction(context, image, "attend_bwdm_delta", 0),
                new CudaKernelFunction(context, image, "attend_bwdm_dkdv", DkDvSharedBytes(d, atomic, wgmma)),
                new CudaKernelFunction(context, image, "attend_bwdm_dq", DqSharedBytes(d, wgmma)),
                new CudaKernelFunction(context, image, "attend_bwdm_dq_convert", 0));
        });

    /// <summary>Registers and spilled (local) bytes per thread of the dK/dV and dQ kernels, for the bench's notes.</summary>
    public static string Describe(CudaContext context, int d, ElementType type)
    {
        bool wgmma = UsesWgmma(context, false);
        var (_, dkdv, dq, _) = Get(context, d, type, false, false, false, wgmma);
        string text = $"BR={QueryRowsPerStep}{(wgmma ? (d == 64 ? $", wgmma (registers for {WgmmaCtasPerSm} CTAs per SM)" : ", wgmma") : ", mma.sync")}: " +
            $"dK/dV {dkdv.Registers} regs, {dkdv.LocalBytes} B local; dQ {dq.Registers} regs, {dq.LocalBytes} B local";
        if (!AtomicDqAllowed) return text;
        var (_, dkdvA, _, _) = Get(context, d, type, false, false, true, false);
        return text + $"; dK/dV with atomic dQ {dkdvA.Registers} regs, {dkdvA.LocalBytes} B local";
    }

    /// <summary>Runs the kernels and waits. Tensors are contiguous [B, T, H, D]; <paramref name="lse"/> is [B, H, Tq] float32.
    /// <paramref name="deterministic"/> selects the separate dQ kernel (bitwise reproducible) over float32 atomics.</summary>
    public static void Run(CudaContext context, CudaGeometry g, ElementType type, FlashBlockPlan plan, CudaScoreForm score, float scale, bool deterministic,
        CudaTensor q, CudaTensor k, CudaTensor v, CudaTensor o, CudaTensor dO, DeviceBuffer lse, CudaTensor dq, CudaTensor dk, CudaTensor dv)
    {
        if (g.Sequences == 0 || g.Heads == 0) return;
        if (score.AlibiSlopes is { } sl && sl.Length < g.Heads)
            throw new ArgumentException($"ALiBi has {sl.Length} slopes; the call has {g.Heads} query heads.", "options");
        bool atomic = !deterministic && AtomicDqAllowed;
        bool wgmma = UsesWgmma(context, atomic);
        var (deltaK, dkdvK, dqK, convertK) = Get(context, g.Dim, type, score.Softcap is not null, score.AlibiSlopes is not null, atomic, wgmma);
        long dqElements = (long)g.Batch * g.TokensQ * g.Heads * g.Dim;
        using DeviceBuffer? dqAcc = atomic ? new DeviceBuffer(context, dqElements * sizeof(float)) : null;
        dqAcc?.Fill(0);
        using var delta = new DeviceBuffer(context, (long)g.Batch * g.Heads * g.TokensQ * sizeof(float));
        using DeviceBuffer seqs = DeviceBuffer.From<int>(context, g.SequenceTable);
        using DeviceBuffer rowPtr = DeviceBuffer.From<int>(context, plan.RowPtr);
        using DeviceBuffer items = DeviceBuffer.From<int>(context, plan.Items.Length > 0 ? plan.Items : [0, -1]);
        using DeviceBuffer colPtr = DeviceBuffer.From<int>(context, plan.ColumnPtr);
        using DeviceBuffer colItems = DeviceBuffer.From<int>(context, plan.ColumnItems.Length > 0 ? plan.ColumnItems : [0, -1]);
        using DeviceBuffer bits = DeviceBuffer.From<ulong>(context, plan.Bits.Length > 0 ? plan.Bits : [0UL]);
        using DeviceBuffer slopes = DeviceBuffer.From<float>(context, score.AlibiSlopes ?? [0f]);
        // Rows outside every sequence (varlen padding) and key blocks past a sequence's end are never written: clear first.
        dk.Buffer.Fill(0);
        dv.Buffer.Fill(0);
        dq.Buffer.Fill(0);

        ulong pq = q.Buffer.Pointer, pk = k.Buffer.Pointer, pv = v.Buffer.Pointer, po = o.Buffer.Pointer, pdo = dO.Buffer.Pointer;
        ulong pacc = dqAcc?.Pointer ?? 0UL;
        ulong pl = lse.Pointer, pdelta = delta.Pointer, pdq = dq.Buffer.Pointer, pdk = dk.Buffer.Pointer, pdv = dv.Buffer.Pointer;
        ulong pseq = seqs.Pointer, prow = rowPtr.Pointer, pitems = items.Pointer, pcol = colPtr.Pointer, pcolItems = colItems.Pointer, pbits = bits.Pointer, pslopes = slopes.Pointer;
        int batch = g.Batch, tokensQ = g.TokensQ, tokensK = g.TokensK, heads = g.Heads, kvHeads = g.KvHeads;
        int perSeq = plan.PerSequence ? 1 : 0, maskHeads = plan.MaskHeads, maxKb = plan.MaxKeyBlocks, maxQb = plan.MaxQueryBlocks;
        float sc = scale, cap = score.Softcap ?? 1f;

        long rows = (long)batch * tokensQ * heads;
        void** a = stackalloc void*[6];
        a[0] = &po; a[1] = &pdo; a[2] = &pdelta; a[3] = &batch; a[4] = &tokensQ; a[5] = &heads;
        if (rows > 0) deltaK.Launch((uint)((rows + 7) / 8), 1, 1, 256, 0, null, a);

        void** b = stackalloc void*[23];
        b[0] = &pq; b[1] = &pk; b[2] = &pv; b[3] = &pdo; b[4] = &pl; b[5] = &pdelta; b[6] = &pdk; b[7] = &pdv; b[8] = &pacc; b[9] = &pseq;
        b[10] = &pcol; b[11] = &pcolItems; b[12] = &pbits; b[13] = &pslopes; b[14] = &heads; b[15] = &kvHeads; b[16] = &tokensQ; b[17] = &tokensK;
        b[18] = &perSeq; b[19] = &maskHeads; b[20] = &maxKb; b[21] = &sc; b[22] = &cap;
        // dK/dV and dQ are independent once Δ is written: in the deterministic path they run side by side on two streams
        // (blocking streams, so both wait for the fills and Δ on the default stream), filling each other's tail waves.
        using CudaStream? dkdvStream = atomic ? null : new CudaStream(context);
        using CudaStream? dqStream = atomic ? null : new CudaStream(context);
        if (maxKb > 0 && !SkipDkDv) dkdvK.Launch((uint)maxKb, (uint)kvHeads, (uint)g.Sequences, Threads, (uint)DkDvSharedBytes(g.Dim, atomic, wgmma), dkdvStream, b);
        if (atomic)
        {
            long n = dqElements;
            void** e = stackalloc void*[3];
            e[0] = &pacc; e[1] = &pdq; e[2] = &n;
            if (n > 0) convertK.Launch((uint)((n / 4 + 255) / 256), 1, 1, 256, 0, null, e);
            context.Synchronize();
            return;
        }

        int chunks = (maxQb * FlashBlockPlan.QueryBlock + QueryRowsPerDqBlock - 1) / QueryRowsPerDqBlock;
        void** c = stackalloc void*[21];
        c[0] = &pq; c[1] = &pk; c[2] = &pv; c[3] = &pdo; c[4] = &pl; c[5] = &pdelta; c[6] = &pdq; c[7] = &pseq;
        c[8] = &prow; c[9] = &pitems; c[10] = &pbits; c[11] = &pslopes; c[12] = &heads; c[13] = &kvHeads; c[14] = &tokensQ; c[15] = &tokensK;
        c[16] = &perSeq; c[17] = &maskHeads; c[18] = &maxQb; c[19] = &sc; c[20] = &cap;
        if (chunks > 0) dqK.Launch((uint)heads, (uint)chunks, (uint)g.Sequences, Threads, (uint)DqSharedBytes(g.Dim, wgmma), dqStream, c);
        context.Synchronize(); // the temporary buffers above are freed on return
    }
}
