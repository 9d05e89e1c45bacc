namespace Attend.Methods.Sparse;

/// <summary>
/// The token-level sparse forward (<see cref="VerticalSlashAttention"/>) of a backend other than the CPU, e.g. the
/// CUDA kernel <c>Attend.Cuda.Sparse.CudaColumnSparseKernel</c>. Registered in <see cref="ColumnSparseKernels"/>;
/// the CPU path (<c>ColumnSparseForward</c>) is built in.
/// </summary>
public abstract class ColumnSparseKernel
{
    /// <summary>The backend's name (as in <see cref="AttentionOptions.Backend"/>).</summary>
    public abstract string Backend { get; }

    /// <summary>Whether the kernel can run inputs of <paramref name="type"/> with head dim <paramref name="headDim"/> here; otherwise why not.</summary>
    public abstract bool IsSupported(ElementType type, int headDim, out string reason);

    /// <summary>Runs the validated call: output [B, Tq, H, D] and, when not null, the natural-log LSE [B, H, Tq].</summary>
    internal abstract void Forward<T>(AttentionShape shape, TensorView<T> q, TensorView<T> k, TensorView<T> v, TensorView<T> output, LseView lse,
        VerticalSlashPlan plan, float scale) where T : unmanaged;
}

/// <summary>The registered <see cref="ColumnSparseKernel"/>s, one per backend.</summary>
public static class ColumnSparseKernels
{
    private static readonly object s_gate = new();
    private static ColumnSparseKernel[] s_kernels = [];

    /// <summary>Adds <paramref name="kernel"/> (registering a kernel of the same backend and type again does nothing).</summary>
    /// <exception cref="ArgumentException">A different kernel is already registered for the backend.</exception>
    public static void Register(ColumnSparseKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        lock (s_gate)
        {
            ColumnSparseKernel? existing = Find(kernel.Backend);
            if (existing is not null)
            {
                if (existing.GetType() == kernel.GetType()) return;
                throw new ArgumentException($"A different token-level sparse kernel is already registered for backend '{kernel.Backend}'.", nameof(kernel));
            }
            s_kernels = [.. s_kernels, kernel];
        }
    }

    /// <summary>The kernel of <paramref name="backend"/> (case-insensitive), or null.</summary>
    public static ColumnSparseKernel? Find(string backend)
    {
        foreach (ColumnSparseKernel k in s_kernels)
            if (string.Equals(k.Backend, backend, StringComparison.OrdinalIgnoreCase)) return k;
        return null;
    }
}
