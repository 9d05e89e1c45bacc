using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>
/// <see cref="LinearAttention.Forward"/> on the GPU, selected by <c>Backend = "cuda"</c> in
/// <see cref="LinearAttentionOptions"/> once <see cref="CudaBackend.Register"/> ran: the float32 host inputs are
/// rounded to bf16 (the tensor cores' input type), copied to the device, run through a <see cref="CudaLinearPlan"/>,
/// and the output (rounded to bf16 on the device) and the float32 final state copied back. For real work keep the
/// tensors on the device and use <see cref="CudaLinearPlan"/> directly.
/// </summary>
public sealed class CudaLinearBackend : ILinearAttentionBackend
{
    /// <inheritdoc/>
    public string Name => CudaBackend.Name;

    /// <inheritdoc/>
    public void Forward(in LinearInputs inputs, LinearAttentionOptions options, Span<float> output, Span<float> finalState)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!CudaBackend.IsAvailable(out string why)) throw new NotSupportedException("the cuda backend cannot run here: " + why);
        LinearShape s = inputs.Shape;
        const ElementType type = ElementType.BFloat16;
        if (!CudaLinearPlan.IsSupported(s, type, options, out string reason)) throw new NotSupportedException(reason);
        CudaContext context = CudaContext.Default;
        using var plan = new CudaLinearPlan(context, s, type, options, inputs.Offsets);
        using CudaTensor q = Upload(context, inputs.Q, s.Batch, s.Tokens, s.Heads, s.KeyDim);
        using CudaTensor k = Upload(context, inputs.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim);
        using CudaTensor v = Upload(context, inputs.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim);
        using CudaTensor o = CudaTensor.Create(context, type, s.Batch, s.Tokens, s.Heads, s.ValueDim);
        using DeviceBuffer? gate = inputs.Gate.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.Gate);
        using DeviceBuffer? s0 = inputs.InitialState.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.InitialState);
        using DeviceBuffer? sT = finalState.IsEmpty ? null : new DeviceBuffer(context, (long)finalState.Length * sizeof(float));
        plan.Run(q, k, v, gate, s0, o, sT);
        context.Synchronize();
        var packed = new BFloat16[o.Length];
        o.CopyTo<BFloat16>(packed);
        for (int i = 0; i < packed.Length; i++) output[i] = (float)packed[i];
        sT?.CopyTo(finalState);
    }

    private static CudaTensor Upload(CudaContext context, ReadOnlySpan<float> data, int batch, int tokens, int heads, int dim)
    {
        var packed = new BFloat16[data.Length];
        for (int i = 0; i < data.Length; i++) packed[i] = (BFloat16)data[i];
        return CudaTensor.FromHost<BFloat16>(context, packed, batch, tokens, heads, dim);
    }
}
