using System.Diagnostics;
using System.Numerics.Tensors;

namespace Attend.Methods.Approximation;

// HyperAttention (Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh, 2023: "HyperAttention: Long-context Attention in
// Near-Linear Time").
//
// Non-causal part (queries Q, keys K): sortLSH hashes queries and keys with the same hyperplanes and sorts each by
// bucket; attention restricted to equal blocks of the two sorted orders (block-diagonal after sorting) finds the heavy
// entries and is computed exactly on the block-sparse kernel. The rest of each row is estimated from m keys sampled
// uniformly (with replacement): exact attention over the samples, with the pairs already in the query's block masked
// out, and its LSE raised by ln(n_k / m) (the importance weight). The two partials are joined with the LSE merge.
// Causal: the recursion of the paper — split in halves; the top-left and bottom-right quarters are causal again
// (recursively, exact below `MinSeqLen`), the bottom-left quarter is the non-causal part above, merged with the
// bottom-right by LSE.
//
// Deviations: (1) one set of hyperplanes per call shared by all heads (as the authors' code shares one per layer);
// (2) samples are drawn per KV head, shared by the query heads of a group (grouped-query layout); (3) the bottom-left
// quarter gets no further approximation of the sampled residual's normaliser beyond the uniform estimate; (4) CPU,
// float32; exact parts on the flash kernel with a "same sorted block" mask. The error is reported, not bounded: this is
// an approximation (its output is not the exact attention). Varlen (ForwardVarlen): each packed sequence is
// approximated on its own, as a batch of one with the same options (so its exact leaves, blocks and samples are those
// of that sequence alone). `Reference` is the float64 computation of this definition (same recursion, blocks and
// samples), the oracle of the tests.

/// <summary>Options of <see cref="HyperAttention"/>. Null fields take the defaults (the authors' defaults).</summary>
public sealed record HyperAttentionOptions
{
    /// <summary>Causal attention (with the recursion); default true.</summary>
    public bool? Causal { get; init; }

    /// <summary>Rows per block of the sorted order; a multiple of 64, default 256.</summary>
    public int? BlockSize { get; init; }

    /// <summary>Keys sampled for the residual; ≥ 1, default 256. A quarter with no more keys than this takes each of its keys once (exact residual).</summary>
    public int? SampleSize { get; init; }

    /// <summary>Hyperplanes of the sortLSH; in [1, 20], default 7.</summary>
    public int? HashBits { get; init; }

    /// <summary>Length at or below which attention is computed exactly; ≥ 1, default 4096.</summary>
    public int? MinSeqLen { get; init; }

    /// <summary>Seed of the hyperplanes and samples; default 0.</summary>
    public int? Seed { get; init; }

    /// <summary>Score scale; default 1/√D.</summary>
    public float? Scale { get; init; }

    /// <summary>Worker threads of the kernels; default all cores.</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>HyperAttention: sortLSH heavy entries exactly plus sampled residual, joined by LSE; causal recursion.</summary>
public static class HyperAttention
{
    /// <summary>The paper.</summary>
    public const string Paper = "HyperAttention: Long-context Attention in Near-Linear Time (Han et al., 2023)";

    /// <summary>
    /// Approximate attention of dense [B, T, H, D] float32 inputs (Tq = Tk) into <paramref name="output"/> [B, T, H, D]
    /// and <paramref name="lse"/> [B, H, T]. Returns which pairs were computed exactly.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that disagree, or a bad option (named).</exception>
    public static LshCoverage Forward(float[] q, float[] k, float[] v, int batch, int tokens, int heads, int kvHeads, int dim,
        HyperAttentionOptions options, float[] output, float[] lse)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(lse);
        var p = new Settings(options, dim);
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) throw new ArgumentException($"kvHeads ({kvHeads}) must divide heads ({heads}).", nameof(kvHeads));
        long nq = (long)batch * tokens * heads * dim, nk = (long)batch * tokens * kvHeads * dim;
        if (q.LongLength != nq) throw new ArgumentException($"q has {q.LongLength} values; [B, T, H, D] needs {nq}.", nameof(q));
        if (k.LongLength != nk) throw new ArgumentException($"k has {k.LongLength} values; [B, T, Hkv, D] needs {nk}.", nameof(k));
        if (v.LongLength != nk) throw new ArgumentException($"v has {v.LongLength} values; [B, T, Hkv, D] needs {nk}.", nameof(v));
        if (output.LongLength != nq) throw new ArgumentException($"output has {output.LongLength} values; expected {nq}.", nameof(output));
        if (lse.LongLength != (long)batch * heads * tokens) throw new ArgumentException($"lse has {lse.LongLength} values; expected {(long)batch * heads * tokens}.", nameof(lse));
        var coverage = new LshCoverage(batch, heads, kvHeads, tokens);
        for (int b = 0; b < batch; b++)
        {
            var problem = new Problem(p, coverage, b,
                q.AsSpan((int)((long)b * tokens * heads * dim), tokens * heads * dim).ToArray(),
                k.AsSpan((int)((long)b * tokens * kvHeads * dim), tokens * kvHeads * dim).ToArray(),
                v.AsSpan((int)((long)b * tokens * kvHeads * dim), tokens * kvHeads * dim).ToArray(), heads, kvHeads);
            var o = new float[tokens * heads * dim];
            var l = new float[heads * tokens];
            if (p.Causal) problem.Causal(0, tokens, o, l);
            else problem.Full(o, l);
            o.CopyTo(output.AsSpan((int)((long)b * tokens * heads * dim)));
            l.CopyTo(lse.AsSpan(b * heads * tokens));
        }
        return coverage;
    }

    /// <summary>
    /// Approximate attention of a packed variable-length batch (self-attention): q [T, H, D], k and v [T, Hkv, D], the
    /// sequences delimited by <paramref name="offsets"/>, into <paramref name="output"/> [T, H, D] and
    /// <paramref name="lse"/> [H, T]. Each sequence is approximated on its own, exactly as a batch of one with the same
    /// options (same hyperplanes and samples), so no sequence sees another's keys.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that disagree with the offsets, or a bad option (named).</exception>
    public static VarlenLshCoverage ForwardVarlen(float[] q, float[] k, float[] v, SeqOffsets offsets, int heads, int kvHeads, int dim,
        HyperAttentionOptions options, float[] output, float[] lse)
    {
        ArgumentNullException.ThrowIfNull(options);
        _ = new Settings(options, dim); // bad options fail before any work
        return VarlenLshCoverage.Run(q, k, v, offsets, heads, kvHeads, dim, output, lse,
            (qs, ks, vs, n, o, l) => Forward(qs, ks, vs, 1, n, heads, kvHeads, dim, options, o, l));
    }

    /// <summary>
    /// The float64 definition of the method, the oracle of its tests. It walks the same recursion (same halves, same
    /// sortLSH blocks, same samples: the generator is seeded per node exactly as in <see cref="Forward"/> (by <see cref="SampleSeed"/>,
    /// the same in every process) and, for each query row, lists what every part contributes: each key of an exact leaf and of
    /// the query's sorted block with weight exp(scale·q·k), each sampled key outside that block with weight
    /// exp(scale·q·k)·n_k/m (a key sampled twice counts twice). The output is the weighted mean of the values and the LSE
    /// the log of the weights' sum: the LSE merges of <see cref="Forward"/> are exactly this sum. Small shapes only.
    /// </summary>
    internal static (double[] Output, double[] Lse) Reference(float[] q, float[] k, float[] v, int batch, int tokens, int heads, int kvHeads,
        int dim, HyperAttentionOptions options)
    {
        var p = new Settings(options, dim);
        int hd = heads * dim, kd = kvHeads * dim, g = heads / kvHeads, t = tokens;
        var output = new double[(long)batch * t * hd];
        var lse = new double[(long)batch * heads * t];
        for (int b = 0; b < batch; b++)
        {
            float[] qs = q.AsSpan(b * t * hd, t * hd).ToArray(), ks = k.AsSpan(b * t * kd, t * kd).ToArray(), vs = v.AsSpan(b * t * kd, t * kd).ToArray();
            var parts = new List<(int Key, double LogFactor)>[heads * t];
            for (int i = 0; i < parts.Length; i++) parts[i] = [];
            int nodes = 0;
            void Add(int h, int row, int key, double logFactor) => parts[h * t + row].Add((key, logFactor));
            void NonCausal(int qa, int nq, int ka, int nk)
            {
                var qBlock = new int[heads][];
                var kBlock = new int[kvHeads][];
                for (int h = 0; h < heads; h++)
                {
                    int[] order = p.Lsh.SortOrder(qs.AsSpan(qa * hd + h * dim, nq * hd - h * dim), nq, hd);
                    qBlock[h] = new int[nq];
                    for (int i = 0; i < nq; i++) qBlock[h][order[i]] = i / p.BlockSize;
                }
                for (int hk = 0; hk < kvHeads; hk++)
                {
                    int[] order = p.Lsh.SortOrder(ks.AsSpan(ka * kd + hk * dim, nk * kd - hk * dim), nk, kd);
                    kBlock[hk] = new int[nk];
                    for (int j = 0; j < nk; j++) kBlock[hk][order[j]] = j / p.BlockSize;
                }
                int m = Math.Min(p.SampleSize, nk); // as the fast form: never more samples than keys
                var rng = new Random(SampleSeed.Of(p.Seed, b, qa, ka, nodes++));
                var sampled = new int[kvHeads][];
                for (int hk = 0; hk < kvHeads; hk++)
                {
                    sampled[hk] = new int[m];
                    for (int j = 0; j < m; j++) sampled[hk][j] = m == nk ? j : rng.Next(nk);
                }
                double weight = MathF.Log((float)nk / m);
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < nq; i++)
                    {
                        int hk = h / g;
                        for (int j = 0; j < nk; j++)
                            if (kBlock[hk][j] == qBlock[h][i]) Add(h, qa + i, ka + j, 0);
                        foreach (int j in sampled[hk])
                            if (kBlock[hk][j] != qBlock[h][i]) Add(h, qa + i, ka + j, weight);
                    }
            }
            void Causal(int a, int n)
            {
                if (n <= p.MinSeqLen)
                {
                    for (int h = 0; h < heads; h++)
                        for (int i = 0; i < n; i++)
                            for (int j = 0; j <= i; j++) Add(h, a + i, a + j, 0);
                    return;
                }
                int top = n / 2;
                Causal(a, top);
                Causal(a + top, n - top);
                NonCausal(a + top, n - top, a, top);
            }
            if (p.Causal) Causal(0, t);
            else if (t <= p.MinSeqLen)
            {
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < t; i++)
                        for (int j = 0; j < t; j++) Add(h, i, j, 0);
            }
            else NonCausal(0, t, 0, t);

            for (int h = 0; h < heads; h++)
                for (int i = 0; i < t; i++)
                {
                    List<(int Key, double LogFactor)> list = parts[h * t + i];
                    long outAt = ((long)b * t + i) * hd + h * dim, lseAt = ((long)b * heads + h) * t + i;
                    if (list.Count == 0)
                    {
                        lse[lseAt] = double.NegativeInfinity;
                        continue;
                    }
                    var logWeight = new double[list.Count];
                    double max = double.NegativeInfinity;
                    for (int c = 0; c < list.Count; c++)
                    {
                        double dot = 0;
                        for (int x = 0; x < dim; x++) dot += (double)qs[i * hd + h * dim + x] * ks[list[c].Key * kd + (h / g) * dim + x];
                        logWeight[c] = p.Scale * dot + list[c].LogFactor;
                        max = Math.Max(max, logWeight[c]);
                    }
                    double sum = 0;
                    for (int c = 0; c < list.Count; c++)
                    {
                        double e = Math.Exp(logWeight[c] - max);
                        sum += e;
                        for (int x = 0; x < dim; x++) output[outAt + x] += e * vs[list[c].Key * kd + (h / g) * dim + x];
                    }
                    for (int x = 0; x < dim; x++) output[outAt + x] /= sum;
                    lse[lseAt] = max + Math.Log(sum);
                }
        }
        return (output, lse);
    }

    internal sealed class Settings
    {
        public readonly bool Causal;
        public readonly int BlockSize, SampleSize, MinSeqLen, Seed, Threads;
        public readonly float Scale;
        public readonly SortLsh Lsh;

        public Settings(HyperAttentionOptions o, int dim)
        {
            Causal = o.Causal ?? true;
            BlockSize = o.BlockSize ?? 256;
            SampleSize = o.SampleSize ?? 256;
            MinSeqLen = o.MinSeqLen ?? 4096;
            Seed = o.Seed ?? 0;
            int bits = o.HashBits ?? 7;
            if (BlockSize < 64 || BlockSize % 64 != 0) throw new ArgumentOutOfRangeException(nameof(o.BlockSize), BlockSize, "BlockSize must be a positive multiple of 64.");
            if (SampleSize < 1) throw new ArgumentOutOfRangeException(nameof(o.SampleSize), SampleSize, "SampleSize must be ≥ 1.");
            if (MinSeqLen < 1) throw new ArgumentOutOfRangeException(nameof(o.MinSeqLen), MinSeqLen, "MinSeqLen must be ≥ 1.");
            if (bits < 1 || bits > 20) throw new ArgumentOutOfRangeException(nameof(o.HashBits), bits, "HashBits must be in [1, 20].");
            if (o.Scale is float s && !float.IsFinite(s)) throw new ArgumentOutOfRangeException(nameof(o.Scale), s, "Scale must be finite.");
            Scale = o.Scale ?? 1f / MathF.Sqrt(dim);
            Threads = o.MaxThreads ?? Environment.ProcessorCount;
            Lsh = new SortLsh(bits, dim, Seed);
        }
    }

    // One sequence: Q [T][H][D], K, V [T][Hkv][D].
    private sealed class Problem(Settings p, LshCoverage coverage, int batch, float[] q, float[] k, float[] v, int heads, int kvHeads)
    {
        private readonly int _d = p.Lsh.Dim;
        private int _nodes;

        public void Full(float[] o, float[] lse)
        {
            int t = q.Length / (heads * _d);
            if (t <= p.MinSeqLen)
            {
                Exact(0, t, 0, t, null, o, lse);
                coverage.AddFullLeaf(batch, t);
            }
            else NonCausal(0, t, 0, t, o, lse);
        }

        // Rows [a, a + n) attend causally to keys [a, a + n); o [n][H][D], lse [H][n].
        public void Causal(int a, int n, float[] o, float[] lse)
        {
            if (n <= p.MinSeqLen)
            {
                Exact(a, n, a, n, Masks.Causal, o, lse);
                coverage.AddCausalLeaf(batch, a, n);
                return;
            }
            int top = n / 2, bottom = n - top, hd = heads * _d;
            var oTop = new float[top * hd];
            var lTop = new float[heads * top];
            Causal(a, top, oTop, lTop);
            var oDiag = new float[bottom * hd];
            var lDiag = new float[heads * bottom];
            Causal(a + top, bottom, oDiag, lDiag);
            var oLeft = new float[bottom * hd];
            var lLeft = new float[heads * bottom];
            NonCausal(a + top, bottom, a, top, oLeft, lLeft);
            oTop.CopyTo(o, 0);
            for (int h = 0; h < heads; h++) lTop.AsSpan(h * top, top).CopyTo(lse.AsSpan(h * n, top));
            for (int i = 0; i < bottom; i++)
                for (int h = 0; h < heads; h++)
                {
                    int row = (i * heads + h) * _d;
                    Lse.Merge(oLeft.AsSpan(row, _d), lLeft[h * bottom + i], oDiag.AsSpan(row, _d), lDiag[h * bottom + i],
                        o.AsSpan((top + i) * hd + h * _d, _d), out float merged);
                    lse[h * n + top + i] = merged;
                }
        }

        // Exact attention of rows [qa, qa + nq) to keys [ka, ka + nk) with an optional mask.
        private void Exact(int qa, int nq, int ka, int nk, IMaskMod? mask, float[] o, float[] lse)
        {
            int hd = heads * _d, kd = kvHeads * _d;
            Attention.Forward<float>(
                AttentionLayout.Bthd<float>(q.AsSpan(qa * hd, nq * hd), 1, nq, heads, _d),
                AttentionLayout.Bthd<float>(k.AsSpan(ka * kd, nk * kd), 1, nk, kvHeads, _d),
                AttentionLayout.Bthd<float>(v.AsSpan(ka * kd, nk * kd), 1, nk, kvHeads, _d),
                new AttentionOptions { Mask = mask, Scale = p.Scale, MaxThreads = p.Threads },
                AttentionLayout.Bthd<float>(o, 1, nq, heads, _d), AttentionLayout.Lse(lse, 1, heads, nq));
        }

        // The (query, sample) pairs the residual uses: samples in the query's own sorted block are masked out (that block
        // is computed exactly), so they are not counted; a key sampled twice counts twice. With every key taken once
        // this is exactly the pairs outside the blocks, so the node never counts more than its nq · nk pairs.
        private static long SampledPairsOutsideBlocks(int[][] qBlock, int[][] sampleBlock, int group, int nk)
        {
            long pairs = 0;
            var perBlock = new int[nk + 1];
            for (int h = 0; h < qBlock.Length; h++)
            {
                int[] samples = sampleBlock[h / group];
                if (h % group == 0)
                {
                    Array.Clear(perBlock);
                    foreach (int block in samples) perBlock[block]++;
                }
                foreach (int block in qBlock[h]) pairs += samples.Length - (block < perBlock.Length ? perBlock[block] : 0);
            }
            return pairs;
        }

        // Rows [qa, qa + nq) against every key of [ka, ka + nk): sorted blocks exactly, plus the sampled residual.
        private void NonCausal(int qa, int nq, int ka, int nk, float[] o, float[] lse)
        {
            int hd = heads * _d, kd = kvHeads * _d, g = heads / kvHeads;
            (float[] ob, float[] lb, int[][] qBlock, int[][] kBlock) = SortedBlockAttention.Run(q.AsSpan(qa * hd, nq * hd), k.AsSpan(ka * kd, nk * kd),
                v.AsSpan(ka * kd, nk * kd), nq, nk, heads, kvHeads, p.Lsh, p.BlockSize, p.Scale, p.Threads);

            // The residual: m uniform samples of the keys (per KV head), pairs of the query's own block masked out.
            // Never more samples than the quarter has keys: with m ≥ nk every key is taken once (the residual is then exact,
            // weight ln(nk/m) = 0), and the computed pairs (the density the bench reports) stay within the quarter's own.
            int m = Math.Min(p.SampleSize, nk);
            var rng = new Random(SampleSeed.Of(p.Seed, batch, qa, ka, _nodes++));
            var sampleBlock = new int[kvHeads][];
            var kr = new float[m * kd];
            var vr = new float[m * kd];
            for (int hk = 0; hk < kvHeads; hk++)
            {
                sampleBlock[hk] = new int[m];
                for (int j = 0; j < m; j++)
                {
                    int key = m == nk ? j : rng.Next(nk); // as many samples as keys: every key once (the residual exactly)
                    sampleBlock[hk][j] = kBlock[hk][key];
                    k.AsSpan((ka + key) * kd + hk * _d, _d).CopyTo(kr.AsSpan(j * kd + hk * _d, _d));
                    v.AsSpan((ka + key) * kd + hk * _d, _d).CopyTo(vr.AsSpan(j * kd + hk * _d, _d));
                }
            }
            var orr = new float[nq * hd];
            var lr = new float[heads * nq];
            Attention.Forward<float>(AttentionLayout.Bthd<float>(q.AsSpan(qa * hd, nq * hd), 1, nq, heads, _d),
                AttentionLayout.Bthd<float>(kr, 1, m, kvHeads, _d), AttentionLayout.Bthd<float>(vr, 1, m, kvHeads, _d),
                new AttentionOptions { Mask = new SampleExclusionMask(qBlock, sampleBlock, g, m - nq), Scale = p.Scale, MaxThreads = p.Threads },
                AttentionLayout.Bthd<float>(orr, 1, nq, heads, _d), AttentionLayout.Lse(lr, 1, heads, nq));
            float weight = MathF.Log((float)nk / m);

            // Merge the block part with the weighted residual.
            for (int h = 0; h < heads; h++)
                for (int row = 0; row < nq; row++)
                {
                    float lres = lr[h * nq + row];
                    if (!float.IsNegativeInfinity(lres)) lres += weight;
                    Lse.Merge(ob.AsSpan(row * hd + h * _d, _d), lb[h * nq + row], orr.AsSpan(row * hd + h * _d, _d), lres,
                        o.AsSpan(row * hd + h * _d, _d), out float merged);
                    lse[h * nq + row] = merged;
                }
            coverage.AddBlockNode(batch, qa, nq, ka, nk, qBlock, kBlock, SampledPairsOutsideBlocks(qBlock, sampleBlock, g, nk));
        }
    }

    // Sampled keys outside the query's sorted block.
    private readonly struct SampleExclusionMask(int[][] queryBlock, int[][] sampleBlock, int group, int shift) : IMaskMod<SampleExclusionMask>
    {
        public bool IsVisible(int batch, int head, int q, int k)
        {
            int row = q - shift;
            return row >= 0 && queryBlock[head][row] != sampleBlock[head / group][k];
        }

        public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) => BlockKind.Partial;

        public bool DependsOnHead => true;

        public bool DependsOnBatch => false;
    }
}

/// <summary><c>attend run --method hyperattention</c>.</summary>
public sealed class HyperAttentionMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "hyperattention";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "approximation", "method", HyperAttention.Paper, ["cpu", "cuda"], "implemented",
        "sortLSH block-diagonal exact part + uniformly sampled residual, joined by LSE; causal recursion; approximate")
    {
        Parameters =
        [
            new MethodParameter("causal", "bool", "true", "causal (recursive halves) or full attention"),
            new MethodParameter("block", "int", "256", "rows per sorted block (multiple of 64)"),
            new MethodParameter("samples", "int", "256", "keys sampled for the residual"),
            new MethodParameter("bits", "int", "7", "sortLSH hyperplanes"),
            new MethodParameter("min_seq_len", "int", "4096", "length at or below which attention is exact"),
            new MethodParameter("seed", "int", "0", "seed of hyperplanes and samples"),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        MethodTensor q = inputs.Q, k = inputs.K;
        int b = q.Dim(0), t = q.Dim(1), h = q.Dim(2), d = q.Dim(3), hkv = k.Dim(2);
        if (k.Dim(1) != t) throw new ArgumentException($"hyperattention needs as many keys as queries; k has {k.Dim(1)} tokens (dimension 1), q has {t}.", "k");
        var options = new HyperAttentionOptions
        {
            Causal = arguments.GetBool("causal", true),
            BlockSize = arguments.GetInt("block", 256, min: 64),
            SampleSize = arguments.GetInt("samples", 256, min: 1),
            HashBits = arguments.GetInt("bits", 7, min: 1, max: 20),
            MinSeqLen = arguments.GetInt("min_seq_len", 4096, min: 1),
            Seed = arguments.GetInt("seed", 0),
            Scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null,
        };
        if (options.BlockSize % 64 != 0) throw new ArgumentException($"Parameter 'block' must be a multiple of 64; got {options.BlockSize}.", "block");
        arguments.ThrowIfUnused(Name);
        var o = new float[(long)b * t * h * d];
        var lse = new float[(long)b * h * t];
        var watch = Stopwatch.StartNew();
        MethodResult result;
        if (inputs.Offsets is SeqOffsets offsets)
        {
            // Varlen: each packed sequence on its own (b is 1, t the packed total).
            if (b != 1) throw new ArgumentException($"With offsets (varlen) q holds the packed sequences as a batch of one; it has {b} (dimension 0).", "q");
            if (offsets.TotalTokens != t) throw new ArgumentException($"The offsets cover {offsets.TotalTokens} tokens but q has {t} (dimension 1).", "q");
            VarlenLshCoverage packed = HyperAttention.ForwardVarlen(q.Data, k.Data, inputs.V.Data, offsets, h, hkv, d, options, o, lse);
            result = new MethodResult(new MethodTensor(o, b, t, h, d)) { Density = packed.Density(options.Causal ?? true), Coverage = packed };
        }
        else
        {
            LshCoverage coverage = HyperAttention.Forward(q.Data, k.Data, inputs.V.Data, b, t, h, hkv, d, options, o, lse);
            result = new MethodResult(new MethodTensor(o, b, t, h, d)) { Density = coverage.Density(options.Causal ?? true), Coverage = coverage };
        }
        result.Extras["lse"] = new MethodTensor(lse, b, h, t);
        result.Report.Add(new("total_ms", watch.Elapsed.TotalMilliseconds.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }
}
