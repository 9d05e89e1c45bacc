namespace Attend.Cuda;

/// <summary>
/// The CUDA forward as a <see cref="KernelRegistry"/> variant (backend <c>cuda</c>), so the same
/// <see cref="Attention.Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{float})"/>
/// call runs on the GPU with <c>Backend = "cuda"</c>: host spans (any strides) are packed, copied to the device, and the
/// output and LSE copied back. For real work keep tensors on the device (<see cref="CudaAttention"/>).
/// </summary>
public sealed class CudaFlashKernel : AttentionKernel
{
    /// <inheritdoc/>
    public override string Name => "CudaFlashMma";

    /// <inheritdoc/>
    public override string Backend => "cuda";

    /// <inheritdoc/>
    public override string Summary => "FlashAttention-2 forward on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async double buffering), bf16/fp16; " +
        "deterministic backward on tensor cores at D = 64/128 (CUDA cores at D = 256)";

    /// <inheritdoc/>
    public override int QueryBlockSize => FlashBlockPlan.QueryBlock;

    /// <inheritdoc/>
    public override int KeyBlockSize => FlashBlockPlan.KeyBlock;

    /// <inheritdoc/>
    public override bool IsSupported(in KernelProblem problem, out string reason)
    {
        if (problem.ElementType is not (ElementType.BFloat16 or ElementType.Float16))
        {
            reason = $"the CUDA kernel takes bf16 or fp16 inputs (tensor cores); got {problem.ElementType.ShortName()}";
            return false;
        }
        if (!CudaFlashForward.IsSupportedHeadDim(problem.HeadDim))
        {
            reason = CudaFlashForward.SupportReason(problem.HeadDim);
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

    internal override unsafe void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
    {
        ElementType type = ElementTypes.Of<T>();
        CudaScoreForm form = CudaScoreForm.Of(score);
        CudaGeometry geometry = CudaGeometry.From(call.Shape);
        CudaContext context = CudaContext.Default;
        FlashBlockPlan blocks = FlashBlockPlan.Build(call.Blocks, mask);
        var o = new T[(long)geometry.Batch * geometry.TokensQ * geometry.Heads * geometry.Dim];
        using CudaTensor q = Upload(context, call.Q, type);
        using CudaTensor k = Upload(context, call.K, type);
        using CudaTensor v = Upload(context, call.V, type);
        using CudaTensor output = CudaTensor.Create(context, type, geometry.Batch, geometry.TokensQ, geometry.Heads, geometry.Dim);
        using DeviceBuffer? lse = call.Lse.IsNull ? null : new DeviceBuffer(context, (long)geometry.Batch * geometry.Heads * geometry.TokensQ * sizeof(float));
        using (var plan = new CudaAttentionPlan(context, geometry, type, blocks, form, call.Scale))
            plan.Run(q, k, v, output, lse);
        context.Synchronize();
        output.CopyTo<T>(o);
        TensorView<T> ov = call.O;
        fixed (T* src = o)
        {
            for (int b = 0; b < ov.Batch; b++)
                for (int t = 0; t < ov.Tokens; t++)
                    for (int h = 0; h < ov.Heads; h++)
                        new ReadOnlySpan<T>(src + (((long)b * ov.Tokens + t) * ov.Heads + h) * ov.Dim, ov.Dim).CopyTo(new Span<T>(ov.Row(b, t, h), ov.Dim));
        }
        if (lse is not null)
        {
            var l = new float[geometry.Batch * geometry.Heads * geometry.TokensQ];
            lse.CopyTo<float>(l);
            for (int b = 0; b < geometry.Batch; b++)
                for (int h = 0; h < geometry.Heads; h++)
                    for (int t = 0; t < geometry.TokensQ; t++)
                        *call.Lse.At(b, h, t) = l[((long)b * geometry.Heads + h) * geometry.TokensQ + t];
        }
    }

    internal override unsafe void Backward<T, TMask, TScore>(BackwardCall<T> call, TMask mask, TScore score)
    {
        ElementType type = ElementTypes.Of<T>();
        CudaScoreForm form = CudaScoreForm.Of(score);
        CudaGeometry g = CudaGeometry.From(call.Shape);
        CudaContext context = CudaContext.Default;
        FlashBlockPlan blocks = FlashBlockPlan.Build(call.Blocks, mask);
        using CudaTensor q = Upload(context, call.Q, type);
        using CudaTensor k = Upload(context, call.K, type);
        using CudaTensor v = Upload(context, call.V, type);
        using CudaTensor o = Upload(context, call.O, type);
        using CudaTensor dO = Upload(context, call.DO, type);
        var lseHost = new float[(long)g.Batch * g.Heads * g.TokensQ];
        for (int b = 0; b < g.Batch; b++)
            for (int h = 0; h < g.Heads; h++)
                for (int t = 0; t < g.TokensQ; t++)
                    lseHost[((long)b * g.Heads + h) * g.TokensQ + t] = *call.Lse.At(b, h, t);
        using DeviceBuffer lse = DeviceBuffer.From<float>(context, lseHost);
        using CudaTensor dq = CudaTensor.Create(context, type, g.Batch, g.TokensQ, g.Heads, g.Dim);
        using CudaTensor dk = CudaTensor.Create(context, type, g.Batch, g.TokensK, g.KvHeads, g.Dim);
        using CudaTensor dv = CudaTensor.Create(context, type, g.Batch, g.TokensK, g.KvHeads, g.Dim);
        CudaFlashBackward.Run(context, g, type, blocks, form, call.Scale, call.Deterministic, q, k, v, o, dO, lse, dq, dk, dv);
        Download(dq, call.DQ);
        Download(dk, call.DK);
        Download(dv, call.DV);
    }

    // Copies a contiguous device tensor into a strided host view.
    private static unsafe void Download<T>(CudaTensor source, TensorView<T> view) where T : unmanaged
    {
        var packed = new T[source.Length];
        source.CopyTo<T>(packed);
        fixed (T* src = packed)
        {
            for (int b = 0; b < view.Batch; b++)
                for (int t = 0; t < view.Tokens; t++)
                    for (int h = 0; h < view.Heads; h++)
                        new ReadOnlySpan<T>(src + (((long)b * view.Tokens + t) * view.Heads + h) * view.Dim, view.Dim).CopyTo(new Span<T>(view.Row(b, t, h), view.Dim));
        }
    }

    // Packs a strided host view into a contiguous device tensor.
    private static unsafe CudaTensor Upload<T>(CudaContext context, TensorView<T> view, ElementType type) where T : unmanaged
    {
        var packed = new T[(long)view.Batch * view.Tokens * view.Heads * view.Dim];
        fixed (T* dst = packed)
        {
            for (int b = 0; b < view.Batch; b++)
                for (int t = 0; t < view.Tokens; t++)
                    for (int h = 0; h < view.Heads; h++)
                        new ReadOnlySpan<T>(view.Row(b, t, h), view.Dim).CopyTo(new Span<T>(dst + (((long)b * view.Tokens + t) * view.Heads + h) * view.Dim, view.Dim));
        }
        return CudaTensor.FromHost<T>(context, packed, view.Batch, view.Tokens, view.Heads, view.Dim);
    }
}
