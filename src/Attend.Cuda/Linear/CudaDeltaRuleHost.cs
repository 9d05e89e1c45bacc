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
