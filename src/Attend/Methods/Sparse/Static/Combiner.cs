using System.Diagnostics;

namespace Attend.Methods.Sparse.Static;

/// <summary>
/// Combiner (Ren et al., "Combiner: Full Attention Transformer with Sparse Computation Cost", 2021), the
/// Combiner-Fixed layout on causal prefill: every query attends exactly to its local region — its own block of
/// <see cref="CombinerOptions.BlockSize"/> tokens and the <see cref="CombinerOptions.LocalBlocks"/> − 1 blocks before it —
/// and to every earlier block through one summary: the block's mean key k̄ and mean value v̄, scored
/// <c>scale·q·k̄ + ln(block size)</c> (the block's softmax mass approximated as size × exp of the mean-key score, with
/// uniform attention inside the block). The two parts are exact softmax attentions over their own keys (the shared
/// kernel: the local part with a block-band mask, the far part over the summaries with a block-causal mask), combined
/// through the LSE merge. It is an approximation (family <c>approximation</c>): far blocks are never computed exactly.
/// </summary>
/// <remarks>
/// Deviations: Combiner learns the in-region distribution (or uses max/mean pooling inside a trained model); here the
/// summaries are plain means of the given K and V (no parameters). Causal self-attention only (Tq = Tk), no varlen.
/// </remarks>
public static class Combiner
{
    /// <summary>The float64 definition the kernel path must reproduce (the test oracle); q, k, v are <c>[B, T, H|Hkv, D]</c>.</summary>
    /// <returns>Output <c>[B, T, H, Dv]</c> in float64.</returns>
    public static double[] Reference(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int batch, int length, int heads, int kvHeads,
        int headDim, int valueDim, CombinerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        int bs = options.BlockSize, local = options.LocalBlocks, group = heads / kvHeads;
        double scale = options.Scale ?? 1 / Math.Sqrt(headDim);
        var o = new double[(long)batch * length * heads * valueDim];
        var logits = new List<double>();
        var values = new List<double[]>();
        for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++)
        for (int i = 0; i < length; i++)
        {
            int g = h / group, qb = i / bs;
            logits.Clear();
            values.Clear();
            double Dot(ReadOnlySpan<float> x, long xo, ReadOnlySpan<double> y)
            {
                double s = 0;
                for (int c = 0; c < headDim; c++) s += x[(int)(xo + c)] * y[c];
                return s;
            }
            long qo = (((long)b * length + i) * heads + h) * headDim;
            var qrow = new double[headDim];
            for (int c = 0; c < headDim; c++) qrow[c] = q[(int)(qo + c)];
            // Far blocks: summaries.
            for (int j = 0; j <= qb - local; j++)
            {
                var km = new double[headDim];
                var vm = new double[valueDim];
                for (int t = j * bs; t < (j + 1) * bs; t++)
                {
                    long ko = (((long)b * length + t) * kvHeads + g) * headDim, vo = (((long)b * length + t) * kvHeads + g) * valueDim;
                    for (int c = 0; c < headDim; c++) km[c] += k[(int)(ko + c)] / bs;
                    for (int c = 0; c < valueDim; c++) vm[c] += v[(int)(vo + c)] / bs;
                }
                logits.Add(scale * Dot(q, qo, km) + Math.Log(bs));
                values.Add(vm);
            }
            // Local keys: exact.
            for (int t = Math.Max(0, (qb - local + 1) * bs); t <= i; t++)
            {
                long ko = (((long)b * length + t) * kvHeads + g) * headDim, vo = (((long)b * length + t) * kvHeads + g) * valueDim;
                double s = 0;
                for (int c = 0; c < headDim; c++) s += qrow[c] * k[(int)(ko + c)];
                logits.Add(scale * s);
                var vr = new double[valueDim];
                for (int c = 0; c < valueDim; c++) vr[c] = v[(int)(vo + c)];
                values.Add(vr);
            }
            double max = logits.Max(), sum = 0;
            foreach (double l in logits) sum += Math.Exp(l - max);
            long oo = (((long)b * length + i) * heads + h) * valueDim;
            for (int x = 0; x < logits.Count; x++)
            {
                double p = Math.Exp(logits[x] - max) / sum;
                for (int c = 0; c < valueDim; c++) o[oo + c] += p * values[x][c];
            }
        }
        return o;
    }

    /// <summary>
    /// Runs Combiner on float32 <c>[B, T, H, D]</c> queries and <c>[B, T, Hkv, D]</c> keys/values into
    /// <paramref name="output"/> <c>[B, T, H, Dv]</c> and <paramref name="lse"/> <c>[B, H, T]</c> (the merged log-sum-exp).
    /// </summary>
    /// <returns>The time spent building the summaries (ms) and the computed pairs (local keys + summaries) over the causal pairs.</returns>
    /// <exception cref="ArgumentException">Mis-sized spans (the message names them).</exception>
    public static (double SummaryMs, double Density) Forward(float[] q, float[] k, float[] v, int batch, int length, int heads, int kvHeads, int headDim,
        int valueDim, CombinerOptions options, float[] output, float[] lse)
    {
        ArgumentNullException.ThrowIfNull(options);
        Check(q, (long)batch * length * heads * headDim, nameof(q));
        Check(k, (long)batch * length * kvHeads * headDim, nameof(k));
        Check(v, (long)batch * length * kvHeads * valueDim, nameof(v));
        Check(output, (long)batch * length * heads * valueDim, nameof(output));
        Check(lse, (long)batch * heads * length, nameof(lse));
        if (kvHeads < 1 || heads % kvHeads != 0) throw new ArgumentException($"kvHeads {kvHeads} must divide heads {heads}.", nameof(kvHeads));
        int bs = options.BlockSize, local = options.LocalBlocks;
        int blocks = length / bs; // complete blocks: every far block is complete (it ends before the query's own block)

        // Local part: exact attention over the block band (own block and local − 1 before it), causal.
        IMaskMod localMask = LocalMask(options);
        var localOptions = new AttentionOptions { Mask = localMask, Scale = options.Scale };
        var o1 = new float[output.Length];
        var lse1 = new float[lse.Length];
        Attention.Forward<float>(AttentionLayout.Bthd<float>(q, batch, length, heads, headDim), AttentionLayout.Bthd<float>(k, batch, length, kvHeads, headDim),
            AttentionLayout.Bthd<float>(v, batch, length, kvHeads, valueDim), localOptions,
            AttentionLayout.Bthd<float>(o1, batch, length, heads, valueDim), AttentionLayout.Lse(lse1, batch, heads, length));
        BlockMask localBlocks = BlockMask.Create(localMask, length, length, 1, 1);
        double computed = localBlocks.VisiblePairs() * (double)batch * heads;

        // Far part: the block summaries (means), attended with a block-causal mask that leaves out the local region.
        var clock = Stopwatch.StartNew();
        var ks = new float[(long)batch * Math.Max(blocks, 1) * kvHeads * headDim];
        var vs = new float[(long)batch * Math.Max(blocks, 1) * kvHeads * valueDim];
        Summarize(k, ks, batch, length, kvHeads, headDim, bs, blocks);
        Summarize(v, vs, batch, length, kvHeads, valueDim, bs, blocks);
        double summaryMs = clock.Elapsed.TotalMilliseconds;
        if (blocks > local - 1 && blocks > 0)
        {
            var farMask = new CombinerFarMask(length, blocks, bs, local);
            var o2 = new float[output.Length];
            var lse2 = new float[lse.Length];
            Attention.Forward<float>(AttentionLayout.Bthd<float>(q, batch, length, heads, headDim), AttentionLayout.Bthd<float>(ks, batch, blocks, kvHeads, headDim),
                AttentionLayout.Bthd<float>(vs, batch, blocks, kvHeads, valueDim), new AttentionOptions { Mask = farMask, Scale = options.Scale },
                AttentionLayout.Bthd<float>(o2, batch, length, heads, valueDim), AttentionLayout.Lse(lse2, batch, heads, length));
            float logSize = MathF.Log(bs);
            for (int b = 0; b < batch; b++)
            for (int i = 0; i < length; i++)
            for (int h = 0; h < heads; h++)
            {
                long row = ((long)b * length + i) * heads + h, l = ((long)b * heads + h) * length + i;
                // The summary stands for `bs` keys: its mass is bs·exp(score), so its LSE gains ln(bs).
                Lse.Merge(o1.AsSpan((int)(row * valueDim), valueDim), lse1[l], o2.AsSpan((int)(row * valueDim), valueDim), lse2[l] + logSize,
                    output.AsSpan((int)(row * valueDim), valueDim), out float merged);
                lse[l] = merged;
            }
            computed += BlockMask.Create(farMask, length, blocks, 1, 1).VisiblePairs() * (double)batch * heads;
        }
        else
        {
            o1.CopyTo(output, 0);
            lse1.CopyTo(lse, 0);
        }
        double causalPairs = (double)length * (length + 1) / 2 * batch * heads;
        return (summaryMs, causalPairs == 0 ? 0 : computed / causalPairs);
    }

    /// <summary>The exact (local) part's mask: the own block and the <c>LocalBlocks − 1</c> blocks before it, causal.</summary>
    public static IMaskMod LocalMask(CombinerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return MaskSpec.Intersect(new AShapeMask(options.BlockSize, 0, options.LocalBlocks), new CausalMask());
    }

    private static void Summarize(float[] x, float[] summary, int batch, int length, int kvHeads, int dim, int bs, int blocks)
    {
        float inv = 1f / bs;
        for (int b = 0; b < batch; b++)
        for (int j = 0; j < blocks; j++)
        for (int g = 0; g < kvHeads; g++)
        {
            Span<float> dst = summary.AsSpan((int)((((long)b * blocks + j) * kvHeads + g) * dim), dim);
            dst.Clear();
            for (int t = j * bs; t < (j + 1) * bs; t++)
            {
                ReadOnlySpan<float> src = x.AsSpan((int)((((long)b * length + t) * kvHeads + g) * dim), dim);
                System.Numerics.Tensors.TensorPrimitives.Add(dst, src, dst);
            }
            System.Numerics.Tensors.TensorPrimitives.Multiply(dst, inv, dst);
        }
    }

    private static void Check(float[] data, long expected, string name)
    {
        ArgumentNullException.ThrowIfNull(data, name);
        if (data.LongLength != expected) throw new ArgumentException($"{name} has {data.LongLength} values; the shape needs {expected}.", name);
    }
}

/// <summary>Options of <see cref="Combiner"/>; immutable, nullable where a default exists.</summary>
public sealed record CombinerOptions
{
    /// <summary>Options with a block size and a local window.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A block size or local window below 1.</exception>
    public CombinerOptions(int blockSize, int localBlocks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(localBlocks, 1);
        BlockSize = blockSize;
        LocalBlocks = localBlocks;
    }

    /// <summary>Tokens per block (the region a summary stands for).</summary>
    public int BlockSize { get; }

    /// <summary>Blocks attended exactly: the query's own and the ones before it.</summary>
    public int LocalBlocks { get; }

    /// <summary>Score scale; null: 1/√D.</summary>
    public float? Scale { get; init; }
}

/// <summary>
/// The far part of <see cref="Combiner"/>: query row i (of T) sees summary j (of the T / block complete blocks) when
/// block j ends before the query's local region, j ≤ ⌊i / block⌋ − local.
/// </summary>
public readonly struct CombinerFarMask : IMaskMod<CombinerFarMask>
{
    private readonly int _length, _summaries, _block, _local;

    /// <summary>The far mask for <paramref name="length"/> queries over <paramref name="summaries"/> summaries of blocks of <paramref name="block"/> tokens.</summary>
    public CombinerFarMask(int length, int summaries, int block, int local)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(block, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(local, 1);
        _length = length;
        _summaries = summaries;
        _block = block;
        _local = local;
    }

    // Query positions arrive bottom-right aligned on the summary axis: row i sits at i + summaries − length.
    private int LastVisible(int qPos) => PatternBlocks.FloorDiv(qPos - _summaries + _length, _block) - _local;

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => k <= LastVisible(q);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        // LastVisible grows with q: the block is full when its first row sees its last key, empty when its last row sees none.
        if (kEnd - 1 <= LastVisible(qStart)) return BlockKind.Full;
        return kStart > LastVisible(qEnd - 1) ? BlockKind.Empty : BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"combiner-far(block {_block}, local {_local})";
}

/// <summary>The <c>combiner</c> method (family <c>approximation</c>).</summary>
public sealed class CombinerMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("combiner", "approximation", "static",
        "Combiner: Full Attention Transformer with Sparse Computation Cost (Ren et al., 2021)", ["cpu", "cuda"], "implemented",
        "exact local blocks + one mean summary per far block, merged through the LSE (causal)")
    {
        Parameters = [new("block", "int", "64", "tokens per block / summary"), new("local", "int", "8", "blocks attended exactly (own included)")],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        if (inputs.Offsets is not null) throw new ArgumentException("combiner does not take varlen offsets (pad the batch instead).", "offsets");
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        int b = q.Dim(0), t = q.Dim(1), h = q.Dim(2), d = q.Dim(3), hkv = k.Dim(2), dv = v.Dim(3);
        if (k.Dim(1) != t) throw new ArgumentException($"combiner is causal self-attention: keys must have the {t} query tokens; got {k.Dim(1)}.", "k");
        var options = new CombinerOptions(arguments.GetInt("block", 64, 1), arguments.GetInt("local", 8, 1));
        arguments.ThrowIfUnused(Info.Name);
        var o = new float[(long)b * t * h * dv];
        var lse = new float[(long)b * h * t];
        (double summaryMs, double density) = Combiner.Forward(q.Data, k.Data, v.Data, b, t, h, hkv, d, dv, options, o, lse);
        var result = new MethodResult(new MethodTensor(o, b, t, h, dv))
        {
            Density = density,
            SelectorMs = summaryMs,
            Coverage = new MaskCoverage(Combiner.LocalMask(options), t, t),
        };
        result.Extras["lse"] = new MethodTensor(lse, b, h, t);
        result.Report.Add(new("local", $"{options.LocalBlocks} blocks of {options.BlockSize}"));
        return result;
    }
}
