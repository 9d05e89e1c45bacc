namespace Attend.Workloads;

/// <summary>
/// The shape and the structure knobs of a synthetic attention workload (<see cref="WorkloadGenerator"/>). Every
/// strength is in <em>logit units</em> at the default scale 1/√D: the generator builds Q and K so that
/// <c>q·k/√D</c> equals the sum of the enabled components plus Gaussian background noise. A strength of 0 (or a
/// count of 0) turns a component off; with everything off and <see cref="Noise"/> 1 the workload is plain random
/// Gaussian Q, K (logits of standard deviation 1, nearly uniform attention).
/// </summary>
public sealed record WorkloadOptions
{
    /// <summary>A short name printed by the bench (the preset's name, or any label).</summary>
    public string Name { get; init; } = "custom";

    /// <summary>Batch entries (each with its own random structure).</summary>
    public int Batch { get; init; } = 1;

    /// <summary>Tokens per sequence (queries and keys: a prefill).</summary>
    public int Length { get; init; } = 1024;

    /// <summary>Query heads.</summary>
    public int Heads { get; init; } = 8;

    /// <summary>Key/value heads (a divisor of <see cref="Heads"/>): grouped-query workloads share keys within a group.</summary>
    public int KvHeads { get; init; } = 2;

    /// <summary>Head dimension of Q, K and V. The structure needs some dimensions of its own (see <see cref="WorkloadGenerator"/>).</summary>
    public int HeadDim { get; init; } = 64;

    /// <summary>Standard deviation of the background logits (random Gaussian part of Q·K). Default 1.</summary>
    public double Noise { get; init; } = 1.0;

    /// <summary>Attention sinks: the first <see cref="SinkTokens"/> keys get <see cref="SinkLogit"/> from every query.</summary>
    public int SinkTokens { get; init; }

    /// <summary>Logit added to the sink keys.</summary>
    public double SinkLogit { get; init; } = 8;

    /// <summary>
    /// Locality: a logit bump <c>≈ LocalityLogit</c> at distance 0 that falls off roughly logarithmically with the
    /// query–key distance and reaches about 0 near <see cref="LocalityWidth"/> (RoPE-like long-term decay, built from
    /// rotating feature pairs). 0: off.
    /// </summary>
    public double LocalityLogit { get; init; }

    /// <summary>Distance (in tokens) at which the locality bump has decayed to about 0.</summary>
    public int LocalityWidth { get; init; } = 256;

    /// <summary>Vertical stripes: this many globally important keys per (sequence, KV head), at random positions after the sinks.</summary>
    public int StripeCount { get; init; }

    /// <summary>Logit added to the stripe keys for every query.</summary>
    public double StripeLogit { get; init; } = 6;

    /// <summary>Slash lines: query i favours key i − δ for each δ listed (diagonals of the attention map). Empty: off.</summary>
    public IReadOnlyList<int> SlashOffsets { get; init; } = [];

    /// <summary>Peak logit of a slash line (its width is a few tokens).</summary>
    public double SlashLogit { get; init; } = 6;

    /// <summary>Clustered keys: tokens belong to one of this many clusters (per sequence and KV head, at random); 0: off.</summary>
    public int ClusterCount { get; init; }

    /// <summary>Logit a query adds to the keys of its own cluster.</summary>
    public double ClusterLogit { get; init; } = 4;

    /// <summary>Planted needles per (sequence, query head): one query that must find one distant key.</summary>
    public int NeedleCount { get; init; }

    /// <summary>Logit of a needle pair (large enough by default that the needle key is the argmax of its query's row).</summary>
    public double NeedleLogit { get; init; } = 16;

    /// <summary>Least distance between a needle query and its key; null: a quarter of <see cref="Length"/>.</summary>
    public int? NeedleMinDistance { get; init; }

    /// <summary>
    /// How much query heads differ, in [0, 1]: each head scales its sink, stripe, slash and cluster strengths by a factor
    /// in [1 − v, 1 + v] and its locality width by a factor in [4^−v, 4^v] (so MoA-style per-head windows matter). 0: all heads alike.
    /// </summary>
    public double HeadVariation { get; init; }
}
