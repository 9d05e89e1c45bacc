namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// The Routing Transformer's sorted form of a <see cref="ClusterMask"/> plan: the same pairs as the mask form, computed
/// in tiles that follow the plan's density. Each (sequence, head)'s queries and keys are sorted by cluster (then by
/// position), each cluster becomes one segment of a packed variable-length call of the exact kernel (the cluster's
/// pairs outside the local window, <see cref="SortedClusterMask"/>), the local window runs as a sliding-window call
/// on the original layout, and the two disjoint partial results join through the LSE merge (<see cref="Lse"/>).
/// </summary>
/// <remarks>
/// The mask form runs every 64 × 64 tile of the original layout whose rows and keys share a cluster, which at √T
/// clusters is nearly every tile; here a cluster's queries and keys are contiguous, so the kernel visits about
/// (its pairs / tile area) tiles. This is the paper's sort (Roy et al. sort tokens by cluster and attend within
/// chunks), kept exact: clusters are not balanced or cut into equal chunks, so every pair the plan names is computed
/// once and nothing else. The gather, the second call and the merge cost O(T · H · D) on the host; the backward pass
/// stays on the mask form (<see cref="SparsePlan.Options"/>), which computes the same pairs.
/// </remarks>
public static class ClusterSortedAttention
{
    /// <summary>
    /// Runs <paramref name="plan"/> (a <see cref="RoutingTransformer.Plan"/>) in sorted form: <paramref name="output"/>
    /// <c>[B, Tq, H, Dv]</c> and, when not empty, <paramref name="lse"/> <c>[B, H, Tq]</c>, in the layout the plan's
    /// input has (dense, or packed with its offsets). Returns the kernel of the routing call (null when no cluster has
    /// both queries and keys). The exact kernel's backend is the ambient one (<see cref="AttentionBackend.Use"/>).
    /// </summary>
    /// <exception cref="ArgumentException">A plan that is not cluster routing, or spans of the wrong length (named).</exception>
    public static unsafe AttentionKernel? Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        SparsePlan plan, int valueDim, float? scale, Span<float> output, Span<float> lse)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.Mask is not ClusterMask mask)
            throw new ArgumentException($"The plan's mask is {plan.Mask}; the sorted form runs cluster routing (RoutingTransformer.Plan).", nameof(plan));
        ArgumentOutOfRangeException.ThrowIfLessThan(valueDim, 1);
        ClusterMask.Table t = mask.Data;
        SelectorInput x = plan.Input;
        int n = x.Sequences, heads = x.Heads, group = x.GroupSize, kvHeads = x.KvHeads, d = x.Dim, dv = valueDim;
        int tqAll = x.TotalQueryLength, tkAll = x.TotalKeyLength, batch = x.Batch, clusters = t.Clusters;
        CheckLength(q, (long)batch * tqAll * heads * d, nameof(q), "[B, Tq, H, D]");
        CheckLength(k, (long)batch * tkAll * kvHeads * d, nameof(k), "[B, Tk, Hkv, D]");
        CheckLength(v, (long)batch * tkAll * kvHeads * dv, nameof(v), "[B, Tk, Hkv, Dv]");
        CheckLength(output, (long)batch * tqAll * heads * dv, nameof(output), "[B, Tq, H, Dv]");
        if (!lse.IsEmpty) CheckLength(lse, (long)batch * heads * tqAll, nameof(lse), "[B, H, Tq]");

        // Per (sequence, head): query rows and keys in cluster order (a counting sort keeps positions ascending).
        int units = n * heads;
        var queryOrder = new int[units][];
        var keyOrder = new int[units][];
        var queryFirst = new int[units][];
        var keyFirst = new int[units][];
        SelectorMath.ForEach(units, u =>
        {
            (queryOrder[u], queryFirst[u]) = SortByCluster(t.QueryCluster[u], clusters);
            (keyOrder[u], keyFirst[u]) = SortByCluster(t.KeyCluster[u], clusters);
        });

        // Segments: the (unit, cluster) pairs with queries and keys.
        var segmentUnit = new List<int>();
        var segmentCluster = new List<int>();
        var queryLengths = new List<int>();
        var keyLengths = new List<int>();
        for (int u = 0; u < units; u++)
            for (int c = 0; c < clusters; c++)
            {
                int nq = queryFirst[u][c + 1] - queryFirst[u][c], nk = keyFirst[u][c + 1] - keyFirst[u][c];
                if (nq == 0 || nk == 0) continue;
                segmentUnit.Add(u);
                segmentCluster.Add(c);
                queryLengths.Add(nq);
                keyLengths.Add(nk);
            }

        // The window half writes output and LSE directly; the routing half is merged into them.
        float[]? lseOwned = lse.IsEmpty ? new float[(long)batch * heads * tqAll] : null;
        Span<float> lseAll = lseOwned ?? lse;
        var flatQ = MemoryMarshalHelper.AsWritable(q);
        var flatK = MemoryMarshalHelper.AsWritable(k);
        var flatV = MemoryMarshalHelper.AsWritable(v);
        AttentionKernel? windowKernel = null;
        if (t.Window > 0)
        {
            var windowOptions = new AttentionOptions
            {
                Mask = t.Causal ? new SlidingWindowMask(t.Window - 1, 0) : new SlidingWindowMask(t.Window - 1, t.Window - 1),
                Scale = scale, QueryOffsets = x.Offsets, KeyOffsets = x.Offsets,
            };
            windowKernel = Attention.Forward<float>(AttentionLayout.Bthd(flatQ, batch, tqAll, heads, d), AttentionLayout.Bthd(flatK, batch, tkAll, kvHeads, d),
                AttentionLayout.Bthd(flatV, batch, tkAll, kvHeads, dv), windowOptions, AttentionLayout.Bthd(output, batch, tqAll, heads, dv),
                AttentionLayout.Lse(lseAll, batch, heads, tqAll));
        }
        else
        {
            output.Clear();
            lseAll.Fill(float.NegativeInfinity);
        }
        int segments = segmentUnit.Count;
        if (segments == 0) return windowKernel;

        SeqOffsets queryOffsets = SeqOffsets.FromLengths(queryLengths.ToArray()), keyOffsets = SeqOffsets.FromLengths(keyLengths.ToArray());
        int packedQueries = queryOffsets.TotalTokens, packedKeys = keyOffsets.TotalTokens;
        var sortedQ = new float[(long)packedQueries * d];
        var sortedK = new float[(long)packedKeys * d];
        var sortedV = new float[(long)packedKeys * dv];
        var queryPosition = new int[packedQueries];
        var keyPosition = new int[packedKeys];
        var queryRow = new int[packedQueries];
        fixed (float* pq = q, pk = k, pv = v)
        {
            nint qAt = (nint)pq, kAt = (nint)pk, vAt = (nint)pv;
            SelectorMath.ForEach(segments, i =>
            {
                int u = segmentUnit[i], c = segmentCluster[i], s = u / heads, head = u % heads, kvHead = head / group;
                int shift = x.KeyLength(s) - x.QueryLength(s);
                int at = queryOffsets.Start(i);
                for (int j = queryFirst[u][c]; j < queryFirst[u][c + 1]; j++, at++)
                {
                    int row = queryOrder[u][j];
                    queryRow[at] = row;
                    queryPosition[at] = row + shift;
                    long src = ((long)QueryToken(x, s, row) * heads + head) * d;
                    new ReadOnlySpan<float>((float*)qAt + src, d).CopyTo(sortedQ.AsSpan((int)((long)at * d), d));
                }
                at = keyOffsets.Start(i);
                for (int j = keyFirst[u][c]; j < keyFirst[u][c + 1]; j++, at++)
                {
                    int key = keyOrder[u][j];
                    keyPosition[at] = key;
                    long token = KeyToken(x, s, key);
                    new ReadOnlySpan<float>((float*)kAt + (token * kvHeads + kvHead) * d, d).CopyTo(sortedK.AsSpan((int)((long)at * d), d));
                    new ReadOnlySpan<float>((float*)vAt + (token * kvHeads + kvHead) * dv, dv).CopyTo(sortedV.AsSpan((int)((long)at * dv), dv));
                }
            });
        }

        var routed = new float[(long)packedQueries * dv];
        var routedLse = new float[packedQueries];
        var routingOptions = new AttentionOptions
        {
            Mask = new SortedClusterMask(queryPosition, keyPosition, queryOffsets, keyOffsets, t.Window, t.Causal),
            Scale = scale, QueryOffsets = queryOffsets, KeyOffsets = keyOffsets,
        };
        AttentionKernel kernel = Attention.Forward<float>(AttentionLayout.Bthd<float>(sortedQ, 1, packedQueries, 1, d),
            AttentionLayout.Bthd<float>(sortedK, 1, packedKeys, 1, d), AttentionLayout.Bthd<float>(sortedV, 1, packedKeys, 1, dv),
            routingOptions, AttentionLayout.Bthd<float>(routed, 1, packedQueries, 1, dv), AttentionLayout.Lse(routedLse, 1, 1, packedQueries));

        // Merge each routed row into its place; rows of different segments are distinct (sequence, head, row) cells.
        fixed (float* po = output, pl = lseAll)
        {
            nint oAt = (nint)po, lAt = (nint)pl;
            SelectorMath.ForEach(segments, i =>
            {
                int u = segmentUnit[i], s = u / heads, head = u % heads;
                for (int at = queryOffsets.Start(i); at < queryOffsets.Start(i + 1); at++)
                {
                    int row = queryRow[at];
                    var target = new Span<float>((float*)oAt + ((long)QueryToken(x, s, row) * heads + head) * dv, dv);
                    ref float targetLse = ref ((float*)lAt)[LseIndex(x, s, head, row)];
                    Lse.Merge(target, targetLse, routed.AsSpan((int)((long)at * dv), dv), routedLse[at], target, out float merged);
                    targetLse = merged;
                }
            });
        }
        return kernel;
    }

    // Counting sort of token indices by cluster: (order, first) with cluster c's tokens at order[first[c] .. first[c + 1]).
    private static (int[] Order, int[] First) SortByCluster(int[] cluster, int clusters)
    {
        var first = new int[clusters + 1];
        foreach (int c in cluster) first[c + 1]++;
        for (int c = 0; c < clusters; c++) first[c + 1] += first[c];
        var next = first.AsSpan(0, clusters).ToArray();
        var order = new int[cluster.Length];
        for (int i = 0; i < cluster.Length; i++) order[next[cluster[i]]++] = i;
        return (order, first);
    }

    // Token index on the flattened [B · T] axis of query row `row` (key `key`) of sequence s.
    private static long QueryToken(SelectorInput x, int s, int row) =>
        x.Offsets is SeqOffsets o ? o.Start(s) + row : (long)s * x.TotalQueryLength + row;

    private static long KeyToken(SelectorInput x, int s, int key) =>
        x.Offsets is SeqOffsets o ? o.Start(s) + key : (long)s * x.TotalKeyLength + key;

    // LSE [B, H, Tq]: a packed batch is B = 1 with its sequences along Tq.
    private static long LseIndex(SelectorInput x, int s, int head, int row) =>
        x.Offsets is SeqOffsets o ? (long)head * x.TotalQueryLength + o.Start(s) + row : ((long)s * x.Heads + head) * x.TotalQueryLength + row;

    private static void CheckLength(ReadOnlySpan<float> span, long expected, string name, string layout)
    {
        if (span.Length != expected)
            throw new ArgumentException($"{name} holds {span.Length} values; {layout} of the plan's input needs {expected}.", name);
    }
}
