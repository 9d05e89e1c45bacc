using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>
/// The delta rules' path of <see cref="CudaLinearBackend"/> (<c>Backend = "cuda"</c> with <see cref="LinearUpdate.Delta"/>
/// or <see cref="LinearUpdate.GatedDelta"/>): the float32 host inputs rounded to bf16, copied to the device, run through
/// a <see cref="CudaDeltaRulePlan"/>, the output (bf16 on the device) and the float32 final state copied back. A feature
/// map that keeps the width (DeltaNet's and gated DeltaNet's <see cref="FeatureMaps.L2Norm"/>) is applied to q and k on
/// the host first, in float32, as the CPU engine applies it; the kernels then see the identity map.
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
        FeatureMap map = options.FeatureMap ?? FeatureMaps.Identity;
        bool mapOnHost = !ReferenceEquals(map, FeatureMaps.Identity);
        if (mapOnHost && map.OutputDim(s.KeyDim) != s.KeyDim)
            throw new NotSupportedException($"the CUDA delta rules apply a feature map on the host only when it keeps the width; '{map.Name}' maps Dk = {s.KeyDim} to {map.OutputDim(s.KeyDim)}");
        LinearAttentionOptions kernelOptions = mapOnHost ? options with { FeatureMap = FeatureMaps.Identity } : options;
        if (!CudaDeltaRulePlan.IsSupported(s, type, kernelOptions, out string reason)) throw new NotSupportedException(reason);
        if (!CudaBackend.IsAvailable(out string why)) throw new NotSupportedException("the cuda backend cannot run here: " + why);
        float[]? mappedQ = mapOnHost ? MapRows(map, inputs.Q, s.Heads, 1, s.KeyDim, isKey: false) : null;
        float[]? mappedK = mapOnHost ? MapRows(map, inputs.K, s.KvHeads, s.Heads / s.KvHeads, s.KeyDim, isKey: true) : null;
        CudaContext context = CudaContext.Default;
        using var plan = new CudaDeltaRulePlan(context, s, type, kernelOptions, inputs.Offsets);
        using CudaTensor q = Upload(context, mappedQ ?? inputs.Q, s.Batch, s.Tokens, s.Heads, s.KeyDim);
        using CudaTensor k = Upload(context, mappedK ?? inputs.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim);
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

    /// <summary>
    /// The chunked backward on the GPU (<see cref="CudaDeltaRulePlan.Backward"/>): q, k, v and the output gradient rounded to
    /// bf16, β, the gate, the states and every gradient float32; dL/dβ and dL/d(log α) when <paramref name="gradients"/>
    /// asks for them. A width-keeping feature map (l2norm) is applied on the host as in <see cref="Forward"/>, and its
    /// backward on the host too (float32), as the CPU engine does.
    /// </summary>
    /// <exception cref="NotSupportedException">A configuration the delta-rule backward does not compute; the message says why.</exception>
    public static void Backward(in LinearInputs inputs, LinearAttentionOptions options, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> finalStateGradient,
        in LinearGradients gradients)
    {
        LinearShape s = inputs.Shape;
        const ElementType type = ElementType.BFloat16;
        FeatureMap map = options.FeatureMap ?? FeatureMaps.Identity;
        bool mapOnHost = !ReferenceEquals(map, FeatureMaps.Identity);
        if (mapOnHost && map.OutputDim(s.KeyDim) != s.KeyDim)
            throw new NotSupportedException($"the CUDA delta rules apply a feature map on the host only when it keeps the width; '{map.Name}' maps Dk = {s.KeyDim} to {map.OutputDim(s.KeyDim)}");
        LinearAttentionOptions kernelOptions = mapOnHost ? options with { FeatureMap = FeatureMaps.Identity } : options;
        if (!CudaDeltaRulePlan.IsBackwardSupported(s, type, kernelOptions, out string reason)) throw new NotSupportedException(reason);
        if (!CudaBackend.IsAvailable(out string why)) throw new NotSupportedException("the cuda backend cannot run here: " + why);
        int group = s.Heads / s.KvHeads;
        float[]? mappedQ = mapOnHost ? MapRows(map, inputs.Q, s.Heads, 1, s.KeyDim, isKey: false) : null;
        float[]? mappedK = mapOnHost ? MapRows(map, inputs.K, s.KvHeads, group, s.KeyDim, isKey: true) : null;
        CudaContext context = CudaContext.Default;
        using var plan = new CudaDeltaRulePlan(context, s, type, kernelOptions, inputs.Offsets);
        using CudaTensor q = Upload(context, mappedQ ?? inputs.Q, s.Batch, s.Tokens, s.Heads, s.KeyDim);
        using CudaTensor k = Upload(context, mappedK ?? inputs.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim);
        using CudaTensor v = Upload(context, inputs.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim);
        using CudaTensor dO = Upload(context, outputGradient, s.Batch, s.Tokens, s.Heads, s.ValueDim);
        using DeviceBuffer? beta = inputs.Beta.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.Beta);
        using DeviceBuffer? gate = inputs.Gate.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.Gate);
        using DeviceBuffer? s0 = inputs.InitialState.IsEmpty ? null : DeviceBuffer.From<float>(context, inputs.InitialState);
        using DeviceBuffer? dST = finalStateGradient.IsEmpty ? null : DeviceBuffer.From<float>(context, finalStateGradient);
        long rows = (long)s.Batch * s.Tokens;
        using var dq = new DeviceBuffer(context, Math.Max(4, rows * s.Heads * s.KeyDim * 4));
        using var dk = new DeviceBuffer(context, Math.Max(4, rows * s.KvHeads * s.KeyDim * 4));
        using var dv = new DeviceBuffer(context, Math.Max(4, rows * s.KvHeads * s.ValueDim * 4));
        long stateLength = (long)(inputs.Offsets?.Count ?? s.Batch) * s.Heads * s.KeyDim * s.ValueDim;
        using DeviceBuffer? dS0 = gradients.InitialState.IsEmpty ? null : new DeviceBuffer(context, Math.Max(4, stateLength * 4));
        using DeviceBuffer? dBeta = beta is null || gradients.Beta.IsEmpty ? null : new DeviceBuffer(context, (long)inputs.Beta.Length * 4);
        using DeviceBuffer? dGate = gate is null || gradients.Gate.IsEmpty ? null : new DeviceBuffer(context, (long)inputs.Gate.Length * 4);
        plan.Backward(q, k, v, beta, gate, s0, dO, dST, dq, dk, dv, dBeta, dGate, dS0);
        context.Synchronize();
        if (!gradients.Q.IsEmpty)
        {
            if (!mapOnHost) dq.CopyTo(gradients.Q);
            else
            {
                var dphi = new float[inputs.Q.Length];
                dq.CopyTo<float>(dphi);
                MapBackwardRows(map, inputs.Q, dphi, s.Heads, 1, s.KeyDim, isKey: false, gradients.Q);
            }
        }
        if (!gradients.K.IsEmpty)
        {
            if (!mapOnHost) dk.CopyTo(gradients.K);
            else
            {
                var dphi = new float[inputs.K.Length];
                dk.CopyTo<float>(dphi);
                MapBackwardRows(map, inputs.K, dphi, s.KvHeads, group, s.KeyDim, isKey: true, gradients.K);
            }
        }
        if (!gradients.V.IsEmpty) dv.CopyTo(gradients.V);
        if (dS0 is not null) dS0.CopyTo(gradients.InitialState);
        if (dBeta is not null) dBeta.CopyTo(gradients.Beta);
        if (dGate is not null) dGate.CopyTo(gradients.Gate);
    }

    // dL/dx of every row from dL/dφ(x), as the CPU engine's backward applies the map (row r: head (r mod heads) · group).
    private static void MapBackwardRows(FeatureMap map, ReadOnlySpan<float> source, ReadOnlySpan<float> mappedGradient, int heads, int group, int dim, bool isKey,
        Span<float> gradient)
    {
        long rows = source.Length / dim;
        for (long r = 0; r < rows; r++)
            map.Backward<float>((int)(r % heads) * group, isKey, source.Slice((int)(r * dim), dim), mappedGradient.Slice((int)(r * dim), dim),
                gradient.Slice((int)(r * dim), dim));
    }

    /// <summary>
    /// φ of every row of a <c>[B, T, heads, dim]</c> tensor, as the CPU engine maps it: row r belongs to head
    /// <c>(r mod heads) · group</c> (keys: the key/value head's first query head; queries: group 1). The map must keep the width.
    /// </summary>
    internal static float[] MapRows(FeatureMap map, ReadOnlySpan<float> source, int heads, int group, int dim, bool isKey)
    {
        ArgumentNullException.ThrowIfNull(map);
        if (map.OutputDim(dim) != dim) throw new ArgumentException($"'{map.Name}' maps width {dim} to {map.OutputDim(dim)}; only width-keeping maps run on the host.", nameof(map));
        var target = new float[source.Length];
        long rows = source.Length / dim;
        for (long r = 0; r < rows; r++)
            map.Apply<float>((int)(r % heads) * group, isKey, source.Slice((int)(r * dim), dim), target.AsSpan((int)(r * dim), dim));
        return target;
    }

    private static CudaTensor Upload(CudaContext context, ReadOnlySpan<float> data, int batch, int tokens, int heads, int dim)
    {
        var packed = new BFloat16[data.Length];
        for (int i = 0; i < data.Length; i++) packed[i] = (BFloat16)data[i];
        return CudaTensor.FromHost<BFloat16>(context, packed, batch, tokens, heads, dim);
    }
}
