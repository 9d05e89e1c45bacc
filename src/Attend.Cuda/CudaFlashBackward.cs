using System.Collections.Concurrent;

namespace Attend.Cuda;

/// <summary>
/// The backward pass on the GPU (<c>flash_backward.cu</c>): Δ = rowsum(dO ⊙ O), then dK/dV per key block (grouped query
/// heads summed inside one CTA) and dQ per 32 query rows, all recomputing P from the forward's LSE. No atomics, so the
/// gradients are bitwise reproducible (<see cref="AttentionOptions.Deterministic"/> holds by construction). CUDA cores
/// and float32 arithmetic. Head dims 64 and 128 go to the tensor-core backward (<see cref="CudaFlashBackwardMma"/>); this
/// CUDA-core path remains for the others (256), so every head dim the forward takes also has a backward.
/// </summary>
internal static unsafe class CudaFlashBackward
{
    private const int Threads = 256;
    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, bool, bool), (CudaKernelFunction Delta, CudaKernelFunction DkDv, CudaKernelFunction Dq)> s_loaded = new();

    public static int SharedBytes(int d) => (2 * 64 * (d + 1) + 2 * 32 * (d + 1) + 2 * 32 * 65 + 64) * sizeof(float);

    private static (CudaKernelFunction, CudaKernelFunction, CudaKernelFunction) Get(CudaContext context, int d, ElementType type, bool softcap, bool alibi) =>
        s_loaded.GetOrAdd((context, d, type, softcap, alibi), _ =>
        {
            string[] options =
            [
                $"-DHEAD_DIM={d}", $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}", $"-DSOFTCAP={(softcap ? 1 : 0)}", $"-DALIBI={(alibi ? 1 : 0)}",
                "--use_fast_math", "--std=c++17",
            ];
            CompiledKernel image = KernelCompiler.Build("flash_backward.cu", KernelCompiler.Source("flash_backward.cu"), options, context.Architecture);
            return (new CudaKernelFunction(context, image, "attend_bwd_delta", 0),
                new CudaKernelFunction(context, image, "attend_bwd_dkdv", SharedBytes(d)),
                new CudaKernelFunction(context, image, "attend_bwd_dq", SharedBytes(d)));
        });

    /// <summary>Runs the backward and waits (tensor cores at D = 64/128, else the three CUDA-core kernels here, which are
    /// deterministic whatever <paramref name="deterministic"/> says). Tensors are contiguous [B, T, H, D]; <paramref name="lse"/> is [B, H, Tq] float32.</summary>
    public static void Run(CudaContext context, CudaGeometry g, ElementType type, FlashBlockPlan plan, CudaScoreForm score, float scale, bool deterministic,
        CudaTensor q, CudaTensor k, CudaTensor v, CudaTensor o, CudaTensor dO, DeviceBuffer lse, CudaTensor dq, CudaTensor dk, CudaTensor dv)
    {
        if (CudaFlashBackwardMma.Supports(g.Dim))
        {
            CudaFlashBackwardMma.Run(context, g, type, plan, score, scale, deterministic, q, k, v, o, dO, lse, dq, dk, dv);
            return;
        }
        if (g.Sequences == 0 || g.Heads == 0) return;
        if (score.AlibiSlopes is { } sl && sl.Length < g.Heads)
            throw new ArgumentException($"ALiBi has {sl.Length} slopes; the call has {g.Heads} query heads.", "options");
        var (deltaK, dkdvK, dqK) = Get(context, g.Dim, type, score.Softcap is not null, score.AlibiSlopes is not null);
        using var delta = new DeviceBuffer(context, (long)g.Batch * g.Heads * g.TokensQ * sizeof(float));
        using DeviceBuffer seqs = DeviceBuffer.From<int>(context, g.SequenceTable);
        using DeviceBuffer rowPtr = DeviceBuffer.From<int>(context, plan.RowPtr);
        using DeviceBuffer items = DeviceBuffer.From<int>(context, plan.Items.Length > 0 ? plan.Items : [0, -1]);
        using DeviceBuffer colPtr = DeviceBuffer.From<int>(context, plan.ColumnPtr);
        using DeviceBuffer colItems = DeviceBuffer.From<int>(context, plan.ColumnItems.Length > 0 ? plan.ColumnItems : [0, -1]);
        using DeviceBuffer bits = DeviceBuffer.From<ulong>(context, plan.Bits.Length > 0 ? plan.Bits : [0UL]);
        using DeviceBuffer slopes = DeviceBuffer.From<float>(context, score.AlibiSlopes ?? [0f]);
        // dK/dV of keys no query sees, and of key blocks past a sequence's end, must still be zero: clear first.
        dk.Buffer.Fill(0);
        dv.Buffer.Fill(0);
        dq.Buffer.Fill(0);

        ulong pq = q.Buffer.Pointer, pk = k.Buffer.Pointer, pv = v.Buffer.Pointer, po = o.Buffer.Pointer, pdo = dO.Buffer.Pointer;
        ulong pl = lse.Pointer, pdelta = delta.Pointer, pdq = dq.Buffer.Pointer, pdk = dk.Buffer.Pointer, pdv = dv.Buffer.Pointer;
        ulong pseq = seqs.Pointer, prow = rowPtr.Pointer, pitems = items.Pointer, pcol = colPtr.Pointer, pcolItems = colItems.Pointer, pbits = bits.Pointer, pslopes = slopes.Pointer;
        int batch = g.Batch, tokensQ = g.TokensQ, tokensK = g.TokensK, heads = g.Heads, kvHeads = g.KvHeads;
        int perSeq = plan.PerSequence ? 1 : 0, maskHeads = plan.MaskHeads, maxKb = plan.MaxKeyBlocks, maxQb = plan.MaxQueryBlocks;
        float sc = scale, cap = score.Softcap ?? 1f;

        long rows = (long)batch * tokensQ * heads;
        void** a = stackalloc void*[6];
        a[0] = &po; a[1] = &pdo; a[2] = &pdelta; a[3] = &batch; a[4] = &tokensQ; a[5] = &heads;
        if (rows > 0) deltaK.Launch((uint)((rows + 7) / 8), 1, 1, Threads, 0, null, a);

        void** b = stackalloc void*[22];
        b[0] = &pq; b[1] = &pk; b[2] = &pv; b[3] = &pdo; b[4] = &pl; b[5] = &pdelta; b[6] = &pdk; b[7] = &pdv; b[8] = &pseq;
        b[9] = &pcol; b[10] = &pcolItems; b[11] = &pbits; b[12] = &pslopes; b[13] = &heads; b[14] = &kvHeads; b[15] = &tokensQ; b[16] = &tokensK;
        b[17] = &perSeq; b[18] = &maskHeads; b[19] = &maxKb; b[20] = &sc; b[21] = &cap;
        if (maxKb > 0) dkdvK.Launch((uint)maxKb, (uint)kvHeads, (uint)g.Sequences, Threads, (uint)SharedBytes(g.Dim), null, b);

        int chunks = (maxQb * 128 + 31) / 32;
        void** c = stackalloc void*[21];
        c[0] = &pq; c[1] = &pk; c[2] = &pv; c[3] = &pdo; c[4] = &pl; c[5] = &pdelta; c[6] = &pdq; c[7] = &pseq;
        c[8] = &prow; c[9] = &pitems; c[10] = &pbits; c[11] = &pslopes; c[12] = &heads; c[13] = &kvHeads; c[14] = &tokensQ; c[15] = &tokensK;
        c[16] = &perSeq; c[17] = &maskHeads; c[18] = &maxQb; c[19] = &sc; c[20] = &cap;
        if (chunks > 0) dqK.Launch((uint)heads, (uint)chunks, (uint)g.Sequences, Threads, (uint)SharedBytes(g.Dim), null, c);
        context.Synchronize(); // the temporary buffers above are freed on return
    }
}
