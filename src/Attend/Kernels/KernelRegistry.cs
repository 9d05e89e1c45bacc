using System.Text;

namespace Attend;

/// <summary>
/// The softmax kernel variants, in preference order. A call runs on the first variant whose
/// <see cref="AttentionKernel.IsSupported"/> accepts it, unless one is forced by <see cref="AttentionOptions.Variant"/>
/// or by the <c>ATTEND_VARIANT</c> environment variable; a forced variant that cannot run throws with its reason,
/// it never falls back silently.
/// </summary>
public static class KernelRegistry
{
    private static readonly AttentionKernel[] s_softmax =
    [
        new Kernels.Cpu.CpuSplitKvDecode(),
        new Kernels.Cpu.CpuFlashKernel<Kernels.Cpu.Isa512, System.Runtime.Intrinsics.Vector512<float>>(),
        new Kernels.Cpu.CpuFlashKernel<Kernels.Cpu.Isa256, System.Runtime.Intrinsics.Vector256<float>>(),
        new Kernels.Cpu.CpuFlashKernel<Kernels.Cpu.Isa128, System.Runtime.Intrinsics.Vector128<float>>(),
        new ReferenceKernel(),
    ];

    /// <summary>All softmax variants, in preference order.</summary>
    public static IReadOnlyList<AttentionKernel> Softmax => s_softmax;

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
    public static AttentionKernel Select(in KernelProblem problem, string? forced = null)
    {
        forced ??= Environment.GetEnvironmentVariable("ATTEND_VARIANT");
        if (!string.IsNullOrEmpty(forced))
        {
            AttentionKernel kernel = Find(forced)
                ?? throw new ArgumentException($"Unknown kernel variant '{forced}'. Known: {string.Join(", ", s_softmax.Select(k => k.Name))}.", "options.Variant");
            if (!kernel.IsSupported(problem, out string why))
                throw new NotSupportedException($"Variant {kernel.Name} cannot run this call: {why}");
            return kernel;
        }
        var reasons = new StringBuilder();
        foreach (AttentionKernel kernel in s_softmax)
        {
            if (kernel.IsSupported(problem, out string why)) return kernel;
            reasons.Append($" {kernel.Name}: {why};");
        }
        throw new NotSupportedException("No kernel variant supports this call:" + reasons);
    }
}
