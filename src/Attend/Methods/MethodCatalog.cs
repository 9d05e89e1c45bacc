using Attend.Methods.Softmax;

namespace Attend.Methods;

/// <summary>
/// One attention method or kernel variant the engine offers, as listed by <c>attend methods</c> and
/// <c>docs/METHODS.md</c>.
/// </summary>
/// <param name="Name">Unique name (for kernel variants, the name <see cref="AttentionOptions.Variant"/> takes).</param>
/// <param name="Family">Method family: <c>softmax</c> for exact softmax attention (later: <c>linear</c>, <c>sparse</c>, …).</param>
/// <param name="Kind"><c>kernel</c> (a selectable variant), <c>mask</c> or <c>score-mod</c> (features of the family).</param>
/// <param name="Paper">The paper the method follows, with authors and year, or empty.</param>
/// <param name="Backends">Backends it runs on (<c>cpu</c>, <c>cuda</c>).</param>
/// <param name="Status"><c>implemented</c>, or <c>unavailable: reason</c> when it cannot run on this machine.</param>
/// <param name="Summary">One line on what it does.</param>
public sealed record MethodInfo(string Name, string Family, string Kind, string Paper, IReadOnlyList<string> Backends, string Status, string Summary)
{
    /// <summary>The parameters <c>attend run --method Name --param name=value</c> takes (empty for kernels and features).</summary>
    public IReadOnlyList<MethodParameter> Parameters { get; init; } = [];
}

/// <summary>
/// The registry of methods: every kernel variant of <see cref="KernelRegistry.Softmax"/> plus the mask and score-mod
/// features of the softmax family. Future methods call <see cref="Register"/> (from their own static setup) so that
/// front ends such as the <c>attend</c> command only print the catalog.
/// </summary>
public static class MethodCatalog
{
    /// <summary>FlashAttention-2, the paper the CPU flash kernels and backward follow.</summary>
    public const string FlashAttention2Paper = "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning (Dao, 2023)";

    /// <summary>Flash-Decoding, the split-KV decode scheme.</summary>
    public const string FlashDecodingPaper = "Flash-Decoding for long-context inference (Dao, Haziza, Massa, Sizov, 2023)";

    /// <summary>The original softmax attention the float64 reference computes.</summary>
    public const string AttentionPaper = "Attention Is All You Need (Vaswani et al., 2017)";

    private static readonly object s_lock = new();
    private static readonly List<MethodInfo> s_extra = [];

    // Every runnable method, family by family. Each family lists its methods in one static array and adds it here
    // (explicitly, not by reflection, so a trimmed `attend` keeps them).
    private static readonly IAttentionMethod[] s_runnable =
    [
        new ExactAttentionMethod(),
        .. Linear.LinearMethods.All,
        .. Linear.LinearExtraMethods.All,
        .. Sparse.Static.StaticSparseMethods.All,
        .. Sparse.Dynamic.DynamicSparseMethods.All,
        .. Sparse.Routing.RoutingSparseMethods.All,
    ];

    /// <summary>Every method <c>attend run --method</c> can run, in catalog order.</summary>
    public static IReadOnlyList<IAttentionMethod> Runnable => s_runnable;

    /// <summary>The runnable method named <paramref name="name"/> (case-insensitive), or null.</summary>
    public static IAttentionMethod? FindRunnable(string name)
    {
        foreach (IAttentionMethod m in s_runnable)
            if (string.Equals(m.Info.Name, name, StringComparison.OrdinalIgnoreCase)) return m;
        return null;
    }

    /// <summary>Adds a method to the catalog.</summary>
    /// <exception cref="ArgumentException">A method with the same name is already listed.</exception>
    public static void Register(MethodInfo method)
    {
        ArgumentNullException.ThrowIfNull(method);
        lock (s_lock)
        {
            if (All.Any(m => string.Equals(m.Name, method.Name, StringComparison.OrdinalIgnoreCase)))
                throw new ArgumentException($"A method named '{method.Name}' is already registered.", nameof(method));
            s_extra.Add(method);
        }
    }

    /// <summary>Every method: the softmax kernel variants (in preference order), the features, the runnable methods, then registered ones.</summary>
    public static IReadOnlyList<MethodInfo> All
    {
        get
        {
            var list = new List<MethodInfo>();
            foreach (AttentionKernel kernel in KernelRegistry.Softmax) list.Add(FromKernel(kernel));
            list.AddRange(Features);
            foreach (IAttentionMethod m in s_runnable) list.Add(m.Info);
            lock (s_lock) list.AddRange(s_extra);
            return list;
        }
    }

    private static MethodInfo FromKernel(AttentionKernel kernel)
    {
        // A probe problem the variant's own kind of call would be: decode for the split-KV kernel, a square forward otherwise.
        int queries = kernel is Kernels.Cpu.CpuSplitKvDecode ? 1 : 64;
        // GPU (backend "cuda") kernels take bf16/fp16 only (tensor cores): probe them with bf16, the CPU ones with float32.
        ElementType probeType = kernel.Backend == "cuda" ? ElementType.BFloat16 : ElementType.Float32;
        var probe = new KernelProblem(AttentionPass.Forward, probeType, 1, 1, 1, 64, queries, 64);
        string status = kernel.IsSupported(probe, out string why) ? "implemented" : $"unavailable: {why}";
        string paper = kernel switch
        {
            Kernels.Cpu.CpuSplitKvDecode => FlashDecodingPaper,
            ReferenceKernel => AttentionPaper,
            _ => FlashAttention2Paper,
        };
        return new MethodInfo(kernel.Name, "softmax", "kernel", paper, [kernel.Backend], status, kernel.Summary);
    }

    private static readonly MethodInfo[] Features =
    [
        Feature("mask:causal", "mask", "causal, bottom-right aligned when Tq != Tk"),
        Feature("mask:sliding-window", "mask", "sliding window (left, right), Mistral / Longformer style"),
        Feature("mask:prefix-lm", "mask", "bidirectional prefix, causal after it"),
        Feature("mask:document", "mask", "packed documents attend within themselves (varlen)"),
        Feature("mask:block-causal", "mask", "chunked attention: whole earlier chunks and the own chunk"),
        Feature("mask:and-or-not", "mask", "combinators of masks"),
        Feature("score-mod:softcap", "score-mod", "logit soft cap c·tanh(s/c) (Gemma 2)"),
        Feature("score-mod:alibi", "score-mod", "ALiBi linear position biases (Press et al., 2022)"),
        Feature("score-mod:relative-bias", "score-mod", "learned relative-position bias table (T5)"),
    ];

    // Every mask reaches the CUDA kernel through the host's BlockMask (block lists plus mask words on partial blocks), and the
    // kernel has softcap and ALiBi built in; the relative-bias table has no CUDA form yet.
    private static MethodInfo Feature(string name, string kind, string summary) =>
        new(name, "softmax", kind, "", name == "score-mod:relative-bias" ? ["cpu"] : ["cpu", "cuda"], "implemented", summary);
}
