namespace Attend.Methods;

/// <summary>
/// Runs a method on a chosen backend. Adapters are written once against the family entry points
/// (<see cref="Attention"/>, <see cref="Sparse.VerticalSlashAttention"/>) and never name a backend; the caller picks it
/// here, and every kernel call inside the run that names no backend of its own goes there
/// (<see cref="AttentionBackend.Use"/>). Selectors, estimates and other host work stay on the CPU.
/// </summary>
public static class MethodRunner
{
    /// <summary>
    /// Runs <paramref name="method"/> with its kernel calls on <paramref name="backend"/> (null or <c>cpu</c>: the CPU;
    /// <c>cuda</c>: the GPU after <c>Attend.Cuda.CudaBackend.Register()</c>, float32 inputs then computed in bf16).
    /// </summary>
    /// <exception cref="ArgumentException">A bad input or parameter, or an unknown backend (as <see cref="IAttentionMethod.Run"/>).</exception>
    /// <exception cref="NotSupportedException">The backend cannot run one of the method's kernel calls; the message says why.</exception>
    public static MethodResult Run(this IAttentionMethod method, MethodInputs inputs, MethodArguments arguments, string? backend)
    {
        ArgumentNullException.ThrowIfNull(method);
        using (AttentionBackend.Use(backend))
            return method.Run(inputs, arguments);
    }
}
