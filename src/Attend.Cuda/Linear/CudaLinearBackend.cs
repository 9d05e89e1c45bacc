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
        if (CudaDeltaRuleHost.Handles(options))
        {
            // The delta rules (Delta, GatedDelta) have their own kernels and plan: CudaDeltaRulePlan.
            CudaDeltaRuleHost.Forward(inputs, options, output, finalState);
            return;
        }
        // The configuration first: a refusal names what the GPU does not compute, on any machine.
        LinearShape s = inputs.Shape;
        const ElementType type = ElementType.BFloat16;
        if (!CudaLinearPlan.IsSupported(s, type, options, out string reason)) throw new NotSupportedException(reason);
        if (!CudaBackend.IsAvailable(out string why)) throw new NotSupportedException("the cuda backend cannot run here: " + why);
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

    /// <inheritdoc/>
    /// <remarks>
    /// The chunked backward on the GPU (<see cref="CudaLinearPlan.IsBackwardSupported"/>): no decay, a fixed decay per head,
    /// a scalar gate or a channel gate (with the gate's gradient), Dk and Dv 64 or 128; q, k, v and the output gradient
    /// rounded to bf16, the gates and the gradients float32. The delta rules go to <see cref="CudaDeltaRulePlan.Backward"/>
    /// (with dβ and the scalar gate's gradient).
    /// </remarks>
    public void Backward(in LinearInputs inputs, LinearAttentionOptions options, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> finalStateGradient,
        in LinearGradients gradients)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (CudaDeltaRuleHost.Handles(options))
        {
            // The delta rules' backward: CudaDeltaRulePlan.Backward.
            CudaDeltaRuleHost.Backward(inputs, options, outputGradient, finalStateGradient, gradients);
            return;
        }
        LinearShape s = inputs.Shape;
        const ElementType type = ElementType.BFloat16;
        if (!CudaLinearPlan.IsBackwardSupported(s, type, options, out string reason)) throw new NotSupportedException(reason);
        if (!CudaBackend.IsAvailable(out string why)) throw new NotSupportedException("the cuda backend cannot run here: " + why);
        CudaContext context = CudaContext.Default;
        using var plan = new CudaLinearPlan(context, s, type, options, inputs.Offsets);
        using CudaTensor q = Upload(context, inputs.Q, s.Batch, s.Tokens, s.Heads, s.KeyDim);
        using CudaTensor k = Upload(context, inputs.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim);
        using CudaTensor v = Upload(context, inputs.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim);
        using CudaTensor dO = Upload(context, outputGradient, s.Batch, s.Tokens, s.Heads, s.ValueDim);
        using DeviceBuffer? s0 = inputs.InitialState.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.InitialState);
        using DeviceBuffer? dST = finalStateGradient.IsEmpty ? null : DeviceBuffer.From<float>(context, finalStateGradient);
        long rows = (long)s.Batch * s.Tokens;
        using var dq = new DeviceBuffer(context, Math.Max(4, rows * s.Heads * s.KeyDim * 4));
        using var dk = new DeviceBuffer(context, Math.Max(4, rows * s.KvHeads * s.KeyDim * 4));
        using var dv = new DeviceBuffer(context, Math.Max(4, rows * s.KvHeads * s.ValueDim * 4));
        long stateLength = (long)(inputs.Offsets?.Count ?? s.Batch) * s.Heads * s.KeyDim * s.ValueDim;
        using DeviceBuffer? dS0 = gradients.InitialState.IsEmpty ? null : new DeviceBuffer(context, Math.Max(4, stateLength * 4));
        using DeviceBuffer? gate = inputs.Gate.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.Gate);
        using DeviceBuffer? dGate = gate is null || gradients.Gate.IsEmpty ? null : new DeviceBuffer(context, (long)inputs.Gate.Length * 4);
        plan.Backward(q, k, v, gate, s0, dO, dST, dq, dk, dv, dGate, dS0);
        context.Synchronize();
        if (!gradients.Q.IsEmpty) dq.CopyTo(gradients.Q);
        if (!gradients.K.IsEmpty) dk.CopyTo(gradients.K);
        if (!gradients.V.IsEmpty) dv.CopyTo(gradients.V);
        if (!gradients.InitialState.IsEmpty) dS0!.CopyTo(gradients.InitialState);
        if (dGate is not null) dGate.CopyTo(gradients.Gate);
    }

    private static CudaTensor Upload(CudaContext context, ReadOnlySpan<float> data, int batch, int tokens, int heads, int dim)
    {
        var packed = new BFloat16[data.Length];
        for (int i = 0; i < data.Length; i++) packed[i] = (BFloat16)data[i];
        return CudaTensor.FromHost<BFloat16>(context, packed, batch, tokens, heads, dim);
    }
}
