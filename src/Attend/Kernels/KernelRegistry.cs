using System.Text;

namespace Attend;

/// <summary>
/// The softmax kernel variants, in preference order. A call runs on the first variant whose
/// <see cref="AttentionKernel.IsSupported"/> accepts it, unless one is forced by <see cref="AttentionOptions.Variant"/>
/// or by the <c>ATTEND_VARIANT</c> environment variable; a forced variant that cannot run throws with its reason,
/// it never falls back silently. Variants belong to a backend (<see cref="AttentionKernel.Backend"/>): a call considers
/// only the variants of <see cref="AttentionOptions.Backend"/> (<c>cpu</c> when null), so registering another backend
/// (e.g. <c>Attend.Cuda.CudaBackend.Register()</c>) never changes what a CPU call runs.
/// </summary>
public static class KernelRegistry
{
    private static readonly object s_gate = new();

    /// <summary>The default backend: the one a call uses when <see cref="AttentionOptions.Backend"/> is null.</summary>
    public const string DefaultBackend = "cpu";

    // Replaced (never mutated) by Register, so readers need no lock.
    private static AttentionKernel[] s_softmax =
    [
        new Kernels.Cpu.CpuSplitKvDecode(),
        new Kernels.Cpu.CpuFlashKernel<Kernels.Cpu.Isa512, System.Runtime.Intrinsics.Vector512<float>>(),
        new Kernels.Cpu.CpuFlashKernel<Kernels.Cpu.Isa256, System.Runtime.Intrinsics.Vector256<float>>(),
        new Kernels.Cpu.CpuFlashKernel<Kernels.Cpu.Isa128, System.Runtime.Intrinsics.Vector128<float>>(),
        new ReferenceKernel(),
    ];

    /// <summary>All softmax variants, in preference order.</summary>
    public static IReadOnlyList<AttentionKernel> Softmax => s_softmax;

    /// <summary>
    /// Adds a variant of another backend (after the built-in ones, in call order). Registering the same instance or
    /// name again does nothing.
    /// </summary>
    /// <exception cref="ArgumentException">A variant whose name is taken by a different variant.</exception>
    public static void Register(AttentionKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        lock (s_gate)
        {
            AttentionKernel? existing = Find(kernel.Name);
            if (existing is not null)
            {
                if (ReferenceEquals(existing, kernel) || existing.GetType() == kernel.GetType()) return;
                throw new ArgumentException($"A different variant named '{kernel.Name}' is already registered.", nameof(kernel));
            }
            s_softmax = [.. s_softmax, kernel];
        }
    }

    /// <summary>The variant named <paramref name="name"/> (case-insensitive), or null.</summary>
    public static AttentionKernel? Find(string name)
    {
        foreach (AttentionKernel k in s_softmax)
            if (string.Equals(k.Name, name, StringComparison.OrdinalIgnoreCase)) return k;
        return null;
    }

    /// <summary>Chooses the variant for <paramref name="problem"/>.</summary>
    /// <exception cref="ArgumentException">An unknown forced name.</exception>
    /// <exception cref="NotSupportedException">The forced variant, or every variant, cannot run the problem; the message says why.</exception>
    public static AttentionKernel Select(in KernelProblem problem, string? forced = null) => Select(problem, forced, backend: null);

    /// <summary>Chooses the variant for <paramref name="problem"/> among those of <paramref name="backend"/> (null: <c>cpu</c>).</summary>
    /// <exception cref="ArgumentException">An unknown forced name or backend.</exception>
    /// <exception cref="NotSupportedException">The forced variant, or every variant of the backend, cannot run the problem; the message says why.</exception>
    public static AttentionKernel Select(in KernelProblem problem, string? forced, string? backend)
    {
        AttentionKernel[] all = s_softmax;
        forced ??= Environment.GetEnvironmentVariable("ATTEND_VARIANT");
        if (!string.IsNullOrEmpty(forced))
        {
            AttentionKernel kernel = Find(forced)
                ?? throw new ArgumentException($"Unknown kernel variant '{forced}'. Known: {string.Join(", ", s_softmax.Select(k => k.Name))}.", "options.Variant");
            if (!kernel.IsSupported(problem, out string why))
                throw new NotSupportedException($"Variant {kernel.Name} cannot run this call: {why}");
            return kernel;
        }
        backend ??= DefaultBackend;
        if (!all.Any(k => string.Equals(k.Backend, backend, StringComparison.OrdinalIgnoreCase)))
        {
            string hint = string.Equals(backend, "cuda", StringComparison.OrdinalIgnoreCase)
                ? " Reference the Attend.Cuda assembly and call Attend.Cuda.CudaBackend.Register() first."
                : "";
            throw new ArgumentException($"No kernel variant of backend '{backend}' is registered (known backends: {string.Join(", ", all.Select(k => k.Backend).Distinct())}).{hint}", "options.Backend");
        }
        var reasons = new StringBuilder();
        foreach (AttentionKernel kernel in all)
        {
            if (!string.Equals(kernel.Backend, backend, StringComparison.OrdinalIgnoreCase)) continue;
            if (kernel.IsSupported(problem, out string why)) return kernel;
            reasons.Append($" {kernel.Name}: {why};");
        }
        throw new NotSupportedException($"No kernel variant of backend '{backend}' supports this call:" + reasons);
    }
}
