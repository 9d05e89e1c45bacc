using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>
/// The delta rules' path of <see cref="CudaLinearBackend"/> (<c>Backend = "cuda"</c> with <see cref="LinearUpdate.Delta"/>
/// or <see cref="LinearUpdate.GatedDelta"/>): the float32 host inputs rounded to bf16, copied to the device, run through
/// a <see cref="CudaDeltaRulePlan"/>, the output (bf16 on the device) and the float32 final state copied back.
/// </summary>
internal static class CudaDeltaRuleHost
{
    /// <summary>Whether <paramref name="options"/> asks for a delta rule (then <see cref="Forward"/> computes the call).</summary>
    public static bool Handles(LinearAttentionOptions? options) => options?.Update is LinearUpdate.Delta or LinearUpdate.GatedDelta;

    /// <exception cref="NotSupportedException">A configuration the delta-rule kernels do not compute; the message says why.</exception>
    public static void Forward(in LinearInputs inputs, LinearAttentionOptions options, Span<float> output, Span<float> finalState)
    {
        LinearShape s = inputs.Shape;
        const ElementType type = ElementType.BFloat16;
        if (!CudaDeltaRulePlan.IsSupported(s, type, options, out string reason)) throw new NotSupportedException(reason);
        CudaContext context = CudaContext.Default;
        using var plan = new CudaDeltaRulePlan(context, s, type, options, inputs.Offsets);
        using CudaTensor q = Upload(context, inputs.Q, s.Batch, s.Tokens, s.Heads, s.KeyDim);
        using CudaTensor k = Upload(context, inputs.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim);
        using CudaTensor v = Upload(context, inputs.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim);
        using CudaTensor o = CudaTensor.Create(context, type, s.Batch, s.Tokens, s.Heads, s.ValueDim);
        using DeviceBuffer? beta = inputs.Beta.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.Beta);
        using DeviceBuffer? gate = inputs.Gate.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.Gate);
        using DeviceBuffer? s0 = inputs.InitialState.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.InitialState);
        using DeviceBuffer? sT = finalState.IsEmpty ? null : new DeviceBuffer(context, (long)finalState.Length * sizeof(float));
        plan.Run(q, k, v, beta, gate, s0, o, sT);
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
