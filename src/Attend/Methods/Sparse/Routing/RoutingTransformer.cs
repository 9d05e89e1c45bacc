using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="RoutingTransformer"/>; null fields take the defaults given.</summary>
public sealed record RoutingTransformerOptions
{
    /// <summary>Number of clusters (default √Tk, rounded, of the longest sequence, as the paper's O(n^1.5) choice).</summary>
    public int? Clusters { get; init; }

    /// <summary>Local window: each query also sees its last <c>Window</c> keys (default 64; 0 for routing alone).</summary>
    public int? Window { get; init; }

    /// <summary>k-means iterations when the centroids are fitted to this input (default 3).</summary>
    public int? Iterations { get; init; }

    /// <summary>Intersect with the causal mask (default true).</summary>
    public bool? Causal { get; init; }
}

/// <summary>
/// Shared query/key centroids of the Routing Transformer, one set per query head: unit vectors <c>[H, C, D]</c>,
/// updated online by an exponential moving average of the queries and keys routed to each.
/// </summary>
public sealed class RoutingCentroids
{
    private readonly float[] _values;

    /// <summary>Centroids from <paramref name="values"/> <c>[heads, clusters, dim]</c> (copied, then normalised to unit length).</summary>
    /// <exception cref="ArgumentException">A length that is not heads × clusters × dim, or a zero centroid.</exception>
    public RoutingCentroids(int heads, int clusters, int dim, ReadOnlySpan<float> values)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(clusters, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        if (values.Length != heads * clusters * dim)
            throw new ArgumentException($"values holds {values.Length} numbers; [H={heads}, C={clusters}, D={dim}] needs {heads * clusters * dim}.", nameof(values));
        Heads = heads;
        Clusters = clusters;
        Dim = dim;
        _values = values.ToArray();
        for (int i = 0; i < heads * clusters; i++)
            if (!Normalize(_values.AsSpan(i * dim, dim)))
                throw new ArgumentException($"Centroid {i % clusters} of head {i / clusters} is zero.", nameof(values));
    }

    /// <summary>Query heads.</summary>
    public int Heads { get; }

    /// <summary>Clusters per head.</summary>
    public int Clusters { get; }

    /// <summary>Head dim.</summary>
    public int Dim { get; }

    /// <summary>Centroid <paramref name="cluster"/> of head <paramref name="head"/> (unit length).</summary>
    public ReadOnlySpan<float> Centroid(int head, int cluster) => new(_values, (head * Clusters + cluster) * Dim, Dim);

    /// <summary>The nearest centroid (largest cosine) of head <paramref name="head"/> to <paramref name="vector"/>; ties to the lower index.</summary>
    public int Nearest(int head, ReadOnlySpan<float> vector)
    {
        int best = 0;
        float bestScore = float.NegativeInfinity;
        for (int c = 0; c < Clusters; c++)
        {
            float s = TensorPrimitives.Dot(Centroid(head, c), vector);
            if (s > bestScore) { bestScore = s; best = c; }
        }
        return best;
    }

    /// <summary>
    /// One online k-means step: μ ← normalise(λ·μ + (1 − λ)·(Q̄ + K̄)/2), where Q̄ and K̄ are the means of the unit-normalised
    /// queries and keys routed to μ (one of them alone when the other cluster side is empty; μ unchanged when both
    /// are). λ = <paramref name="decay"/>; λ = 0 is a Lloyd step.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="decay"/> outside [0, 1].</exception>
    /// <exception cref="ArgumentException">Inputs of another head count or dim.</exception>
    public void Update(SelectorInput input, double decay)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!(decay >= 0 && decay <= 1)) throw new ArgumentOutOfRangeException(nameof(decay), decay, "The decay must be in [0, 1].");
        Check(input);
        // Work items of (head, run of tokens): queries then keys of every sequence in one order, cut into fixed runs,
        // each with its own sums; the runs' sums are then added per head in order (deterministic whatever the thread
        // count). One item per head had kept 8 of 16 cores busy at H = 8.
        int d = Dim, g = input.GroupSize;
        long tokens = 0;
        for (int s = 0; s < input.Sequences; s++) tokens += input.QueryLength(s) + input.KeyLength(s);
        const int tokensPerItem = 32768;
        int runs = (int)Math.Max(1, (tokens + tokensPerItem - 1) / tokensPerItem);
        var sumQ = new double[Heads * runs][];
        var sumK = new double[Heads * runs][];
        var countQ = new int[Heads * runs][];
        var countK = new int[Heads * runs][];
        SelectorMath.ForEach(Heads * runs, item =>
        {
            int h = item / runs;
            long from = (long)(item % runs) * tokensPerItem, to = Math.Min(tokens, from + tokensPerItem);
            var sq = sumQ[item] = new double[Clusters * d];
            var sk = sumK[item] = new double[Clusters * d];
            var cq = countQ[item] = new int[Clusters];
            var ck = countK[item] = new int[Clusters];
            var unit = new float[d];
            long at = 0; // index of the current token in the queries-then-keys order
            for (int s = 0; s < input.Sequences && at < to; s++)
            {
                int tq = input.QueryLength(s), tk = input.KeyLength(s);
                for (long r = Math.Max(from - at, 0); r < tq && at + r < to; r++)
                    Accumulate(input.QueryRow(s, h, (int)r), unit, sq, cq, h);
                at += tq;
                for (long k = Math.Max(from - at, 0); k < tk && at + k < to; k++)
                    Accumulate(input.KeyRow(s, h / g, (int)k), unit, sk, ck, h);
                at += tk;
            }
        });
        SelectorMath.ForEach(Heads, h =>
        {
            for (int run = 1; run < runs; run++)
            {
                int item = h * runs + run, first = h * runs;
                for (int i = 0; i < Clusters * d; i++)
                {
                    sumQ[first][i] += sumQ[item][i];
                    sumK[first][i] += sumK[item][i];
                }
                for (int c = 0; c < Clusters; c++)
                {
                    countQ[first][c] += countQ[item][c];
                    countK[first][c] += countK[item][c];
                }
            }
            double[] sq = sumQ[h * runs], sk = sumK[h * runs];
            int[] cq = countQ[h * runs], ck = countK[h * runs];
            for (int c = 0; c < Clusters; c++)
            {
                if (cq[c] + ck[c] == 0) continue;
                Span<float> mu = _values.AsSpan((h * Clusters + c) * d, d);
                int sides = (cq[c] > 0 ? 1 : 0) + (ck[c] > 0 ? 1 : 0);
                for (int i = 0; i < d; i++)
                {
                    double target = ((cq[c] > 0 ? sq[c * d + i] / cq[c] : 0) + (ck[c] > 0 ? sk[c * d + i] / ck[c] : 0)) / sides;
                    mu[i] = (float)(decay * mu[i] + (1 - decay) * target);
                }
                if (!Normalize(mu)) Centroid(h, c).CopyTo(mu); // a cancelled mean keeps the old direction
            }
        });
    }

    private void Accumulate(ReadOnlySpan<float> v, float[] u, double[] sum, int[] count, int h)
    {
        v.CopyTo(u);
        if (!Normalize(u)) return;
        int c = Nearest(h, u);
        count[c]++;
        for (int i = 0; i < u.Length; i++) sum[c * u.Length + i] += u[i];
    }

    /// <summary>
    /// Centroids fitted to <paramref name="input"/>: initialised at evenly spaced keys of the first key head of each
    /// group, then <paramref name="iterations"/> Lloyd steps (<see cref="Update"/> with decay 0).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Clusters below 1 or above the number of keys; iterations below 0.</exception>
    public static RoutingCentroids Fit(SelectorInput input, int clusters, int iterations)
    {
        ArgumentNullException.ThrowIfNull(input);
        long keys = 0;
        for (int s = 0; s < input.Sequences; s++) keys += input.KeyLength(s);
        if (clusters < 1 || clusters > keys)
            throw new ArgumentOutOfRangeException(nameof(RoutingTransformerOptions.Clusters), clusters, $"The cluster count must be in [1, {keys}] (the number of keys).");
        if (iterations < 0) throw new ArgumentOutOfRangeException(nameof(RoutingTransformerOptions.Iterations), iterations, "Iterations must be ≥ 0.");
        int d = input.Dim;
        var values = new float[input.Heads * clusters * d];
        for (int h = 0; h < input.Heads; h++)
        {
            for (int c = 0; c < clusters; c++)
            {
                // The c-th of `clusters` evenly spaced keys over the concatenated sequences; a zero key gets a basis vector.
                long target = (long)((c + 0.5) * keys / clusters), seen = 0;
                int s = 0;
                while (seen + input.KeyLength(s) <= target) seen += input.KeyLength(s++);
                Span<float> dst = values.AsSpan((h * clusters + c) * d, d);
                input.KeyRow(s, h / input.GroupSize, (int)(target - seen)).CopyTo(dst);
                if (TensorPrimitives.Norm(dst) == 0) dst[c % d] = 1;
            }
        }
        var centroids = new RoutingCentroids(input.Heads, clusters, d, values);
        for (int i = 0; i < iterations; i++) centroids.Update(input, 0);
        return centroids;
    }

    internal void Check(SelectorInput input)
    {
        if (input.Heads != Heads) throw new ArgumentException($"The centroids have {Heads} heads; the input has {input.Heads}.", nameof(input));
        if (input.Dim != Dim) throw new ArgumentException($"The centroids have dim {Dim}; the input has {input.Dim}.", nameof(input));
    }

    private static bool Normalize(Span<float> v)
    {
        float n = TensorPrimitives.Norm(v);
        if (!(n > 0) || !float.IsFinite(n)) return false;
        TensorPrimitives.Multiply(v, 1f / n, v);
        return true;
    }
}

/// <summary>
/// Routing Transformer attention (Roy, Saffar, Vaswani, Grangier, "Efficient Content-Based Sparse Attention with
/// Routing Transformers", TACL 2021): queries and keys are routed by online k-means to shared centroids, and each
/// query attends to the keys of its own cluster, alongside local attention. The plan is a token-level
/// <see cref="ClusterMask"/> run by the exact block-sparse kernel; <see cref="RoutingCentroids.Update"/> is the
/// online centroid update.
/// </summary>
/// <remarks>
/// Deviations: (1) the paper normalises queries and keys with a parameter-free layer norm; here they are scaled to
/// unit length (spherical k-means), which routes identically up to the centring; (2) the centroid update uses the
/// means of the routed queries and keys (the paper writes sums), then renormalises, so λ keeps its meaning at any
/// cluster size; (3) the paper's decoder gives some heads local attention and others routing; here every head has
/// both (a local window of <see cref="RoutingTransformerOptions.Window"/> keys ∪ its cluster), which also keeps a
/// causal row from being empty; (4) the paper sorts tokens by cluster and attends in equal-size chunks (balanced
/// clusters); the plan here is the exact "same cluster" relation, so clusters may be unbalanced. The method runs it
/// sorted by cluster (<see cref="ClusterSortedAttention"/>: each cluster's queries and keys contiguous, the window
/// apart, joined by the LSE merge), so the kernel's tiles follow the density; the plan's own mask form
/// (<see cref="SparsePlan.Forward"/>, parameter <c>sorted=false</c>, and the backward pass) visits every tile of the
/// original layout whose rows and keys share a cluster, which at √T clusters is nearly all of them;
/// (5) without trained centroids, <see cref="Plan"/> fits them to the input with a few Lloyd steps.
/// </remarks>
public static class RoutingTransformer
{
    /// <summary>Routes with <paramref name="centroids"/> (fitted to the input when null) and freezes the plan.</summary>
    /// <remarks>
    /// Centroids are shared by every sequence of the input (the paper's are model parameters); fitted here, they are
    /// fitted on all sequences together, and the default cluster count (√Tk) comes from the longest. The runnable adapter
    /// instead plans each sequence of a packed batch alone (<see cref="PackedBatch"/>).
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">Clusters below 1 or above the number of keys; a negative window or iteration count.</exception>
    public static SparsePlan Plan(SelectorInput input, RoutingTransformerOptions? options = null, RoutingCentroids? centroids = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new RoutingTransformerOptions();
        int maxKeys = 0;
        for (int s = 0; s < input.Sequences; s++) maxKeys = Math.Max(maxKeys, input.KeyLength(s));
        int clusters = centroids?.Clusters ?? options.Clusters ?? Math.Max(1, (int)Math.Round(Math.Sqrt(maxKeys)));
        int window = options.Window ?? 64, iterations = options.Iterations ?? 3;
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(RoutingTransformerOptions.Window), window, "The window must be ≥ 0.");
        if (iterations < 0) throw new ArgumentOutOfRangeException(nameof(RoutingTransformerOptions.Iterations), iterations, "Iterations must be ≥ 0.");
        centroids?.Check(input);
        bool causal = options.Causal ?? true;
        return SparsePlan.Timed(() =>
        {
            RoutingCentroids fitted = centroids ?? (maxKeys == 0 ? Unrouted(input, clusters) : RoutingCentroids.Fit(input, clusters, iterations));
            int n = input.Sequences, h = input.Heads;
            var qc = new int[n * h][];
            var kc = new int[n * h][];
            for (int item = 0; item < n * h; item++)
            {
                qc[item] = new int[input.QueryLength(item / h)];
                kc[item] = new int[input.KeyLength(item / h)];
            }
            // Routing in work items of (sequence, head, run of 4096 rows or keys): each writes its own entries.
            const int tokensPerItem = 4096;
            var runs = new List<(int Unit, bool Keys, int First)>();
            for (int item = 0; item < n * h; item++)
            {
                for (int r = 0; r < qc[item].Length; r += tokensPerItem) runs.Add((item, false, r));
                for (int k = 0; k < kc[item].Length; k += tokensPerItem) runs.Add((item, true, k));
            }
            SelectorMath.ForEach(runs.Count, run =>
            {
                (int item, bool keys, int first) = runs[run];
                int s = item / h, head = item % h;
                int[] target = keys ? kc[item] : qc[item];
                for (int i = first; i < Math.Min(first + tokensPerItem, target.Length); i++)
                    target[i] = fitted.Nearest(head, keys ? input.KeyRow(s, head / input.GroupSize, i) : input.QueryRow(s, head, i));
            });
            var ql = new int[n];
            var kl = new int[n];
            for (int s = 0; s < n; s++) { ql[s] = input.QueryLength(s); kl[s] = input.KeyLength(s); }
            var mask = new ClusterMask(new ClusterMask.Table(ql, kl, h, fitted.Clusters, window, causal, qc, kc));
            return new SparsePlan(input, mask, causal, 0, mask.CountPairs());
        });
    }

    // No keys anywhere (a batch of empty sequences): nothing is routed, so any unit centroids do (basis vectors).
    private static RoutingCentroids Unrouted(SelectorInput input, int clusters)
    {
        var values = new float[input.Heads * clusters * input.Dim];
        for (int i = 0; i < input.Heads * clusters; i++) values[i * input.Dim + i % clusters % input.Dim] = 1;
        return new RoutingCentroids(input.Heads, clusters, input.Dim, values);
    }
}

/// <summary><c>attend run --method routing-transformer</c>: <see cref="RoutingTransformer"/> on named tensors.</summary>
public sealed class RoutingTransformerMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("routing-transformer", "sparse", "method",
        "Efficient Content-Based Sparse Attention with Routing Transformers (Roy, Saffar, Vaswani, Grangier, TACL 2021)", ["cpu", "cuda"], "implemented",
        "online k-means routes queries and keys to shared centroids; attention within the cluster plus a local window")
    {
        Parameters =
        [
            new("clusters", "int", "sqrt(Tk)", "number of k-means clusters"),
            new("window", "int", "64", "local window (keys before the query, itself included)"),
            new("iterations", "int", "3", "Lloyd steps fitting the centroids to the input"),
            new("sorted", "bool", "true", "run the plan sorted by cluster (the same pairs in tiles that follow density); false: the mask form on the original layout"),
            RoutingAdapter.CausalParameter,
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        // A packed batch is planned one sequence at a time: the cluster count and the centroids depend on the sequence.
        if (inputs.Offsets is not null) return PackedBatch.RunEachSequence(inputs, arguments, RoutingAdapter.Causal(arguments), Run);
        var options = new RoutingTransformerOptions
        {
            Clusters = RoutingAdapter.OptionalInt(arguments, "clusters", 1),
            Window = RoutingAdapter.OptionalInt(arguments, "window", 0),
            Iterations = RoutingAdapter.OptionalInt(arguments, "iterations", 0),
            Causal = RoutingAdapter.Causal(arguments),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        bool sorted = arguments.GetBool("sorted", true);
        arguments.ThrowIfUnused(Info.Name);
        SparsePlan plan = RoutingTransformer.Plan(SelectorInput.From(inputs), options);
        MethodResult result = RoutingAdapter.Run(inputs, plan, scale, sorted);
        result.Report.Add(new("clusters", ((ClusterMask)plan.Mask).Clusters.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }
}
