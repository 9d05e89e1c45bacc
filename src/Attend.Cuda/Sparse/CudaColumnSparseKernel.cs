using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Attend.Methods.Sparse;

namespace Attend.Cuda.Sparse;

/// <summary>
/// The token-level sparse forward on the GPU (<c>column_sparse_forward.cu</c>): what
/// <see cref="VerticalSlashAttention.Forward{T}"/> runs with backend <c>cuda</c>. Host tensors of float32 (rounded to
/// bf16, output widened back), bf16 or fp16; head dims 64, 128, 256; grouped-query K/V; varlen. Output and natural-log
/// LSE; a row that covers no key gets 0 and −∞. Device time goes to <see cref="CudaKernelClock"/> when enabled.
/// </summary>
public sealed class CudaColumnSparseKernel : ColumnSparseKernel
{
    private const string SourceFile = "column_sparse_forward.cu";
    private const string EntryPoint = "attend_column_sparse_forward";
    private const int Threads = 128;
    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType), CudaKernelFunction> s_loaded = new();
    private static readonly Lock s_gate = new();

    /// <inheritdoc/>
    public override string Backend => CudaBackend.Name;

    /// <inheritdoc/>
    public override bool IsSupported(ElementType type, int headDim, out string reason)
    {
        if (type is not (ElementType.Float32 or ElementType.BFloat16 or ElementType.Float16))
        {
            reason = $"the CUDA token-level kernel takes float32 (computed in bf16), bf16 or fp16; got {type.ShortName()}";
            return false;
        }
        if (headDim is not (64 or 128 or 256))
        {
            reason = $"head dim {headDim} has no CUDA kernel: the token-level kernel is specialised for head dims 64, 128 and 256";
            return false;
        }
        if (!CudaBackend.IsAvailable(out string why))
        {
            reason = why;
            return false;
        }
        reason = "";
        return true;
    }

    /// <summary>Shared memory of a specialisation: the Q tile and two stages of K and V tiles.</summary>
    internal static int SharedBytes(int headDim) => (ColumnSparsePlan.QueryBlock + 4 * ColumnSparsePlan.KeyBlock) * headDim * 2;

    /// <summary>The NVRTC options of a specialisation.</summary>
    internal static IReadOnlyList<string> Options(int headDim, ElementType type) =>
    [
        $"-DHEAD_DIM={headDim}",
        $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}",
        $"-DQREG={(headDim <= 128 ? 1 : 0)}",
        "--use_fast_math",
        "--std=c++17",
    ];

    private static CudaKernelFunction Get(CudaContext context, int headDim, ElementType type)
    {
        var key = (context, headDim, type);
        if (s_loaded.TryGetValue(key, out CudaKernelFunction? f)) return f;
        lock (s_gate)
        {
            if (s_loaded.TryGetValue(key, out f)) return f;
            int smem = SharedBytes(headDim);
            if (smem > context.MaxSharedBytesPerBlock)
                throw new NotSupportedException($"head dim {headDim} needs {smem} bytes of shared memory per block; {context.Name} allows {context.MaxSharedBytesPerBlock}.");
            CompiledKernel image = KernelCompiler.Build(SourceFile, KernelCompiler.Source(SourceFile), Options(headDim, type), context.Architecture);
            f = new CudaKernelFunction(context, image, EntryPoint, smem);
            s_loaded[key] = f;
            return f;
        }
    }

    internal override void Forward<T>(AttentionShape shape, TensorView<T> q, TensorView<T> k, TensorView<T> v, TensorView<T> output, LseView lse,
        VerticalSlashPlan plan, float scale)
    {
        CudaContext context = CudaContext.Default;
        CudaGeometry g = CudaGeometry.From(shape);
        ElementType type = HostStaging.DeviceType<T>();
        ColumnSparsePlan items = ColumnSparsePlan.Build(plan);
        CudaKernelFunction kernel = Get(context, g.Dim, type);
        using CudaTensor dq = HostStaging.Upload(context, q);
        using CudaTensor dk = HostStaging.Upload(context, k);
        using CudaTensor dv = HostStaging.Upload(context, v);
        using CudaTensor dout = CudaTensor.Create(context, type, g.Batch, g.TokensQ, g.Heads, g.Dim);
        using var dlse = new DeviceBuffer(context, Math.Max(4, (long)g.Batch * g.Heads * g.TokensQ * sizeof(float)));
        using DeviceBuffer seqs = DeviceBuffer.From<int>(context, g.SequenceTable);
        using DeviceBuffer rowPtr = DeviceBuffer.From<int>(context, items.RowPtr);
        using DeviceBuffer itemBuffer = DeviceBuffer.From<ColumnSparsePlan.Item>(context, items.Items.Length > 0 ? items.Items : [default]);
        using DeviceBuffer columns = DeviceBuffer.From<int>(context, items.Columns.Length > 0 ? items.Columns : [0]);
        if (g.Sequences > 0 && items.MaxQueryBlocks > 0 && g.Heads > 0)
            CudaKernelClock.Time(context, () => Launch(kernel, g, items, dq, dk, dv, dout, dlse, seqs, rowPtr, itemBuffer, columns, scale));
        context.Synchronize();
        HostStaging.Download(dout, output);
        if (!lse.IsNull) HostStaging.DownloadLse(dlse, lse, g.Batch, g.Heads, g.TokensQ);
    }

    private static unsafe void Launch(CudaKernelFunction kernel, CudaGeometry g, ColumnSparsePlan plan, CudaTensor q, CudaTensor k, CudaTensor v,
        CudaTensor o, DeviceBuffer lse, DeviceBuffer seqs, DeviceBuffer rowPtr, DeviceBuffer items, DeviceBuffer columns, float scale)
    {
        var args = new Arguments
        {
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, O = o.Buffer.Pointer, Lse = lse.Pointer,
            Seqs = seqs.Pointer, RowPtr = rowPtr.Pointer, Items = items.Pointer, Columns = columns.Pointer,
            Heads = g.Heads, KvHeads = g.KvHeads, TokensQ = g.TokensQ, TokensK = g.TokensK, MaxQBlocks = plan.MaxQueryBlocks, Scale = scale,
        };
        void** p = stackalloc void*[15];
        p[0] = &args.Q; p[1] = &args.K; p[2] = &args.V; p[3] = &args.O; p[4] = &args.Lse;
        p[5] = &args.Seqs; p[6] = &args.RowPtr; p[7] = &args.Items; p[8] = &args.Columns;
        p[9] = &args.Heads; p[10] = &args.KvHeads; p[11] = &args.TokensQ; p[12] = &args.TokensK; p[13] = &args.MaxQBlocks; p[14] = &args.Scale;
        kernel.Launch((uint)g.Heads, (uint)plan.MaxQueryBlocks, (uint)g.Sequences, Threads, (uint)SharedBytes(g.Dim), null, p);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Arguments
    {
        public ulong Q, K, V, O, Lse, Seqs, RowPtr, Items, Columns;
        public int Heads, KvHeads, TokensQ, TokensK, MaxQBlocks;
        public float Scale;
    }
}
