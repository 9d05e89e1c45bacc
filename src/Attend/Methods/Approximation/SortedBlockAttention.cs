using System.Numerics.Tensors;

namespace Attend.Methods.Approximation;

/// <summary>
/// The exact part of the LSH approximations (HyperAttention, Scatterbrain): queries and keys sorted by their
/// <see cref="SortLsh"/> bucket, attention restricted to equal blocks of the two sorted orders, computed on the flash
/// kernel with a "same sorted block" mask. Returns the output and LSE in the original row order, and each row's block.
/// </summary>
internal static class SortedBlockAttention
{
    // q: queries [nq][H][D]; k, v: keys and values [nk][Hkv][D].
    /// <summary>
    /// Runs the sorted-block exact attention of one sequence; with <paramref name="causal"/>, only pairs whose original
    /// key position is at or before the query's (bottom-right aligned) are kept.
    /// </summary>
    /// <returns>Output [nq][H][D], LSE [H][nq], block of each query per head [H][nq], block of each key per KV head [Hkv][nk].</returns>
    public static (float[] O, float[] Lse, int[][] QBlock, int[][] KBlock) Run(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        int nq, int nk, int heads, int kvHeads, SortLsh lsh, int blockSize, float scale, int threads, bool causal = false)
    {
        int d = lsh.Dim, hd = heads * d, kd = kvHeads * d, bs = blockSize;
        var qOrder = new int[heads][];
        var kOrder = new int[kvHeads][];
        var qBlock = new int[heads][];
        var kBlock = new int[kvHeads][];
        for (int h = 0; h < heads; h++)
        {
            qOrder[h] = lsh.SortOrder(q[(h * d)..], nq, hd);
            qBlock[h] = new int[nq];
            for (int i = 0; i < nq; i++) qBlock[h][qOrder[h][i]] = i / bs;
        }
        for (int hk = 0; hk < kvHeads; hk++)
        {
            kOrder[hk] = lsh.SortOrder(k[(hk * d)..], nk, kd);
            kBlock[hk] = new int[nk];
            for (int j = 0; j < nk; j++) kBlock[hk][kOrder[hk][j]] = j / bs;
        }
        var qs = new float[nq * hd];
        var ks = new float[nk * kd];
        var vs = new float[nk * kd];
        for (int i = 0; i < nq; i++)
            for (int h = 0; h < heads; h++)
                q.Slice(qOrder[h][i] * hd + h * d, d).CopyTo(qs.AsSpan(i * hd + h * d, d));
        for (int j = 0; j < nk; j++)
            for (int hk = 0; hk < kvHeads; hk++)
            {
                k.Slice(kOrder[hk][j] * kd + hk * d, d).CopyTo(ks.AsSpan(j * kd + hk * d, d));
                v.Slice(kOrder[hk][j] * kd + hk * d, d).CopyTo(vs.AsSpan(j * kd + hk * d, d));
            }
        var os = new float[nq * hd];
        var ls = new float[heads * nq];
        Attention.Forward<float>(AttentionLayout.Bthd<float>(qs, 1, nq, heads, d), AttentionLayout.Bthd<float>(ks, 1, nk, kvHeads, d),
            AttentionLayout.Bthd<float>(vs, 1, nk, kvHeads, d),
            new AttentionOptions
            {
                Mask = causal ? new SortedBlockCausalMask(bs, nk - nq, qOrder, kOrder, heads / kvHeads) : new SortedBlockMask(bs, nk - nq),
                Scale = scale, MaxThreads = threads,
            },
            AttentionLayout.Bthd<float>(os, 1, nq, heads, d), AttentionLayout.Lse(ls, 1, heads, nq));
        // Back to row order.
        var o = new float[nq * hd];
        var l = new float[heads * nq];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < nq; i++)
            {
                int row = qOrder[h][i];
                os.AsSpan(i * hd + h * d, d).CopyTo(o.AsSpan(row * hd + h * d, d));
                l[h * nq + row] = ls[h * nq + i];
            }
        return (o, l, qBlock, kBlock);
    }

    // Same block of the sorted orders: query row i (position q − shift) and key j see each other when i/bs == j/bs.
    internal readonly struct SortedBlockMask(int blockSize, int shift) : IMaskMod<SortedBlockMask>
    {
        public bool IsVisible(int batch, int head, int q, int k) => (q - shift) / blockSize == k / blockSize && q - shift >= 0;

        public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
        {
            int a0 = qStart - shift, a1 = qEnd - 1 - shift;
            if (a1 < 0) return BlockKind.Empty;
            a0 = Math.Max(a0, 0);
            int qb0 = a0 / blockSize, qb1 = a1 / blockSize, kb0 = kStart / blockSize, kb1 = (kEnd - 1) / blockSize;
            if (qb1 < kb0 || kb1 < qb0) return BlockKind.Empty;
            return qb0 == qb1 && kb0 == kb1 && qb0 == kb0 && qStart - shift >= 0 ? BlockKind.Full : BlockKind.Partial;
        }

        public bool DependsOnHead => false;

        public bool DependsOnBatch => false;
    }

}


// Same sorted block, and causal in the original positions (sorted query i is row qOrder[h][i], sorted key j is key
// kOrder[hk][j]). Blocks off the diagonal of the sorted orders are empty; on it the pairs are evaluated.
internal readonly struct SortedBlockCausalMask(int blockSize, int shift, int[][] qOrder, int[][] kOrder, int group) : IMaskMod<SortedBlockCausalMask>
{
    public bool IsVisible(int batch, int head, int q, int k)
    {
        int i = q - shift;
        return i >= 0 && i / blockSize == k / blockSize && kOrder[head / group][k] <= qOrder[head][i] + shift;
    }

    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int a1 = qEnd - 1 - shift;
        if (a1 < 0) return BlockKind.Empty;
        int a0 = Math.Max(qStart - shift, 0);
        int qb0 = a0 / blockSize, qb1 = a1 / blockSize, kb0 = kStart / blockSize, kb1 = (kEnd - 1) / blockSize;
        return qb1 < kb0 || kb1 < qb0 ? BlockKind.Empty : BlockKind.Partial;
    }

    public bool DependsOnHead => true;

    public bool DependsOnBatch => false;
}

/// <summary>
/// Which pairs an LSH approximation (HyperAttention, Scatterbrain) computed exactly: the causal leaves of HyperAttention's recursion and, in each non-causal part,
/// the pairs whose query and key fall in the same block of their sorted orders (sampled pairs are not counted as
/// covered: they are estimates). Density counts exact and sampled pairs (Scatterbrain: exact pairs only; its low-rank part touches every key through r features).
/// </summary>
public sealed class LshCoverage : IPairCoverage
{
    private readonly int _heads, _group, _tokens;
    private readonly List<(int Batch, int A, int N, bool Causal)> _leaves = [];
    private readonly List<(int Batch, int Qa, int Nq, int Ka, int Nk, int[][] QBlock, int[][] KBlock, bool Causal)> _nodes = [];
    private long _computed;

    internal LshCoverage(int batch, int heads, int kvHeads, int tokens)
    {
        Batch = batch;
        _heads = heads;
        _group = heads / kvHeads;
        _tokens = tokens;
    }

    /// <summary>Batch entries.</summary>
    public int Batch { get; }

    internal void AddCausalLeaf(int batch, int a, int n)
    {
        _leaves.Add((batch, a, n, true));
        _computed += (long)n * (n + 1) / 2 * _heads;
    }

    internal void AddFullLeaf(int batch, int n)
    {
        _leaves.Add((batch, 0, n, false));
        _computed += (long)n * _tokens * _heads;
    }

    internal void AddBlockNode(int batch, int qa, int nq, int ka, int nk, int[][] qBlock, int[][] kBlock, long sampledPairs, bool causal = false)
    {
        _nodes.Add((batch, qa, nq, ka, nk, qBlock, kBlock, causal));
        _computed += sampledPairs;
        int shift = nk - nq;
        for (int h = 0; h < _heads; h++)
        {
            if (causal)
            {
                // Pairs of one block with key ≤ query position: count per block as queries and keys are swept in order.
                var keysSeen = new Dictionary<int, int>();
                int next = 0;
                for (int i = 0; i < nq; i++)
                {
                    for (; next < nk && next <= i + shift; next++)
                        keysSeen[kBlock[h / _group][next]] = keysSeen.GetValueOrDefault(kBlock[h / _group][next]) + 1;
                    _computed += keysSeen.GetValueOrDefault(qBlock[h][i]);
                }
                continue;
            }
            var keysPerBlock = new Dictionary<int, int>();
            foreach (int b in kBlock[h / _group]) keysPerBlock[b] = keysPerBlock.GetValueOrDefault(b) + 1;
            foreach (int b in qBlock[h]) _computed += keysPerBlock.GetValueOrDefault(b);
        }
    }

    /// <summary>Exact (and, for HyperAttention, sampled) pairs counted so far.</summary>
    internal long ComputedPairs => _computed;

    /// <summary>Key tokens per batch entry.</summary>
    internal int Tokens => _tokens;

    /// <summary>Visible pairs of <paramref name="queryTokens"/> queries per batch entry, over all heads and entries.</summary>
    internal long VisiblePairs(int queryTokens, bool causal)
    {
        long visible = 0;
        for (int i = 0; i < queryTokens; i++) visible += causal ? Math.Clamp(i + _tokens - queryTokens + 1, 0, _tokens) : _tokens;
        return visible * _heads * Batch;
    }

    /// <summary>Exact plus sampled pairs over the visible pairs of the mask (causal or full).</summary>
    public double Density(bool causal)
    {
        long visible = causal ? (long)_tokens * (_tokens + 1) / 2 : (long)_tokens * _tokens;
        visible *= (long)_heads * Batch;
        return visible == 0 ? 1 : (double)_computed / visible;
    }

    /// <summary>Exact pairs over the visible pairs of <paramref name="queryTokens"/> queries (causal: bottom-right aligned, or full).</summary>
    public double ExactDensity(int queryTokens, bool causal)
    {
        long visible = 0;
        for (int i = 0; i < queryTokens; i++) visible += causal ? Math.Clamp(i + _tokens - queryTokens + 1, 0, _tokens) : _tokens;
        visible *= (long)_heads * Batch;
        return visible == 0 ? 1 : (double)_computed / visible;
    }

    /// <inheritdoc/>
    public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
    {
        if (covered.Length != _tokens) throw new ArgumentException($"The span has {covered.Length} entries; there are {_tokens} keys.", nameof(covered));
        covered.Clear();
        foreach ((int b, int a, int n, bool causal) in _leaves)
            if (b == batch && query >= a && query < a + n)
                for (int j = a; j < (causal ? query + 1 : _tokens); j++) covered[j] = true;
        foreach (var node in _nodes)
        {
            if (node.Batch != batch || query < node.Qa || query >= node.Qa + node.Nq) continue;
            int qb = node.QBlock[head][query - node.Qa];
            int[] kb = node.KBlock[head / _group];
            int end = node.Causal ? Math.Min(node.Nk, query - node.Qa + node.Nk - node.Nq + 1) : node.Nk;
            for (int j = 0; j < end; j++)
                if (kb[j] == qb) covered[node.Ka + j] = true;
        }
    }
}


/// <summary>
/// <see cref="LshCoverage"/> of a packed variable-length batch: each sequence was approximated on its own (as a batch of
/// one, with the same options), so its coverage is its own. <see cref="CoveredKeys"/> takes the sequence as
/// <c>batch</c> and the row within it as <c>query</c>, and marks that sequence's keys.
/// </summary>
public sealed class VarlenLshCoverage : IPairCoverage
{
    private readonly LshCoverage[] _sequences;

    internal VarlenLshCoverage(LshCoverage[] sequences) => _sequences = sequences;

    /// <summary>Number of sequences.</summary>
    public int Sequences => _sequences.Length;

    /// <summary>Exact (and sampled) pairs over the visible pairs of every sequence (causal or full).</summary>
    public double Density(bool causal)
    {
        long computed = 0, visible = 0;
        foreach (LshCoverage c in _sequences)
        {
            computed += c.ComputedPairs;
            visible += c.VisiblePairs(c.Tokens, causal);
        }
        return visible == 0 ? 1 : (double)computed / visible;
    }

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException">A sequence outside the batch.</exception>
    public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
    {
        if ((uint)batch >= (uint)_sequences.Length) throw new ArgumentOutOfRangeException(nameof(batch), batch, $"There are {_sequences.Length} sequences.");
        _sequences[batch].CoveredKeys(0, head, query, covered);
    }

    /// <summary>
    /// Runs <paramref name="runOne"/> (q, k, v, tokens, output, lse of one sequence as a batch of one) on every sequence of
    /// a packed batch (self-attention: the same offsets for queries and keys) and writes the packed output [T, H, D] and
    /// LSE [H, T].
    /// </summary>
    internal static VarlenLshCoverage Run(float[] q, float[] k, float[] v, SeqOffsets offsets, int heads, int kvHeads, int dim, float[] output, float[] lse,
        Func<float[], float[], float[], int, float[], float[], LshCoverage> runOne)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(offsets);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(lse);
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) throw new ArgumentException($"kvHeads ({kvHeads}) must divide heads ({heads}).", nameof(kvHeads));
        int total = offsets.TotalTokens, hd = heads * dim, kd = kvHeads * dim;
        if (q.LongLength != (long)total * hd) throw new ArgumentException($"q has {q.LongLength} values; the offsets' {total} tokens × H × D need {(long)total * hd}.", nameof(q));
        if (k.LongLength != (long)total * kd) throw new ArgumentException($"k has {k.LongLength} values; the offsets' {total} tokens × Hkv × D need {(long)total * kd}.", nameof(k));
        if (v.LongLength != k.LongLength) throw new ArgumentException($"v has {v.LongLength} values; k has {k.LongLength}.", nameof(v));
        if (output.LongLength != q.LongLength) throw new ArgumentException($"output has {output.LongLength} values; expected {q.LongLength}.", nameof(output));
        if (lse.LongLength != (long)heads * total) throw new ArgumentException($"lse has {lse.LongLength} values; [H, T] needs {(long)heads * total}.", nameof(lse));
        var coverages = new LshCoverage[offsets.Count];
        for (int s = 0; s < offsets.Count; s++)
        {
            int start = offsets.Start(s), n = offsets.Length(s);
            if (n == 0)
            {
                coverages[s] = new LshCoverage(1, heads, kvHeads, 0);
                continue;
            }
            var o = new float[n * hd];
            var l = new float[heads * n];
            coverages[s] = runOne(q.AsSpan(start * hd, n * hd).ToArray(), k.AsSpan(start * kd, n * kd).ToArray(),
                v.AsSpan(start * kd, n * kd).ToArray(), n, o, l);
            o.CopyTo(output.AsSpan(start * hd, n * hd));
            for (int h = 0; h < heads; h++) l.AsSpan(h * n, n).CopyTo(lse.AsSpan(h * total + start, n));
        }
        return new VarlenLshCoverage(coverages);
    }
}
