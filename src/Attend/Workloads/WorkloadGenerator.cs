namespace Attend.Workloads;

/// <summary>
/// Generates Q, K, V with the structure real LLM attention has — attention sinks, locality, vertical stripes, slash
/// lines, planted needles, clustered keys — each with a knob (<see cref="WorkloadOptions"/>), deterministic from a
/// seed, in O(B·T·H·D) time (a 16k workload takes well under a second).
/// </summary>
/// <remarks>
/// <para><b>How.</b> The head dimension is split into disjoint sub-spaces, one per enabled component, and the rest
/// holds Gaussian noise. Each component is an inner product that produces its logit exactly (before the common
/// factor D^¼ on both sides, which the default scale 1/√D cancels):</para>
/// <list type="bullet">
/// <item>sinks, stripes: one dimension each; the query side is 1 (times the head's factor), the key side √L on the chosen keys, 0 elsewhere;</item>
/// <item>locality: M rotating pairs (cos ωᵢ·t, sin ωᵢ·t) with ω spaced geometrically from π down to 1/W; the
/// query side weights the pairs so their products sum to L·mean cos(ω·(i−j)): L at distance 0, decaying roughly
/// logarithmically, ≈ 0 beyond W. This is RoPE's long-term decay; its price is far-field logit noise of about L/√(2M);</item>
/// <item>slash lines: M pairs at random frequencies in [π/4, π]; the key side is rotated forward by each offset δ,
/// so the product peaks (a few tokens wide) at i − j = δ;</item>
/// <item>clusters: C centroids in a small sub-space (orthonormal when C fits, random unit vectors otherwise); the key
/// is √L·its centroid, the query √L·the centroid of the cluster it favours;</item>
/// <item>needles: orthonormal directions in their own sub-space (random unit vectors when there are more needles than
/// dimensions); only the needle query and the needle key carry one, so the pair gets the needle logit and no other pair
/// is disturbed.</item>
/// </list>
/// <para>Each structured sub-space takes about D/8 dimensions (2…16, pairs count double); a head dimension too small
/// for the enabled components is an error naming <see cref="WorkloadOptions.HeadDim"/>. V is standard normal.</para>
/// </remarks>
public static class WorkloadGenerator
{
    // Width (tokens) of a slash line: it uses the pairs with ω ≥ 1/SlashWidth.
    private const int SlashWidth = 4;

    private const int StreamQ = 1, StreamK = 2, StreamV = 3, StreamStructure = 4, StreamNeedle = 5, StreamQueryCluster = 6, StreamGlobal = 7;

    /// <summary>Generates the workload described by <paramref name="options"/> from <paramref name="seed"/>.</summary>
    /// <exception cref="ArgumentException">An option out of range; the message and parameter name say which.</exception>
    public static Workload Generate(WorkloadOptions options, int seed)
    {
        ArgumentNullException.ThrowIfNull(options);
        Validate(options);
        var layout = new Layout(options);
        int b = options.Batch, t = options.Length, h = options.Heads, hkv = options.KvHeads, d = options.HeadDim;
        int group = h / hkv;

        // Global structure: frequencies and per-head factors.
        var global = new SeededRandom(seed, StreamGlobal);
        double variation = options.HeadVariation;
        var headFactors = new double[h, 4]; // sink, stripe, slash, cluster
        var headWidths = new int[h];
        for (int head = 0; head < h; head++)
        {
            for (int c = 0; c < 4; c++) headFactors[head, c] = 1 + variation * (2 * global.NextDouble() - 1);
            headWidths[head] = Math.Max(1, (int)Math.Round(options.LocalityWidth * Math.Pow(4, variation * (2 * global.NextDouble() - 1))));
        }
        // One positional sub-space of rotating pairs serves locality and slash lines: the key side is (cos ω·j, sin ω·j),
        // the query side a weighted sum of (cos ω·(i − δ), sin ω·(i − δ)) over δ = 0 (locality) and the slash offsets,
        // so both share every pair and the far-field noise is √(L_local² + L_slash²)/√(2M), not worse per component.
        bool locality = options.LocalityLogit > 0;
        int widest = locality ? options.LocalityWidth * (int)Math.Ceiling(Math.Pow(4, variation)) : SlashWidth;
        double[] omega = new double[layout.PositionPairs];
        for (int m = 0; m < omega.Length; m++)
        {
            // Geometric from π down to 1/widest: a head keeps the pairs with ω ≥ 1/its width, whose cosines stay
            // positive (coherent) up to about that distance.
            double f = omega.Length == 1 ? 0 : (double)m / (omega.Length - 1);
            omega[m] = Math.PI * Math.Pow(Math.PI * widest, -f);
        }
        var localityWeight = new double[h, layout.PositionPairs];
        var slashWeight = new double[h, layout.PositionPairs];
        for (int head = 0; head < h; head++)
        {
            if (locality) SpreadOver(omega, 1.0 / headWidths[head], options.LocalityLogit, localityWeight, head);
            if (options.SlashOffsets.Count > 0) SpreadOver(omega, 1.0 / SlashWidth, options.SlashLogit * headFactors[head, 2], slashWeight, head);
        }

        // cos/sin(ω·t) for every pair and position, and the slash query side folded into one coefficient pair per
        // (head, pair): Σ_δ w·cos(ω(i − δ)) = cos(ωi)·Σ_δ w·cos(ωδ) + sin(ωi)·Σ_δ w·sin(ωδ) (and alike for sin).
        var cosTable = new double[layout.PositionPairs * t];
        var sinTable = new double[layout.PositionPairs * t];
        for (int m = 0; m < layout.PositionPairs; m++)
            for (int p = 0; p < t; p++)
            {
                cosTable[m * t + p] = Math.Cos(omega[m] * p);
                sinTable[m * t + p] = Math.Sin(omega[m] * p);
            }
        var slashCos = new double[h, layout.PositionPairs];
        var slashSin = new double[h, layout.PositionPairs];
        for (int head = 0; head < h; head++)
            for (int m = 0; m < layout.PositionPairs; m++)
                foreach (int delta in options.SlashOffsets)
                {
                    slashCos[head, m] += slashWeight[head, m] * Math.Cos(omega[m] * delta);
                    slashSin[head, m] += slashWeight[head, m] * Math.Sin(omega[m] * delta);
                }

        // Per (batch, KV head): stripes, key clusters and centroids, needle keys; per (batch, head): needles, query clusters.
        var stripes = new List<StripeKey>();
        var stripeFlags = new bool[b * hkv][];
        int[]? keyClusters = options.ClusterCount > 0 ? new int[(long)b * hkv * t] : null;
        int[]? queryClusters = options.ClusterCount > 0 ? new int[(long)b * h * t] : null;
        var centroids = new double[b * hkv][];
        for (int bi = 0; bi < b; bi++)
        {
            for (int g = 0; g < hkv; g++)
            {
                var rng = new SeededRandom(seed, StreamStructure, bi, g);
                var flags = new bool[t];
                int placed = 0;
                while (placed < options.StripeCount)
                {
                    int key = rng.Next(options.SinkTokens, t);
                    if (flags[key]) continue;
                    flags[key] = true;
                    placed++;
                }
                for (int key = 0; key < t; key++) if (flags[key]) stripes.Add(new StripeKey(bi, g, key));
                stripeFlags[bi * hkv + g] = flags;
                if (keyClusters is not null)
                {
                    for (int key = 0; key < t; key++) keyClusters[((long)bi * hkv + g) * t + key] = rng.Next(0, options.ClusterCount);
                    if (layout.ClusterDims > 0) centroids[bi * hkv + g] = UnitVectors(ref rng, options.ClusterCount, layout.ClusterDims);
                }
            }
            if (queryClusters is not null)
            {
                for (int head = 0; head < h; head++)
                {
                    var rng = new SeededRandom(seed, StreamQueryCluster, bi, head);
                    for (int q = 0; q < t; q++) queryClusters[((long)bi * h + head) * t + q] = rng.Next(0, options.ClusterCount);
                }
            }
        }
        PlantedNeedle[] needles = PlaceNeedles(options, seed);
        // Needle directions per (batch, KV head): one per needle of the group's heads, in needle order.
        var needleVectors = new double[b * hkv][];
        var needleIndexOfKey = new Dictionary<(int, int, int), int>();
        var needleIndexOfQuery = new Dictionary<(int, int, int), int>();
        if (needles.Length > 0 && layout.NeedleDims > 0)
        {
            var counts = new int[b * hkv];
            foreach (PlantedNeedle n in needles)
            {
                int slot = n.Batch * hkv + n.Head / group;
                needleIndexOfKey[(n.Batch, n.Head / group, n.Key)] = counts[slot];
                needleIndexOfQuery[(n.Batch, n.Head, n.Query)] = counts[slot];
                counts[slot]++;
            }
            for (int slot = 0; slot < b * hkv; slot++)
            {
                var rng = new SeededRandom(seed, StreamNeedle, slot);
                needleVectors[slot] = UnitVectors(ref rng, Math.Max(counts[slot], 1), layout.NeedleDims);
            }
        }

        double dimFactor = Math.Pow(d, 0.25);
        double noiseAmplitude = layout.NoiseDims == 0 ? 0 : Math.Sqrt(options.Noise / Math.Sqrt(layout.NoiseDims));
        double sinkAmp = Math.Sqrt(options.SinkLogit), stripeAmp = Math.Sqrt(options.StripeLogit);
        double clusterAmp = Math.Sqrt(options.ClusterLogit), needleAmp = Math.Sqrt(options.NeedleLogit);

        var qData = new float[(long)b * t * h * d];
        var kData = new float[(long)b * t * hkv * d];
        var vData = new float[(long)b * t * hkv * d];

        // Keys and values: one independent stream per (batch, KV head), filled in parallel.
        Parallel.For(0, b * hkv, slot =>
        {
            int bi = slot / hkv, g = slot % hkv;
            var noise = new SeededRandom(seed, StreamK, bi, g);
            var values = new SeededRandom(seed, StreamV, bi, g);
            bool[] flags = stripeFlags[slot];
            Span<double> row = stackalloc double[d];
            for (int key = 0; key < t; key++)
            {
                row.Clear();
                for (int i = 0; i < layout.NoiseDims; i++) row[i] = noiseAmplitude * noise.NextGaussian();
                if (layout.SinkDim >= 0 && key < options.SinkTokens) row[layout.SinkDim] = sinkAmp;
                if (layout.StripeDim >= 0 && flags[key]) row[layout.StripeDim] = stripeAmp;
                for (int m = 0; m < layout.PositionPairs; m++)
                {
                    row[layout.PositionStart + 2 * m] = cosTable[m * t + key];
                    row[layout.PositionStart + 2 * m + 1] = sinTable[m * t + key];
                }
                if (layout.ClusterDims > 0 && keyClusters is not null && queryClusters is not null)
                {
                    int cluster = keyClusters[(long)slot * t + key];
                    for (int i = 0; i < layout.ClusterDims; i++) row[layout.ClusterStart + i] = clusterAmp * centroids[slot][cluster * layout.ClusterDims + i];
                }
                if (layout.NeedleDims > 0 && needleIndexOfKey.TryGetValue((bi, g, key), out int needle))
                    for (int i = 0; i < layout.NeedleDims; i++) row[layout.NeedleStart + i] = needleAmp * needleVectors[slot][needle * layout.NeedleDims + i];
                long offset = (((long)bi * t + key) * hkv + g) * d;
                for (int i = 0; i < d; i++)
                {
                    kData[offset + i] = (float)(dimFactor * row[i]);
                    vData[offset + i] = (float)values.NextGaussian();
                }
            }
        });

        // Queries: one stream per (batch, head).
        Parallel.For(0, b * h, slot =>
        {
            int bi = slot / h, head = slot % h, g = head / group, kvSlot = bi * hkv + g;
            var noise = new SeededRandom(seed, StreamQ, bi, head);
            Span<double> row = stackalloc double[d];
            for (int q = 0; q < t; q++)
            {
                row.Clear();
                for (int i = 0; i < layout.NoiseDims; i++) row[i] = noiseAmplitude * noise.NextGaussian();
                if (layout.SinkDim >= 0) row[layout.SinkDim] = sinkAmp * headFactors[head, 0];
                if (layout.StripeDim >= 0) row[layout.StripeDim] = stripeAmp * headFactors[head, 1];
                for (int m = 0; m < layout.PositionPairs; m++)
                {
                    double cq = cosTable[m * t + q], sq = sinTable[m * t + q];
                    // cos(ω(q − δ)) = cos ωq·cos ωδ + sin ωq·sin ωδ;  sin(ω(q − δ)) = sin ωq·cos ωδ − cos ωq·sin ωδ.
                    double c = localityWeight[head, m] * cq + cq * slashCos[head, m] + sq * slashSin[head, m];
                    double sn = localityWeight[head, m] * sq + sq * slashCos[head, m] - cq * slashSin[head, m];
                    row[layout.PositionStart + 2 * m] = c;
                    row[layout.PositionStart + 2 * m + 1] = sn;
                }
                if (layout.ClusterDims > 0 && keyClusters is not null && queryClusters is not null)
                {
                    int cluster = queryClusters[(long)slot * t + q];
                    double amp = clusterAmp * headFactors[head, 3];
                    for (int i = 0; i < layout.ClusterDims; i++) row[layout.ClusterStart + i] = amp * centroids[kvSlot][cluster * layout.ClusterDims + i];
                }
                if (layout.NeedleDims > 0 && needleIndexOfQuery.TryGetValue((bi, head, q), out int needle))
                    for (int i = 0; i < layout.NeedleDims; i++) row[layout.NeedleStart + i] = needleAmp * needleVectors[kvSlot][needle * layout.NeedleDims + i];
                long offset = (((long)bi * t + q) * h + head) * d;
                for (int i = 0; i < d; i++) qData[offset + i] = (float)(dimFactor * row[i]);
            }
        });

        return new Workload(options, seed, qData, kData, vData, [.. stripes], needles, keyClusters, queryClusters, headWidths);
    }

    // Equal weights, summing to `logit`, over the pairs with ω ≥ cutoff (at least the fastest one).
    private static void SpreadOver(double[] omega, double cutoff, double logit, double[,] weights, int head)
    {
        int kept = 0;
        for (int m = 0; m < omega.Length; m++) if (omega[m] >= cutoff * 0.999) kept++;
        kept = Math.Max(kept, 1);
        for (int m = 0; m < kept; m++) weights[head, m] = logit / kept;
    }

    private static PlantedNeedle[] PlaceNeedles(WorkloadOptions options, int seed)
    {
        if (options.NeedleCount == 0) return [];
        int t = options.Length, minDistance = MinNeedleDistance(options);
        int group = options.Heads / options.KvHeads;
        var needles = new List<PlantedNeedle>();
        var usedKeys = new HashSet<(int, int, int)>();
        for (int bi = 0; bi < options.Batch; bi++)
        {
            for (int head = 0; head < options.Heads; head++)
            {
                var rng = new SeededRandom(seed, StreamNeedle + 100, bi, head);
                var usedQueries = new HashSet<int>();
                var mine = new List<PlantedNeedle>();
                int attempts = 0;
                while (mine.Count < options.NeedleCount)
                {
                    if (++attempts > 1000 * options.NeedleCount)
                        throw new ArgumentOutOfRangeException(nameof(WorkloadOptions.NeedleCount), options.NeedleCount,
                            $"Cannot place {options.NeedleCount} needles per head with distinct queries and keys in {t} tokens (minimum distance {minDistance}).");
                    int query = rng.Next(options.SinkTokens + minDistance, t);
                    int key = rng.Next(options.SinkTokens, query - minDistance + 1);
                    if (usedQueries.Contains(query) || usedKeys.Contains((bi, head / group, key))) continue;
                    usedQueries.Add(query);
                    usedKeys.Add((bi, head / group, key));
                    mine.Add(new PlantedNeedle(bi, head, query, key));
                }
                mine.Sort((x, y) => x.Query.CompareTo(y.Query));
                needles.AddRange(mine);
            }
        }
        return [.. needles];
    }

    private static int MinNeedleDistance(WorkloadOptions options) => options.NeedleMinDistance ?? Math.Max(1, options.Length / 4);

    // Unit vectors in `dims` dimensions, `count` of them, row-major; orthonormal (Gram–Schmidt) while count ≤ dims.
    private static double[] UnitVectors(ref SeededRandom rng, int count, int dims)
    {
        var vectors = new double[count * dims];
        for (int c = 0; c < count; c++)
        {
            Span<double> v = vectors.AsSpan(c * dims, dims);
            while (true)
            {
                for (int i = 0; i < dims; i++) v[i] = rng.NextGaussian();
                if (c < dims)
                {
                    for (int p = 0; p < c; p++)
                    {
                        ReadOnlySpan<double> u = vectors.AsSpan(p * dims, dims);
                        double dot = 0;
                        for (int i = 0; i < dims; i++) dot += v[i] * u[i];
                        for (int i = 0; i < dims; i++) v[i] -= dot * u[i];
                    }
                }
                double norm = 0;
                for (int i = 0; i < dims; i++) norm += v[i] * v[i];
                norm = Math.Sqrt(norm);
                if (norm < 1e-6) continue;
                for (int i = 0; i < dims; i++) v[i] /= norm;
                break;
            }
        }
        return vectors;
    }

    private static void Validate(WorkloadOptions o)
    {
        static ArgumentOutOfRangeException Bad(string name, object value, string why) => new(name, value, why);
        if (o.Batch < 1) throw Bad(nameof(o.Batch), o.Batch, "The batch must be ≥ 1.");
        if (o.Length < 1) throw Bad(nameof(o.Length), o.Length, "The length must be ≥ 1.");
        if (o.Heads < 1) throw Bad(nameof(o.Heads), o.Heads, "The number of heads must be ≥ 1.");
        if (o.KvHeads < 1 || o.Heads % o.KvHeads != 0) throw Bad(nameof(o.KvHeads), o.KvHeads, $"The KV heads must be ≥ 1 and divide the {o.Heads} query heads.");
        if (o.HeadDim < 1) throw Bad(nameof(o.HeadDim), o.HeadDim, "The head dimension must be ≥ 1.");
        CheckStrength(nameof(o.Noise), o.Noise);
        CheckStrength(nameof(o.SinkLogit), o.SinkLogit);
        CheckStrength(nameof(o.LocalityLogit), o.LocalityLogit);
        CheckStrength(nameof(o.StripeLogit), o.StripeLogit);
        CheckStrength(nameof(o.SlashLogit), o.SlashLogit);
        CheckStrength(nameof(o.ClusterLogit), o.ClusterLogit);
        CheckStrength(nameof(o.NeedleLogit), o.NeedleLogit);
        if (o.SinkTokens < 0 || o.SinkTokens > o.Length) throw Bad(nameof(o.SinkTokens), o.SinkTokens, $"The sink tokens must be in [0, {o.Length}].");
        if (o.LocalityWidth < 1) throw Bad(nameof(o.LocalityWidth), o.LocalityWidth, "The locality width must be ≥ 1.");
        if (o.StripeCount < 0 || o.StripeCount > o.Length - o.SinkTokens)
            throw Bad(nameof(o.StripeCount), o.StripeCount, $"The stripe count must be in [0, {o.Length - o.SinkTokens}] (the keys after the sinks).");
        ArgumentNullException.ThrowIfNull(o.SlashOffsets, nameof(o.SlashOffsets));
        foreach (int delta in o.SlashOffsets)
            if (delta < 0 || delta >= o.Length) throw Bad(nameof(o.SlashOffsets), delta, $"A slash offset must be in [0, {o.Length - 1}].");
        if (o.ClusterCount < 0 || o.ClusterCount > o.Length) throw Bad(nameof(o.ClusterCount), o.ClusterCount, $"The cluster count must be in [0, {o.Length}].");
        if (o.NeedleCount < 0) throw Bad(nameof(o.NeedleCount), o.NeedleCount, "The needle count must be ≥ 0.");
        if (o.NeedleMinDistance is int nd && nd < 1) throw Bad(nameof(o.NeedleMinDistance), nd, "The needle distance must be ≥ 1.");
        if (o.NeedleCount > 0 && o.SinkTokens + MinNeedleDistance(o) >= o.Length)
            throw Bad(nameof(o.NeedleCount), o.NeedleCount, $"Needles need more than {o.SinkTokens + MinNeedleDistance(o)} tokens (sinks plus the minimum distance); the length is {o.Length}.");
        if (!(o.HeadVariation >= 0 && o.HeadVariation <= 1)) throw Bad(nameof(o.HeadVariation), o.HeadVariation, "The head variation must be in [0, 1].");
        _ = new Layout(o); // throws when the head dimension is too small
    }

    private static void CheckStrength(string name, double value)
    {
        if (!double.IsFinite(value) || value < 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be finite and ≥ 0.");
    }

    /// <summary>Which dimensions of the head each component owns; noise takes the rest (first).</summary>
    private sealed class Layout
    {
        public int NoiseDims, SinkDim = -1, StripeDim = -1, PositionStart, PositionPairs, ClusterStart, ClusterDims, NeedleStart, NeedleDims;

        public Layout(WorkloadOptions o)
        {
            // Small fixed shares first (sinks, stripes, clusters, needles), then noise (an eighth of the head: its
            // strength is set in logit units, so its dimension count only shapes it), and the rest to the rotating pairs
            // of locality and slash lines (one shared positional sub-space), whose far-field noise falls as 1/√pairs (up to 48 pairs).
            int d = o.HeadDim, share = Math.Clamp(d / 8, 2, 16);
            bool sinks = o.SinkTokens > 0 && o.SinkLogit > 0;
            bool stripes = o.StripeCount > 0 && o.StripeLogit > 0;
            bool locality = o.LocalityLogit > 0, slash = o.SlashOffsets.Count > 0 && o.SlashLogit > 0;
            ClusterDims = o.ClusterCount > 0 && o.ClusterLogit > 0 ? Math.Min(share, Math.Max(2, o.ClusterCount)) : 0;
            NeedleDims = o.NeedleCount > 0 && o.NeedleLogit > 0 ? share : 0;
            int fixedDims = (sinks ? 1 : 0) + (stripes ? 1 : 0) + ClusterDims + NeedleDims;
            int noise = o.Noise > 0 ? Math.Max(1, d / 8) : 0;
            int pairs = Math.Max(0, (d - fixedDims - noise) / 2);
            PositionPairs = locality || slash ? Math.Min(48, pairs) : 0;
            int structured = fixedDims + 2 * PositionPairs;
            NoiseDims = d - structured;
            if (NoiseDims < 0 || (o.Noise > 0 && NoiseDims < 1) || ((locality || slash) && PositionPairs < 1))
                throw new ArgumentOutOfRangeException(nameof(WorkloadOptions.HeadDim), d,
                    $"The enabled structure needs {fixedDims + (locality || slash ? 2 : 0)} dimensions of its own plus {noise} for noise; the head dimension is {d}.");
            int next = NoiseDims;
            if (sinks) SinkDim = next++;
            if (stripes) StripeDim = next++;
            PositionStart = next; next += 2 * PositionPairs;
            ClusterStart = next; next += ClusterDims;
            NeedleStart = next;
        }
    }
}
