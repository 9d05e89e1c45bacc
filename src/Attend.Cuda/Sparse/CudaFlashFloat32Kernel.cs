namespace Attend.Cuda.Sparse;

/// <summary>
/// The CUDA flash kernel for float32 host tensors (backend <c>cuda</c>): Q, K, V are rounded to bf16 on the host (round
/// to nearest even, rows packed in parallel), the bf16 tensor-core kernel runs with float32 accumulation, and the bf16
/// output is widened back to float32; the LSE is float32 throughout. So a float32 call on the GPU has bf16 precision:
/// relative L2 error against float64 of about 4e-3 on random inputs (docs/CUDA-KERNELS.md). This is how every sparse
/// method (float32 by the method convention) runs on the GPU.
/// </summary>
/// <remarks>
/// Block masks may come at the CPU kernel's 64 × 64 tiles (every method's prebuilt plan): they are regrouped exactly
/// into the GPU's 128 × 64 blocks (<see cref="FineBlockPlan"/>). Device time of each launch goes to
/// <see cref="CudaKernelClock"/> when it is enabled.
/// </remarks>
public sealed class CudaFlashFloat32Kernel : AttentionKernel
{
    /// <inheritdoc/>
    public override string Name => "CudaFlashMmaFromFloat32";

    /// <inheritdoc/>
    public override string Backend => CudaBackend.Name;

    /// <inheritdoc/>
    public override string Summary => "float32 host tensors on the CUDA flash kernel: rounded to bf16 on the way in, output widened to float32 (bf16 precision); " +
        "accepts 64x64 block masks (regrouped into 128x64)";

    /// <inheritdoc/>
    public override bool IsSupported(in KernelProblem problem, out string reason)
    {
        if (problem.Pass != AttentionPass.Forward)
        {
            reason = "the float32 path is forward-only: run the backward with bf16 or fp16 tensors (CudaFlashMma)";
            return false;
        }
        if (problem.ElementType != ElementType.Float32)
        {
            reason = $"this variant takes float32 host tensors; {problem.ElementType.ShortName()} runs on CudaFlashMma";
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

    internal override void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
    {
        CudaScoreForm form = CudaScoreForm.Of(score);
        CudaGeometry geometry = CudaGeometry.From(call.Shape);
        CudaContext context = CudaContext.Default;
        FlashBlockPlan blocks = FineBlockPlan.Build(call.Blocks, mask);
        ElementType type = HostStaging.DeviceType<T>();
        using CudaTensor q = HostStaging.Upload(context, call.Q);
        using CudaTensor k = HostStaging.Upload(context, call.K);
        using CudaTensor v = HostStaging.Upload(context, call.V);
        using CudaTensor output = CudaTensor.Create(context, type, geometry.Batch, geometry.TokensQ, geometry.Heads, geometry.Dim);
        using DeviceBuffer? lse = call.Lse.IsNull ? null : new DeviceBuffer(context, (long)geometry.Batch * geometry.Heads * geometry.TokensQ * sizeof(float));
        using (var plan = new CudaAttentionPlan(context, geometry, type, blocks, form, call.Scale))
        {
            CudaKernelClock.Time(context, () => plan.Run(q, k, v, output, lse));
            context.Synchronize(); // the plan's block tables are freed only after its kernels have finished
        }
        HostStaging.Download(output, call.O);
        if (lse is not null) HostStaging.DownloadLse(lse, call.Lse, geometry.Batch, geometry.Heads, geometry.TokensQ);
    }
}
