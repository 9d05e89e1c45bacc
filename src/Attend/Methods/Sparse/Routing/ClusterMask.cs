namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// Token-level cluster routing as a mask: a query sees a key when both were routed to the same cluster, or when the
/// key lies in the query's local window (<c>q − window &lt; k ≤ q</c> causal, <c>|q − k| &lt; window</c> otherwise); with
/// <c>causal</c> only keys <c>k ≤ q</c>. Cluster ids are per (sequence, head): keys of a shared key head are routed
/// with each query head's own centroids.
/// </summary>
public readonly struct ClusterMask : IMaskMod<ClusterMask>, IMaskRowWords
{
    private readonly Table? _table;

    internal ClusterMask(Table table) => _table = table;

    private Table T => _table ?? throw new InvalidOperationException("default(ClusterMask) has no clusters; build it with RoutingTransformer.Plan.");

    // The routing table, for the sorted form (ClusterSortedAttention).
    internal Table Data => T;

    internal sealed class Table(int[] queryLengths, int[] keyLengths, int heads, int clusters, int window, bool causal, int[][] queryCluster, int[][] keyCluster)
    {
        public readonly int[] QueryLengths = queryLengths, KeyLengths = keyLengths;
        public readonly int Heads = heads, Clusters = clusters, Window = window;
        public readonly bool Causal = causal;
        public readonly int[][] QueryCluster = queryCluster, KeyCluster = keyCluster; // [sequence * heads + head][token]
    }

    /// <summary>Number of clusters.</summary>
    public int Clusters => T.Clusters;

    /// <summary>The cluster query row <paramref name="row"/> of a sequence and head was routed to.</summary>
    public int QueryCluster(int sequence, int head, int row) => T.QueryCluster[sequence * T.Heads + head][row];

    /// <summary>The cluster key <paramref name="key"/> of a sequence was routed to for query head <paramref name="head"/>.</summary>
    public int KeyCluster(int sequence, int head, int key) => T.KeyCluster[sequence * T.Heads + head][key];

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch;
        int tq = t.QueryLengths[e], tk = t.KeyLengths[e], row = q - (tk - tq);
        if ((uint)row >= (uint)tq || (uint)k >= (uint)tk) return false;
        if (t.Causal && k > q) return false;
        int d = q - k;
        if (d < t.Window && (t.Causal || d > -t.Window)) return true;
        int g = e * t.Heads + head;
        return t.QueryCluster[g][row] == t.KeyCluster[g][k];
    }

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch;
        int tq = t.QueryLengths[e], tk = t.KeyLengths[e], row = q - (tk - tq);
        if ((uint)row >= (uint)tq || k0 < 0) return 0;
        ulong allowed = MaskRowWords.Range(0, tk, k0);
        if (t.Causal) allowed &= MaskRowWords.AtMost(q, k0);
        // The local window: q − k < Window, and (not causal) k − q < Window.
        ulong window = t.Window == 0 ? 0 : MaskRowWords.Range((long)q - t.Window + 1, t.Causal ? (long)q + 1 : (long)q + t.Window, k0);
        ulong word = allowed & window;
        int g = e * t.Heads + head, cluster = t.QueryCluster[g][row];
        int[] keyCluster = t.KeyCluster[g];
        for (ulong rest = allowed & ~window; rest != 0; rest &= rest - 1)
        {
            int j = System.Numerics.BitOperations.TrailingZeroCount(rest);
            if (keyCluster[k0 + j] == cluster) word |= 1UL << j;
        }
        return word;
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        Table t = T;
        int e = t.QueryLengths.Length == 1 ? 0 : batch;
        int tq = t.QueryLengths[e], tk = t.KeyLengths[e], shift = tk - tq;
        int r0 = Math.Max(qStart - shift, 0), r1 = Math.Min(qEnd - shift, tq), k0 = Math.Max(kStart, 0), k1 = Math.Min(kEnd, tk);
        if (r1 <= r0 || k1 <= k0) return BlockKind.Empty;
        bool inside = r0 == qStart - shift && r1 == qEnd - shift && k0 == kStart && k1 == kEnd;
        BlockKind causalKind = t.Causal ? new CausalMask().ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd) : BlockKind.Full;
        if (causalKind == BlockKind.Empty) return BlockKind.Empty;
        BlockKind windowKind = t.Window == 0 ? BlockKind.Empty
            : new SlidingWindowMask(t.Window - 1, t.Causal ? 0 : t.Window - 1).ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (windowKind == BlockKind.Full) return causalKind == BlockKind.Full && inside ? BlockKind.Full : BlockKind.Partial;
        // Which clusters occur among the block's rows and among its keys.
        int g = e * t.Heads + head, words = (t.Clusters + 63) / 64;
        Span<ulong> qs = words <= 64 ? stackalloc ulong[words] : new ulong[words];
        Span<ulong> ks = words <= 64 ? stackalloc ulong[words] : new ulong[words];
        int[] qc = t.QueryCluster[g], kc = t.KeyCluster[g];
        for (int r = r0; r < r1; r++) qs[qc[r] >> 6] |= 1UL << (qc[r] & 63);
        for (int k = k0; k < k1; k++) ks[kc[k] >> 6] |= 1UL << (kc[k] & 63);
        bool shared = false;
        for (int w = 0; w < words; w++) shared |= (qs[w] & ks[w]) != 0;
        if (!shared) return windowKind == BlockKind.Empty ? BlockKind.Empty : BlockKind.Partial;
        int distinct = 0;
        bool same = true;
        for (int w = 0; w < words; w++)
        {
            distinct += (int)ulong.PopCount(qs[w]);
            same &= qs[w] == ks[w];
        }
        bool single = same && distinct == 1;
        return single && causalKind == BlockKind.Full && inside ? BlockKind.Full : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => T.Heads > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => T.QueryLengths.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => _table is null ? "clusters(none)" : $"clusters({_table.Clusters}, window {_table.Window}{(_table.Causal ? ", causal" : "")})";

    /// <summary>Exact number of visible pairs over all sequences and heads, in O(T) per head (no T × T walk).</summary>
    internal long CountPairs()
    {
        Table t = T;
        long total = 0;
        var baseCount = new int[t.Clusters];
        var windowCount = new int[t.Clusters];
        for (int e = 0; e < t.QueryLengths.Length; e++)
        {
            int tq = t.QueryLengths[e], tk = t.KeyLengths[e], shift = tk - tq;
            for (int h = 0; h < t.Heads; h++)
            {
                int[] qc = t.QueryCluster[e * t.Heads + h], kc = t.KeyCluster[e * t.Heads + h];
                Array.Clear(baseCount);
                Array.Clear(windowCount);
                int baseEnd = 0, winLo = 0, winHi = 0;
                for (int row = 0; row < tq; row++)
                {
                    int pos = row + shift;
                    if (t.Causal && pos < 0) continue;
                    int hiBase = t.Causal ? Math.Min(pos, tk - 1) + 1 : tk;
                    while (baseEnd < hiBase) baseCount[kc[baseEnd++]]++;
                    int lo = Math.Clamp(pos - t.Window + 1, 0, tk);
                    int hi = t.Causal ? hiBase : Math.Clamp(pos + t.Window, 0, tk);
                    if (t.Window == 0 || hi < lo) lo = hi = Math.Max(winHi, winLo);
                    while (winHi < hi) windowCount[kc[winHi++]]++;
                    while (winLo < lo) windowCount[kc[winLo++]]--;
                    int c = qc[row];
                    total += baseCount[c] + (winHi - winLo) - windowCount[c];
                }
            }
        }
        return total;
    }
}
