namespace Attend.Methods.Softmax;

/// <summary>
/// Exact softmax attention (<see cref="Attention.Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions?, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{float})"/>)
/// as a runnable method: the dense baseline every sparse and linear method is compared with.
/// Parameters: <c>mask</c> (the <see cref="MaskSpec"/> syntax), <c>scale</c>, <c>softcap</c>, <c>variant</c>.
/// Extra output: <c>lse</c> <c>[B, H, Tq]</c>.
/// </summary>
public sealed class ExactAttentionMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "exact";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "softmax", "method", MethodCatalog.FlashAttention2Paper, ["cpu"], "implemented",
        "exact softmax attention through the kernel registry; the baseline of every comparison")
    {
        Parameters =
        [
            new MethodParameter("mask", "mask", "full", MaskSpec.Help),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale"),
            new MethodParameter("softcap", "float", "", "logit soft cap C: C·tanh(s/C); none when absent"),
            new MethodParameter("variant", "string", "", "force a kernel variant (see `attend methods`)"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        int b = q.Dim(0), tq = q.Dim(1), h = q.Dim(2), d = q.Dim(3);
        int tk = k.Dim(1), hkv = k.Dim(2), dv = v.Dim(3);

        string maskText = arguments.GetString("mask", "full");
        IMaskMod? mask = MaskSpec.Parse(maskText, tk);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        float? softcap = arguments.Has("softcap") ? (float)arguments.GetDouble("softcap", 1, min: double.Epsilon) : null;
        string? variant = arguments.Has("variant") ? arguments.GetString("variant", "") : null;
        arguments.ThrowIfUnused(Name);

        var options = new AttentionOptions
        {
            Mask = mask, Scale = scale, Softcap = softcap, Variant = variant,
            QueryOffsets = inputs.Offsets, KeyOffsets = inputs.Offsets,
        };
        var o = new float[(long)b * tq * h * dv];
        var lse = new float[(long)b * h * tq];
        AttentionKernel kernel = Attention.Forward<float>(
            AttentionLayout.Bthd<float>(q.Data, b, tq, h, d),
            AttentionLayout.Bthd<float>(k.Data, k.Dim(0), tk, hkv, k.Dim(3)),
            AttentionLayout.Bthd<float>(v.Data, v.Dim(0), v.Dim(1), v.Dim(2), dv),
            options,
            AttentionLayout.Bthd<float>(o, b, tq, h, dv),
            AttentionLayout.Lse(lse, b, h, tq));
        var result = new MethodResult(new MethodTensor(o, b, tq, h, dv));
        result.Extras["lse"] = new MethodTensor(lse, b, h, tq);
        result.Report.Add(new("kernel", kernel.Name));
        result.Report.Add(new("mask", maskText));
        return result;
    }
}
