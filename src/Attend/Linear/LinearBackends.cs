namespace Attend.Linear;

/// <summary>
/// An implementation of <see cref="LinearAttention.Forward"/> on other hardware (the CUDA backend registers one named
/// <c>cuda</c>), chosen per call by <see cref="LinearAttentionOptions.Backend"/>.
/// </summary>
public interface ILinearAttentionBackend
{
    /// <summary>The name <see cref="LinearAttentionOptions.Backend"/> selects it by (case-insensitive).</summary>
    string Name { get; }

    /// <summary>
    /// Computes the chunked or recurrent form of the call, writing <paramref name="output"/> and (when not empty)
    /// <paramref name="finalState"/> exactly as the CPU engine does. The inputs and options were already checked.
    /// </summary>
    /// <exception cref="NotSupportedException">This backend cannot compute this configuration; the message says why.</exception>
    void Forward(in LinearInputs inputs, LinearAttentionOptions options, Span<float> output, Span<float> finalState);

    /// <summary>
    /// Computes the chunked form's gradients as <see cref="LinearAttention.Backward"/> does (each gradient span written
    /// only when not empty). The inputs, options and span lengths were already checked. A backend without a backward
    /// keeps this default, which says so.
    /// </summary>
    /// <exception cref="NotSupportedException">This backend has no backward for this configuration; the message says why.</exception>
    void Backward(in LinearInputs inputs, LinearAttentionOptions options, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> finalStateGradient,
        in LinearGradients gradients) =>
        throw new NotSupportedException($"Backend '{Name}' has no linear-attention backward; use the CPU (Backend null or \"cpu\").");
}

/// <summary>The registered <see cref="ILinearAttentionBackend"/>s (the CPU engine itself is <c>cpu</c> and needs none).</summary>
public static class LinearBackends
{
    private static readonly Lock s_gate = new();
    private static ILinearAttentionBackend[] s_all = [];

    /// <summary>The registered backends.</summary>
    public static IReadOnlyList<ILinearAttentionBackend> All => Volatile.Read(ref s_all);

    /// <summary>Registers <paramref name="backend"/>, replacing one of the same name (idempotent).</summary>
    public static void Register(ILinearAttentionBackend backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        lock (s_gate)
        {
            var list = new List<ILinearAttentionBackend>(s_all.Length + 1);
            foreach (ILinearAttentionBackend b in s_all)
                if (!b.Name.Equals(backend.Name, StringComparison.OrdinalIgnoreCase)) list.Add(b);
            list.Add(backend);
            Volatile.Write(ref s_all, list.ToArray());
        }
    }

    /// <summary>The backend named <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">No backend of that name is registered; the message lists those that are.</exception>
    public static ILinearAttentionBackend Get(string name) => Get(name, nameof(name));

    /// <summary>The backend named <paramref name="name"/>; an unknown name is reported against <paramref name="argumentName"/> (the caller's own argument, e.g. <c>options.Backend</c>).</summary>
    /// <exception cref="ArgumentException">No backend of that name is registered; the message lists those that are.</exception>
    public static ILinearAttentionBackend Get(string name, string argumentName)
    {
        foreach (ILinearAttentionBackend b in All)
            if (b.Name.Equals(name, StringComparison.OrdinalIgnoreCase)) return b;
        string known = All.Count == 0 ? "none registered" : string.Join(", ", All.Select(b => b.Name));
        throw new ArgumentException($"Backend '{name}' has no linear-attention implementation (cpu, or a registered one: {known}).", argumentName);
    }
}
