namespace Attend.Workloads;

/// <summary>
/// Named workloads for the bench and the tests: <c>random</c> (plain Gaussian, always reported beside the others),
/// one per structure (<c>sinks</c>, <c>local</c>, <c>stripes</c>, <c>slash</c>, <c>needle</c>, <c>clusters</c>), and
/// <c>llm</c>, a mixture of all of them with heads that differ. Strengths are chosen so that at 4k–16k tokens the
/// structure carries most of the softmax mass of the rows it touches (measured by the workload tests), as in real
/// LLM attention, while the rest is spread over the whole context.
/// </summary>
public static class WorkloadPresets
{
    /// <summary>Plain random Gaussian Q, K, V: nearly uniform attention.</summary>
    public const string Random = "random";

    /// <summary>Attention sinks plus locality (what StreamingLLM keeps).</summary>
    public const string Sinks = "sinks";

    /// <summary>Locality only (a RoPE-like decay; what sliding windows keep).</summary>
    public const string Local = "local";

    /// <summary>Sinks and vertical stripes: a few globally important keys at random positions.</summary>
    public const string Stripes = "stripes";

    /// <summary>Locality plus slash lines (diagonals at fixed offsets).</summary>
    public const string Slash = "slash";

    /// <summary>Sinks, locality and planted needles: some queries must find one distant key.</summary>
    public const string Needle = "needle";

    /// <summary>Clustered keys: a query favours the keys of its cluster, wherever they are.</summary>
    public const string Clusters = "clusters";

    /// <summary>Everything together, with heads that differ (the closest to a real model's prefill).</summary>
    public const string Llm = "llm";

    /// <summary>Every preset name, <c>random</c> first.</summary>
    public static IReadOnlyList<string> Names { get; } = [Random, Sinks, Local, Stripes, Slash, Needle, Clusters, Llm];

    /// <summary>True when <paramref name="name"/> is a preset (case-insensitive).</summary>
    public static bool IsKnown(string name) => Names.Any(n => string.Equals(n, name, StringComparison.OrdinalIgnoreCase));

    /// <summary>The options of preset <paramref name="name"/> at the given shape (generate with <see cref="WorkloadGenerator.Generate"/>).</summary>
    /// <exception cref="ArgumentException">An unknown name (the message lists the presets).</exception>
    public static WorkloadOptions Get(string name, int length, int heads = 8, int kvHeads = 2, int headDim = 128, int batch = 1)
    {
        ArgumentNullException.ThrowIfNull(name);
        var shape = new WorkloadOptions { Batch = batch, Length = length, Heads = heads, KvHeads = kvHeads, HeadDim = headDim };
        int sinks = Math.Min(4, length);
        return name.ToLowerInvariant() switch
        {
            Random => shape with { Name = Random },
            Sinks => shape with { Name = Sinks, SinkTokens = sinks, SinkLogit = 10, LocalityLogit = 8, LocalityWidth = 256 },
            Local => shape with { Name = Local, LocalityLogit = 8, LocalityWidth = 256 },
            Stripes => shape with { Name = Stripes, SinkTokens = sinks, SinkLogit = 8, StripeCount = Math.Min(16, length - sinks), StripeLogit = 8 },
            Slash => shape with { Name = Slash, LocalityLogit = 6, LocalityWidth = 64, SlashOffsets = SlashOffsetsFor(length), SlashLogit = 10 },
            Needle => NeedleOptions(shape with { Name = Needle, SinkTokens = sinks, SinkLogit = 8, LocalityLogit = 6, LocalityWidth = 128 }),
            Clusters => shape with { Name = Clusters, ClusterCount = Math.Min(16, length), ClusterLogit = 6 },
            Llm => NeedleOptions(shape with
            {
                Name = Llm, SinkTokens = sinks, SinkLogit = 7, LocalityLogit = 8, LocalityWidth = 256,
                StripeCount = Math.Min(8, length - sinks), StripeLogit = 5, SlashOffsets = [.. SlashOffsetsFor(length).Skip(1).Take(1)], SlashLogit = 6,
                HeadVariation = 0.5,
            }),
            _ => throw new ArgumentException($"Unknown workload '{name}' (expected one of: {string.Join(", ", Names)}).", nameof(name)),
        };
    }

    // Diagonals at a short and a long distance, inside the sequence (each offset adds far-field noise, so few).
    private static int[] SlashOffsetsFor(int length) =>
        [.. new[] { 7, length / 3 }.Where(d => d > 0 && d < length).Distinct()];

    // Needles only where the sequence is long enough to hold a distant one; two per head.
    private static WorkloadOptions NeedleOptions(WorkloadOptions o) =>
        o.Length >= 64 ? o with { NeedleCount = 2, NeedleLogit = 18 } : o;
}
