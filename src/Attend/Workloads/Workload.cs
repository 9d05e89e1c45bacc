using Attend.Methods;

namespace Attend.Workloads;

/// <summary>
/// One generated workload: Q <c>[B, T, H, D]</c>, K and V <c>[B, T, Hkv, D]</c> (float32, row-major), and where the
/// generator put its structure (sink keys, stripes, slash offsets, needles, clusters), so tests and the bench can
/// check that a method finds it.
/// </summary>
public sealed class Workload
{
    private readonly int[]? _keyClusters, _queryClusters;

    internal Workload(WorkloadOptions options, int seed, float[] q, float[] k, float[] v, StripeKey[] stripes, PlantedNeedle[] needles,
        int[]? keyClusters, int[]? queryClusters, int[] headLocalityWidths)
    {
        Options = options;
        Seed = seed;
        Q = q;
        K = k;
        V = v;
        Stripes = stripes;
        Needles = needles;
        _keyClusters = keyClusters;
        _queryClusters = queryClusters;
        HeadLocalityWidths = headLocalityWidths;
    }

    /// <summary>The options it was generated from.</summary>
    public WorkloadOptions Options { get; }

    /// <summary>The seed it was generated from (the same options and seed give the same bytes).</summary>
    public int Seed { get; }

    /// <summary>The workload's name (<see cref="WorkloadOptions.Name"/>).</summary>
    public string Name => Options.Name;

    /// <summary>Batch entries.</summary>
    public int Batch => Options.Batch;

    /// <summary>Tokens per sequence.</summary>
    public int Length => Options.Length;

    /// <summary>Query heads.</summary>
    public int Heads => Options.Heads;

    /// <summary>Key/value heads.</summary>
    public int KvHeads => Options.KvHeads;

    /// <summary>Head dimension.</summary>
    public int HeadDim => Options.HeadDim;

    /// <summary>Queries <c>[B, T, H, D]</c>.</summary>
    public float[] Q { get; }

    /// <summary>Keys <c>[B, T, Hkv, D]</c>.</summary>
    public float[] K { get; }

    /// <summary>Values <c>[B, T, Hkv, D]</c> (standard normal).</summary>
    public float[] V { get; }

    /// <summary>The score scale the structure's logits assume: 1/√D (the default of every attention call).</summary>
    public float Scale => 1f / MathF.Sqrt(HeadDim);

    /// <summary>Sink keys: positions 0 … <see cref="WorkloadOptions.SinkTokens"/> − 1 of every sequence and head.</summary>
    public int SinkTokens => Options.SinkTokens;

    /// <summary>The stripe keys, ordered by batch entry, KV head, then key.</summary>
    public IReadOnlyList<StripeKey> Stripes { get; }

    /// <summary>The slash offsets δ (query i favours key i − δ).</summary>
    public IReadOnlyList<int> SlashOffsets => Options.SlashOffsets;

    /// <summary>The planted needles, ordered by batch entry, head, then query.</summary>
    public IReadOnlyList<PlantedNeedle> Needles { get; }

    /// <summary>
    /// Per query head, the distance at which that head's locality bump has decayed to about 0
    /// (<see cref="WorkloadOptions.LocalityWidth"/> scaled by the head's variation); all equal when the variation is 0.
    /// </summary>
    public IReadOnlyList<int> HeadLocalityWidths { get; }

    /// <summary>True when tokens belong to clusters (<see cref="WorkloadOptions.ClusterCount"/> &gt; 0).</summary>
    public bool HasClusters => _keyClusters is not null;

    /// <summary>The cluster of key <paramref name="key"/> of KV head <paramref name="kvHead"/> in batch entry <paramref name="batch"/>.</summary>
    /// <exception cref="InvalidOperationException">The workload has no clusters.</exception>
    public int KeyCluster(int batch, int kvHead, int key) =>
        (_keyClusters ?? throw new InvalidOperationException("The workload has no clusters (ClusterCount is 0)."))[((long)batch * KvHeads + kvHead) * Length + key];

    /// <summary>The cluster whose keys query <paramref name="query"/> of head <paramref name="head"/> favours.</summary>
    /// <exception cref="InvalidOperationException">The workload has no clusters.</exception>
    public int QueryCluster(int batch, int head, int query) =>
        (_queryClusters ?? throw new InvalidOperationException("The workload has no clusters (ClusterCount is 0)."))[((long)batch * Heads + head) * Length + query];

    /// <summary>Q, K and V as the named inputs of <see cref="IAttentionMethod.Run"/> (the arrays are shared, not copied).</summary>
    public MethodInputs ToInputs() => new(
        new MethodTensor(Q, Batch, Length, Heads, HeadDim),
        new MethodTensor(K, Batch, Length, KvHeads, HeadDim),
        new MethodTensor(V, Batch, Length, KvHeads, HeadDim));

    /// <inheritdoc/>
    public override string ToString() => $"{Name} (B={Batch}, T={Length}, H={Heads}/{KvHeads}, D={HeadDim}, seed {Seed})";
}
