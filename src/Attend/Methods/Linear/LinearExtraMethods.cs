namespace Attend.Methods.Linear;

/// <summary>
/// The extra methods of the linear/recurrent family (issue 5): Aaren, Agent Attention, Local Linear Attention,
/// kernelized attention with RPE by FFT, Titans neural memory and Gated Associative Memory, as
/// <see cref="IAttentionMethod"/> adapters (family <c>linear</c>, parameter <c>form</c>, optional input <c>state</c>,
/// final state in <c>Extras["state"]</c> where the method has one).
/// </summary>
public static class LinearExtraMethods
{
    /// <summary>Every extra linear-family method, in catalog order.</summary>
    public static readonly IAttentionMethod[] All =
    [
        new AarenMethod(),
        new AgentAttentionMethod(),
        new LocalLinearAttentionMethod(),
        new KernelizedRpeMethod(),
        new TitansMemoryMethod(),
        new GatedAssociativeMemoryMethod(),
    ];

    /// <summary>The <c>form</c> parameter every method of the family documents.</summary>
    internal static MethodParameter FormParameter(string fallback, params string[] forms) =>
        new("form", string.Join('|', forms), fallback, "which of the agreeing forms runs (naive = the float64 definition)");

    /// <summary>Reads <c>form</c>; a form the method lacks throws an exception naming <c>form</c> and listing the forms it has.</summary>
    internal static string Form(MethodArguments arguments, string fallback, params string[] forms) =>
        arguments.GetChoice("form", fallback, forms);

    /// <summary>An optional input of exactly <paramref name="shape"/>, or null when it was not given.</summary>
    /// <exception cref="ArgumentException">It was given with another shape; the message names the input and both shapes.</exception>
    internal static float[]? Optional(MethodInputs inputs, string name, params int[] shape)
    {
        MethodTensor? t = inputs.Find(name);
        if (t is null) return null;
        bool same = t.Shape.Count == shape.Length;
        for (int i = 0; same && i < shape.Length; i++) same = t.Shape[i] == shape[i];
        if (!same)
            throw new ArgumentException($"Input '{name}' must have shape ({string.Join(", ", shape)}); got {t}.", name);
        return t.Data;
    }
}
