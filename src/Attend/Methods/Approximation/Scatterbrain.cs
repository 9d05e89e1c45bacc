using System.Diagnostics;
using System.Numerics.Tensors;
using Attend.Methods.Sparse.Dynamic;

namespace Attend.Methods.Approximation;

// Scatterbrain (Chen, Dao, Winsor, Song, Rudra, Ré, 2021: "Scatterbrain: Unifying Sparse and Low-rank Attention
// Approximation").
//
// The attention matrix is approximated as sparse + low-rank, A ≈ S + φ(Q)φ(K)ᵀ, with the overlap removed: on the sparse
// support S holds exp(s) − φ(q)·φ(k), so the support gets its exact value and every other pair the low-rank estimate.
// The low rank is Performer's positive random features, φ(x) = exp(Wx − ‖x‖²/2)/√r with x = √scale·q (E[φ(x)·φ(y)] =
// exp(scale·q·k)); the support is an LSH one (queries and keys in the same block of their sortLSH orders).
// Summed per row, the support part is an exact partial (output and LSE from the block-sparse kernel), and the low-rank
// part over the complement is φ(q)·Σ_{k∉support} φ(k)vᵀ / φ(q)·Σ_{k∉support} φ(k) with log-normaliser
// ln φ(q)·Σ_{k∉support} φ(k): a second partial, and the two are joined with the LSE merge. Removing the overlap is then
// exactly "low rank on the complement" (block sums of φ(k)vᵀ subtracted from the total).
//
// Causal: the support keeps only pairs whose original key position is at or before the query's, and the low-rank sums
// are prefix sums (queries swept in order, each key added once), in total and per sorted block.
//
// Deviations: (1) the sparse support is sortLSH blocks (HyperAttention's), where the paper uses Reformer-style LSH
// buckets (or a local window); (2) plain Gaussian features (the paper's FAVOR+ uses orthogonal ones); features are
// stabilised per query row and per KV head (the shifts come back in the log-normaliser); (3) CPU, float32, the
// low-rank part in plain vector loops (not the tile product). An approximation: its error is reported, not bounded.
// Varlen (ForwardVarlen): each packed sequence is approximated on its own, as a batch of one with the same options.
//
// Its error on untrained Gaussian inputs is large, and that is the estimator, not the code. `Reference` below is the
// float64 computation of this definition (same support, same W), and the float32 path equals it to 2e-4 (tests; a 5%
// change of the low-rank weights fails them), so the overlap removal and the feature sums are as specified. The
// positive random features are unbiased but their variance grows as e^{‖x+y‖²}/r (Choromanski et al., FAVOR+): with
// x = q·D^{-1/4} and unit Gaussian q at D = 128, ‖x‖² ≈ √D ≈ 11, so a single feature term dominates each row's low-rank
// sum and the output is close to one random value row. Measured (random workload, T = 2048, D = 128, causal): rel_err
// 3.2 / 3.0 / 3.0 / 3.3 at r = 16 / 64 / 256 / 1024, flat in r; the same inputs scaled by 0.5 (‖x‖² ≈ 2.8) give
// 1.16 / 0.81 / 0.60 / 0.39 and scaled by 0.25 (‖x‖² ≈ 0.7) 0.28 / 0.15 / 0.08 / 0.04, the 1/√r fall of a working
// estimator. In the paper the features sit inside trained models (and the sparse part is a local window or LSH
// buckets), where the norms are what training made them; on these synthetic inputs the low rank adds noise.

/// <summary>Options of <see cref="Scatterbrain"/>. Null fields take the defaults.</summary>
public sealed record ScatterbrainOptions
{
    /// <summary>Causal attention (bottom-right aligned); default true.</summary>
    public bool? Causal { get; init; }

    /// <summary>Random features r ≥ 1; default 64.</summary>
    public int? Features { get; init; }

    /// <summary>Rows per sorted block of the sparse support (multiple of 64); default 128.</summary>
    public int? BlockSize { get; init; }

    /// <summary>Hyperplanes of the sortLSH, in [1, 20]; default 7.</summary>
    public int? HashBits { get; init; }

    /// <summary>Seed of hyperplanes and features; default 0.</summary>
    public int? Seed { get; init; }

    /// <summary>Score scale; default 1/√D.</summary>
    public float? Scale { get; init; }

    /// <summary>Worker threads of the kernel; default all cores.</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>Scatterbrain: sortLSH sparse exact part + Performer low rank on the complement, joined by LSE (non-causal).</summary>
public static class Scatterbrain
{
    /// <summary>The paper.</summary>
    public const string Paper = "Scatterbrain: Unifying Sparse and Low-rank Attention Approximation (Chen et al., 2021)";

    // Options are checked before any work (the varlen entry would otherwise write earlier sequences first).
    private static void CheckOptions(ScatterbrainOptions options)
    {
        int r = options.Features ?? 64, bs = options.BlockSize ?? 128, bits = options.HashBits ?? 7;
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(options.Features), r, "Features must be ≥ 1.");
        if (bs < 64 || bs % 64 != 0) throw new ArgumentOutOfRangeException(nameof(options.BlockSize), bs, "BlockSize must be a positive multiple of 64.");
        if (bits < 1 || bits > 20) throw new ArgumentOutOfRangeException(nameof(options.HashBits), bits, "HashBits must be in [1, 20].");
    }

    /// <summary>
    /// Approximate causal (or, with <see cref="ScatterbrainOptions.Causal"/> false, full) attention of dense [B, Tq, H, D] queries against [B, Tk, Hkv, D] keys and values
    /// into <paramref name="output"/> [B, Tq, H, D] and <paramref name="lse"/> [B, H, Tq]; returns the exact support.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that disagree, or a bad option (named).</exception>
    public static LshCoverage Forward(float[] q, float[] k, float[] v, int batch, int queryTokens, int keyTokens, int heads, int kvHeads, int dim,
        ScatterbrainOptions options, float[] output, float[] lse)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(lse);
        CheckOptions(options);
        int r = options.Features ?? 64, bs = options.BlockSize ?? 128, bits = options.HashBits ?? 7, seed = options.Seed ?? 0;
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) throw new ArgumentException($"kvHeads ({kvHeads}) must divide heads ({heads}).", nameof(kvHeads));
        int nq = queryTokens, nk = keyTokens, hd = heads * dim, kd = kvHeads * dim, g = heads / kvHeads;
        if (q.LongLength != (long)batch * nq * hd) throw new ArgumentException($"q has {q.LongLength} values; [B, Tq, H, D] needs {(long)batch * nq * hd}.", nameof(q));
        if (k.LongLength != (long)batch * nk * kd) throw new ArgumentException($"k has {k.LongLength} values; [B, Tk, Hkv, D] needs {(long)batch * nk * kd}.", nameof(k));
        if (v.LongLength != k.LongLength) throw new ArgumentException($"v has {v.LongLength} values; k has {k.LongLength}.", nameof(v));
        if (output.LongLength != q.LongLength) throw new ArgumentException($"output has {output.LongLength} values; expected {q.LongLength}.", nameof(output));
        if (lse.LongLength != (long)batch * heads * nq) throw new ArgumentException($"lse has {lse.LongLength} values; expected {(long)batch * heads * nq}.", nameof(lse));
        float scale = options.Scale ?? 1f / MathF.Sqrt(dim);
        var lsh = new SortLsh(bits, dim, seed);
        float[] w = Gaussian(r * dim, seed + 1);
        var coverage = new LshCoverage(batch, heads, kvHeads, nk);
        bool causal = options.Causal ?? true;
        int shift = nk - nq;
        for (int b = 0; b < batch; b++)
        {
            ReadOnlySpan<float> qb = q.AsSpan(b * nq * hd, nq * hd), kb = k.AsSpan(b * nk * kd, nk * kd), vb = v.AsSpan(b * nk * kd, nk * kd);
            (float[] os, float[] ls, int[][] qBlock, int[][] kBlock) = SortedBlockAttention.Run(qb, kb, vb, nq, nk, heads, kvHeads, lsh, bs, scale,
                options.MaxThreads ?? Environment.ProcessorCount, causal);
            coverage.AddBlockNode(b, 0, nq, 0, nk, qBlock, kBlock, 0, causal);
            int blocks = (Math.Max(nq, nk) + bs - 1) / bs;
            float root = MathF.Sqrt(scale); // x = √scale·q, y = √scale·k: x·y = scale·q·k
            for (int hk = 0; hk < kvHeads; hk++)
            {
                float[] phiK = Features(Head(kb, nk, kvHeads, hk, dim, root), nk, w, r, dim, perRow: false, out float[] keyShifts);
                float keyShift = nk > 0 ? keyShifts[0] : 0;
                var phiQ = new float[g][];
                var queryShift = new float[g][];
                for (int gi = 0; gi < g; gi++) phiQ[gi] = Features(Head(qb, nq, heads, hk * g + gi, dim, root), nq, w, r, dim, perRow: true, out queryShift[gi]);
                // Running sums of φ(k)vᵀ and φ(k), in total and per sorted block of the keys, over the keys a query sees:
                // all of them (non-causal), or those at or before its position (causal: queries are swept in order).
                var total = new float[r * dim];
                var totalZ = new double[r];
                var blockKv = new float[blocks * r * dim];
                var blockZ = new double[blocks * r];
                int added = 0;
                var num = new float[dim];
                var diff = new float[dim];
                for (int i = 0; i < nq; i++)
                {
                    int limit = causal ? Math.Min(nk, i + shift + 1) : nk;
                    for (; added < limit; added++)
                    {
                        ReadOnlySpan<float> vj = vb.Slice(added * kd + hk * dim, dim);
                        int blk = kBlock[hk][added];
                        for (int f = 0; f < r; f++)
                        {
                            float phi = phiK[added * r + f];
                            TensorPrimitives.MultiplyAdd(vj, phi, total.AsSpan(f * dim, dim), total.AsSpan(f * dim, dim));
                            TensorPrimitives.MultiplyAdd(vj, phi, blockKv.AsSpan((blk * r + f) * dim, dim), blockKv.AsSpan((blk * r + f) * dim, dim));
                            totalZ[f] += phi;
                            blockZ[blk * r + f] += phi;
                        }
                    }
                    for (int gi = 0; gi < g; gi++)
                    {
                        int h = hk * g + gi, blk = qBlock[h][i];
                        num.AsSpan().Clear();
                        double den = 0;
                        for (int f = 0; f < r; f++)
                        {
                            float phi = phiQ[gi][i * r + f];
                            if (phi == 0) continue;
                            // Low rank over the keys outside the query's block (the overlap with the sparse part removed).
                            TensorPrimitives.Subtract(total.AsSpan(f * dim, dim), blockKv.AsSpan((blk * r + f) * dim, dim), diff);
                            TensorPrimitives.MultiplyAdd(diff, phi, num, num);
                            den += phi * (totalZ[f] - blockZ[blk * r + f]);
                        }
                        Span<float> row = output.AsSpan((int)(((long)b * nq + i) * hd + h * dim), dim);
                        float lowLse = den > 0 ? (float)(Math.Log(den) + queryShift[gi][i] + keyShift) : float.NegativeInfinity;
                        if (den > 0) TensorPrimitives.Multiply(num, (float)(1 / den), num);
                        else num.AsSpan().Clear();
                        Lse.Merge(os.AsSpan(i * hd + h * dim, dim), ls[h * nq + i], num, lowLse, row, out float merged);
                        lse[((b * heads) + h) * nq + i] = merged;
                    }
                }
            }
        }
        return coverage;
    }

    /// <summary>
    /// Approximate attention of a packed variable-length batch (self-attention): q [T, H, D], k and v [T, Hkv, D], the
    /// sequences delimited by <paramref name="offsets"/>, into <paramref name="output"/> [T, H, D] and
    /// <paramref name="lse"/> [H, T]. Each sequence is approximated on its own, exactly as a batch of one with the same
    /// options (same hyperplanes and features): no sequence's keys enter another's sparse or low-rank part.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that disagree with the offsets, or a bad option (named).</exception>
    public static VarlenLshCoverage ForwardVarlen(float[] q, float[] k, float[] v, SeqOffsets offsets, int heads, int kvHeads, int dim,
        ScatterbrainOptions options, float[] output, float[] lse)
    {
        ArgumentNullException.ThrowIfNull(options);
        CheckOptions(options); // bad options fail before the first sequence is written
        return VarlenLshCoverage.Run(q, k, v, offsets, heads, kvHeads, dim, output, lse,
            (qs, ks, vs, n, o, l) => Forward(qs, ks, vs, 1, n, n, heads, kvHeads, dim, options, o, l));
    }

    /// <summary>
    /// The float64 definition of the method, the oracle of its tests: for query row i (position p) of head h, with the
    /// same support (equal blocks of the two sortLSH orders, keys ≤ p when causal) and the same random features W, each
    /// visible key j gets weight exp(scale·q·k) on the support and φ(x)·φ(y) = (1/r)·Σ_f exp(w_f·x − ‖x‖²/2 + w_f·y −
    /// ‖y‖²/2) (x = √scale·q, y = √scale·k) off it; the output is the weighted mean of the values and the LSE the log of
    /// the weights' sum (computed in log space, so no stabilising shift is needed). Rows that see no key give 0 and −∞.
    /// O(Tq·Tk·r) per head: small shapes only.
    /// </summary>
    internal static (double[] Output, double[] Lse) Reference(float[] q, float[] k, float[] v, int batch, int queryTokens, int keyTokens,
        int heads, int kvHeads, int dim, ScatterbrainOptions options)
    {
        int r = options.Features ?? 64, bs = options.BlockSize ?? 128, bits = options.HashBits ?? 7, seed = options.Seed ?? 0;
        bool causal = options.Causal ?? true;
        double scale = options.Scale ?? 1f / MathF.Sqrt(dim);
        int nq = queryTokens, nk = keyTokens, hd = heads * dim, kd = kvHeads * dim, g = heads / kvHeads, shift = nk - nq;
        var lsh = new SortLsh(bits, dim, seed);
        float[] w = Gaussian(r * dim, seed + 1);
        var output = new double[(long)batch * nq * hd];
        var lse = new double[(long)batch * heads * nq];
        double root = Math.Sqrt(scale);
        for (int b = 0; b < batch; b++)
        {
            ReadOnlySpan<float> qb = q.AsSpan(b * nq * hd, nq * hd), kb = k.AsSpan(b * nk * kd, nk * kd), vb = v.AsSpan(b * nk * kd, nk * kd);
            for (int h = 0; h < heads; h++)
            {
                int hk = h / g;
                int[] qOrder = lsh.SortOrder(qb[(h * dim)..], nq, hd), kOrder = lsh.SortOrder(kb[(hk * dim)..], nk, kd);
                var qBlock = new int[nq];
                var kBlock = new int[nk];
                for (int i = 0; i < nq; i++) qBlock[qOrder[i]] = i / bs;
                for (int j = 0; j < nk; j++) kBlock[kOrder[j]] = j / bs;
                double[] keyFeature = LogFeatures(kb, nk, kd, hk * dim, dim, root, w, r); // [nk][r]: w_f·y − ‖y‖²/2
                double[] queryFeature = LogFeatures(qb, nq, hd, h * dim, dim, root, w, r);
                var logWeight = new double[nk];
                var terms = new double[r];
                for (int i = 0; i < nq; i++)
                {
                    int end = causal ? Math.Clamp(i + shift + 1, 0, nk) : nk;
                    long outAt = ((long)b * nq + i) * hd + h * dim;
                    long lseAt = ((long)b * heads + h) * nq + i;
                    if (end == 0)
                    {
                        lse[lseAt] = double.NegativeInfinity;
                        continue;
                    }
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < end; j++)
                    {
                        if (qBlock[i] == kBlock[j])
                        {
                            double dot = 0;
                            for (int x = 0; x < dim; x++) dot += (double)qb[i * hd + h * dim + x] * kb[j * kd + hk * dim + x];
                            logWeight[j] = scale * dot;
                        }
                        else
                        {
                            for (int f = 0; f < r; f++) terms[f] = queryFeature[(long)i * r + f] + keyFeature[(long)j * r + f];
                            logWeight[j] = LogSumExp(terms) - Math.Log(r);
                        }
                        max = Math.Max(max, logWeight[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < end; j++)
                    {
                        double e = Math.Exp(logWeight[j] - max);
                        sum += e;
                        for (int x = 0; x < dim; x++) output[outAt + x] += e * vb[j * kd + hk * dim + x];
                    }
                    for (int x = 0; x < dim; x++) output[outAt + x] /= sum;
                    lse[lseAt] = max + Math.Log(sum);
                }
            }
        }
        return (output, lse);
    }

    // [n][r]: w_f·(root·row) − ‖root·row‖²/2 for the rows of one head (row i at data[i·stride + offset …]).
    private static double[] LogFeatures(ReadOnlySpan<float> data, int n, int stride, int offset, int dim, double root, float[] w, int r)
    {
        var result = new double[(long)n * r];
        var x = new double[dim];
        for (int i = 0; i < n; i++)
        {
            double norm = 0;
            for (int c = 0; c < dim; c++)
            {
                x[c] = root * data[i * stride + offset + c];
                norm += x[c] * x[c];
            }
            for (int f = 0; f < r; f++)
            {
                double dot = 0;
                for (int c = 0; c < dim; c++) dot += w[f * dim + c] * x[c];
                result[(long)i * r + f] = dot - norm / 2;
            }
        }
        return result;
    }

    private static double LogSumExp(double[] values)
    {
        double max = double.NegativeInfinity;
        foreach (double x in values) max = Math.Max(max, x);
        if (double.IsNegativeInfinity(max)) return max;
        double sum = 0;
        foreach (double x in values) sum += Math.Exp(x - max);
        return max + Math.Log(sum);
    }

    private static float[] Gaussian(int count, int seed)
    {
        var rng = new Random(seed);
        var a = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    // Rows of one head, multiplied by `factor`, as [n][D].
    private static float[] Head(ReadOnlySpan<float> data, int n, int heads, int head, int dim, float factor)
    {
        var rows = new float[n * dim];
        for (int i = 0; i < n; i++) TensorPrimitives.Multiply(data.Slice((i * heads + head) * dim, dim), factor, rows.AsSpan(i * dim, dim));
        return rows;
    }

    // φ(x) = exp(Wx − ‖x‖²/2 − shift)/√r as [n][r]; the shift is per row (queries) or one for all rows (keys), so every feature is ≤ 1/√r and the shifts come back in the log-normaliser.
    private static float[] Features(float[] x, int n, float[] w, int r, int dim, bool perRow, out float[] rowShift)
    {
        float[] u = SelectorMath.Scores(x, n, w, r, dim, 1f);
        rowShift = new float[n];
        float global = float.NegativeInfinity;
        for (int i = 0; i < n; i++)
        {
            float half = 0.5f * TensorPrimitives.Dot(x.AsSpan(i * dim, dim), x.AsSpan(i * dim, dim));
            Span<float> row = u.AsSpan(i * r, r);
            TensorPrimitives.Subtract(row, half, row);
            rowShift[i] = TensorPrimitives.Max(row);
            global = MathF.Max(global, rowShift[i]);
        }
        float inv = 1f / MathF.Sqrt(r);
        for (int i = 0; i < n; i++)
        {
            Span<float> row = u.AsSpan(i * r, r);
            float shift = perRow ? rowShift[i] : global;
            rowShift[i] = shift;
            TensorPrimitives.Subtract(row, shift, row);
            TensorPrimitives.Exp(row, row);
            TensorPrimitives.Multiply(row, inv, row);
        }
        return u;
    }
}

/// <summary><c>attend run --method scatterbrain</c>.</summary>
public sealed class ScatterbrainMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "scatterbrain";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "approximation", "method", Scatterbrain.Paper, ["cpu", "cuda"], "implemented",
        "sortLSH sparse exact part + Performer random-feature low rank on the complement (overlap removed), joined by LSE; causal or full; approximate")
    {
        Parameters =
        [
            new MethodParameter("causal", "bool", "true", "causal (bottom-right aligned) or full attention"),
            new MethodParameter("features", "int", "64", "random features r"),
            new MethodParameter("block", "int", "128", "rows per sorted block of the sparse support (multiple of 64)"),
            new MethodParameter("bits", "int", "7", "sortLSH hyperplanes"),
            new MethodParameter("seed", "int", "0", "seed of hyperplanes and features"),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        MethodTensor q = inputs.Q, k = inputs.K;
        int b = q.Dim(0), tq = q.Dim(1), h = q.Dim(2), d = q.Dim(3), tk = k.Dim(1), hkv = k.Dim(2);
        var options = new ScatterbrainOptions
        {
            Causal = arguments.GetBool("causal", true),
            Features = arguments.GetInt("features", 64, min: 1),
            BlockSize = arguments.GetInt("block", 128, min: 64),
            HashBits = arguments.GetInt("bits", 7, min: 1, max: 20),
            Seed = arguments.GetInt("seed", 0),
            Scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null,
        };
        if (options.BlockSize % 64 != 0) throw new ArgumentException($"Parameter 'block' must be a multiple of 64; got {options.BlockSize}.", "block");
        arguments.ThrowIfUnused(Name);
        var o = new float[(long)b * tq * h * d];
        var lse = new float[(long)b * h * tq];
        var watch = Stopwatch.StartNew();
        MethodResult result;
        if (inputs.Offsets is SeqOffsets offsets)
        {
            // Varlen (self-attention): each packed sequence on its own (b is 1, tq = tk the packed total).
            if (b != 1) throw new ArgumentException($"With offsets (varlen) q holds the packed sequences as a batch of one; it has {b} (dimension 0).", "q");
            if (offsets.TotalTokens != tq) throw new ArgumentException($"The offsets cover {offsets.TotalTokens} tokens but q has {tq} (dimension 1).", "q");
            if (tk != tq) throw new ArgumentException($"Varlen scatterbrain is self-attention; k has {tk} tokens (dimension 1), q has {tq}.", "k");
            VarlenLshCoverage packed = Scatterbrain.ForwardVarlen(q.Data, k.Data, inputs.V.Data, offsets, h, hkv, d, options, o, lse);
            result = new MethodResult(new MethodTensor(o, b, tq, h, d)) { Density = packed.Density(options.Causal ?? true), Coverage = packed };
        }
        else
        {
            LshCoverage coverage = Scatterbrain.Forward(q.Data, k.Data, inputs.V.Data, b, tq, tk, h, hkv, d, options, o, lse);
            result = new MethodResult(new MethodTensor(o, b, tq, h, d)) { Density = coverage.ExactDensity(tq, options.Causal ?? true), Coverage = coverage };
        }
        result.Extras["lse"] = new MethodTensor(lse, b, h, tq);
        result.Report.Add(new("total_ms", watch.Elapsed.TotalMilliseconds.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }
}
