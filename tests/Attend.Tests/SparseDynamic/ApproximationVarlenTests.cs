using Attend.Methods;
using Attend.Methods.Approximation;
using Xunit;

namespace Attend.Tests.SparseDynamic;

/// <summary>
/// Scatterbrain against the float64 computation of its own definition (same support, same random features), and the
/// packed variable-length form of Scatterbrain and HyperAttention (each sequence approximated on its own).
/// </summary>
public class ApproximationVarlenTests
{
    private static void AssertClose(float[] output, float[] lse, (double[] Output, double[] Lse) reference, double tolerance, string what)
    {
        Assert.DoesNotContain(output, v => float.IsNaN(v));
        double err = TestData.RelativeError<float>(output, reference.Output);
        Assert.True(err < tolerance, $"{what}: output error {err}; seed {TestData.RunSeed}");
        double lseErr = TestData.LseError(lse, reference.Lse);
        Assert.True(lseErr < tolerance, $"{what}: LSE error {lseErr}; seed {TestData.RunSeed}");
    }

    [Theory]
    [InlineData(true, 1, 301, 301, 4, 2, 32, 16, 64)] // causal, GQA, odd length, several sorted blocks
    [InlineData(false, 2, 200, 257, 2, 1, 48, 64, 64)] // full, Tq < Tk, batch 2
    [InlineData(true, 1, 190, 130, 2, 2, 64, 8, 128)] // causal with Tq > Tk: the first rows see no key
    [InlineData(true, 1, 1, 1, 1, 1, 16, 4, 64)] // one token
    public void ScatterbrainEqualsItsFloat64Definition(bool causal, int batch, int tq, int tk, int heads, int kvHeads, int dim, int features, int block)
    {
        Random rng = TestData.Rng(4320 + tq + dim);
        float[] q = TestData.Gaussian<float>(rng, (long)batch * tq * heads * dim, 0.8);
        float[] k = TestData.Gaussian<float>(rng, (long)batch * tk * kvHeads * dim, 0.8);
        float[] v = TestData.Gaussian<float>(rng, (long)batch * tk * kvHeads * dim);
        var options = new ScatterbrainOptions { Causal = causal, Features = features, BlockSize = block, HashBits = 3, Seed = 11 };
        float[] o = TestData.Poisoned<float>(q.LongLength), lse = TestData.Poisoned<float>((long)batch * heads * tq);
        Scatterbrain.Forward(q, k, v, batch, tq, tk, heads, kvHeads, dim, options, o, lse);
        AssertClose(o, lse, Scatterbrain.Reference(q, k, v, batch, tq, tk, heads, kvHeads, dim, options), 2e-4, "scatterbrain");
    }

    [Fact]
    public void ScatterbrainDefinitionDiffersFromExactAttention()
    {
        // The oracle itself must not be exact attention (else the test above could not tell the low rank from nothing):
        // off the support its weights are the random-feature estimates.
        Random rng = TestData.Rng(4321);
        int t = 256, dim = 32;
        float[] q = TestData.Gaussian<float>(rng, t * dim), k = TestData.Gaussian<float>(rng, t * dim), v = TestData.Gaussian<float>(rng, t * dim);
        var options = new ScatterbrainOptions { Causal = false, Features = 8, BlockSize = 64 };
        var (output, _) = Scatterbrain.Reference(q, k, v, 1, t, t, 1, 1, dim, options);
        var c = new AttnCase { Tq = t, Tk = t, H = 1, Hkv = 1, D = dim };
        ReferenceForwardResult exact = Harness.Reference(c, new AttnInputs<float> { Q = q, K = k, V = v, DO = v });
        Assert.True(TestData.RelativeError<float>(output.Select(x => (float)x).ToArray(), exact.Output) > 1e-2);
    }

    [Theory]
    [InlineData(true, 1, 700, 4, 2, 32, 128, 64, 16)] // three recursion levels, GQA
    [InlineData(false, 2, 500, 2, 1, 64, 128, 128, 40)] // full attention: one sorted-block node + samples, batch 2
    [InlineData(true, 1, 257, 2, 2, 16, 64, 64, 300)] // more samples than keys in every node: each key taken once (exact)
    [InlineData(true, 1, 520, 2, 1, 16, 64, 64, 100)] // nodes of 65–260 keys: exact in the small ones, sampled in the large
    public void HyperAttentionEqualsItsFloat64Definition(bool causal, int batch, int t, int heads, int kvHeads, int dim, int minSeqLen, int block, int samples)
    {
        Random rng = TestData.Rng(4324 + t + dim);
        float[] q = TestData.Gaussian<float>(rng, (long)batch * t * heads * dim, 0.8);
        float[] k = TestData.Gaussian<float>(rng, (long)batch * t * kvHeads * dim, 0.8);
        float[] v = TestData.Gaussian<float>(rng, (long)batch * t * kvHeads * dim);
        var options = new HyperAttentionOptions { Causal = causal, MinSeqLen = minSeqLen, BlockSize = block, SampleSize = samples, HashBits = 4, Seed = 5 };
        float[] o = TestData.Poisoned<float>(q.LongLength), lse = TestData.Poisoned<float>((long)batch * heads * t);
        HyperAttention.Forward(q, k, v, batch, t, heads, kvHeads, dim, options, o, lse);
        AssertClose(o, lse, HyperAttention.Reference(q, k, v, batch, t, heads, kvHeads, dim, options), 1e-4, "hyperattention");
        // The oracle is not exact attention (the sampled residual is an estimate) unless every node has no more keys than
        // samples (the largest node of the causal recursion has t − t/2 keys, of the non-causal call t).
        var c = new AttnCase { B = batch, Tq = t, Tk = t, H = heads, Hkv = kvHeads, D = dim, Mask = causal ? Masks.Causal : null };
        ReferenceForwardResult exact = Harness.Reference(c, new AttnInputs<float> { Q = q, K = k, V = v, DO = v });
        double error = TestData.RelativeError<float>(o, exact.Output);
        if (samples >= (causal ? t - t / 2 : t)) Assert.True(error < 1e-4, $"every key taken once must be exact: {error:g3}; seed {TestData.RunSeed}");
        else Assert.True(error > 1e-3, $"seed {TestData.RunSeed}");
    }

    private static MethodResult RunVarlen(IAttentionMethod method, float[] q, float[] k, float[] v, int[] lens, int heads, int kvHeads, int dim, params string[] args) =>
        method.Run(new MethodInputs(new MethodTensor(q, 1, lens.Sum(), heads, dim), new MethodTensor(k, 1, lens.Sum(), kvHeads, dim),
            new MethodTensor(v, 1, lens.Sum(), kvHeads, dim)) { Offsets = SeqOffsets.FromLengths(lens) }, MethodArguments.Parse(args));

    // Sequence s of a packed [T, H·D] array as its own [n, H·D] array.
    private static float[] Slice(float[] data, int[] lens, int s, int width) =>
        data.AsSpan(lens.Take(s).Sum() * width, lens[s] * width).ToArray();

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ScatterbrainVarlenEqualsEachSequenceAlone(bool causal)
    {
        Random rng = TestData.Rng(4322 + (causal ? 1 : 0));
        int[] lens = [150, 1, 0, 263];
        int heads = 4, kvHeads = 2, dim = 32, total = lens.Sum();
        float[] q = TestData.Gaussian<float>(rng, total * heads * dim, 0.8), k = TestData.Gaussian<float>(rng, total * kvHeads * dim, 0.8);
        float[] v = TestData.Gaussian<float>(rng, total * kvHeads * dim);
        MethodResult r = RunVarlen(new ScatterbrainMethod(), q, k, v, lens, heads, kvHeads, dim, $"causal={causal}", "features=16", "block=64", "bits=3");
        float[] lse = r.Extras["lse"].Data;
        var options = new ScatterbrainOptions { Causal = causal, Features = 16, BlockSize = 64, HashBits = 3 };
        for (int s = 0, start = 0; s < lens.Length; start += lens[s], s++)
        {
            int n = lens[s];
            if (n == 0) continue;
            var (refO, refLse) = Scatterbrain.Reference(Slice(q, lens, s, heads * dim), Slice(k, lens, s, kvHeads * dim), Slice(v, lens, s, kvHeads * dim),
                1, n, n, heads, kvHeads, dim, options);
            float[] o = r.Output.Data.AsSpan(start * heads * dim, n * heads * dim).ToArray();
            var l = new float[heads * n];
            for (int h = 0; h < heads; h++) lse.AsSpan(h * total + start, n).CopyTo(l.AsSpan(h * n, n));
            AssertClose(o, l, (refO, refLse), 2e-4, $"sequence {s}");
        }
        Assert.InRange(r.Density!.Value, 0.0, 1.0);
        // Coverage is per sequence: row 0 of the one-token sequence covers its only key.
        var covered = new bool[1];
        r.Coverage!.CoveredKeys(1, 0, 0, covered);
        Assert.True(covered[0]);
    }

    [Fact]
    public void HyperAttentionVarlenEqualsEachSequenceAloneAndIsExactWhereSequencesAreShort()
    {
        Random rng = TestData.Rng(4323);
        int[] lens = [700, 0, 1, 90, 333];
        int heads = 4, kvHeads = 1, dim = 32, total = lens.Sum();
        float[] q = TestData.Gaussian<float>(rng, total * heads * dim, 0.7), k = TestData.Gaussian<float>(rng, total * kvHeads * dim, 0.7);
        float[] v = TestData.Gaussian<float>(rng, total * kvHeads * dim);
        string[] args = ["min_seq_len=128", "block=64", "samples=32"];
        MethodResult r = RunVarlen(new HyperAttentionMethod(), q, k, v, lens, heads, kvHeads, dim, args);
        float[] lse = r.Extras["lse"].Data;
        var options = new HyperAttentionOptions { MinSeqLen = 128, BlockSize = 64, SampleSize = 32 };
        for (int s = 0, start = 0; s < lens.Length; start += lens[s], s++)
        {
            int n = lens[s];
            if (n == 0) continue;
            float[] qs = Slice(q, lens, s, heads * dim), ks = Slice(k, lens, s, kvHeads * dim), vs = Slice(v, lens, s, kvHeads * dim);
            float[] o = TestData.Poisoned<float>(n * heads * dim), l = TestData.Poisoned<float>(heads * n);
            HyperAttention.Forward(qs, ks, vs, 1, n, heads, kvHeads, dim, options, o, l);
            // The packed run computes each sequence exactly as a batch of one (same hyperplanes and samples), which is
            // the float64 definition of that sequence.
            Assert.Equal(o, r.Output.Data.AsSpan(start * heads * dim, n * heads * dim).ToArray());
            AssertClose(o, l, HyperAttention.Reference(qs, ks, vs, 1, n, heads, kvHeads, dim, options), 1e-4, $"sequence {s}");
            for (int h = 0; h < heads; h++) Assert.Equal(l.AsSpan(h * n, n).ToArray(), lse.AsSpan(h * total + start, n).ToArray());
            if (n > 128) continue;
            // At or below min_seq_len a sequence is exact causal attention (float64 reference of that sequence alone).
            var c = new AttnCase { Tq = n, Tk = n, H = heads, Hkv = kvHeads, D = dim, Mask = Masks.Causal };
            ReferenceForwardResult exact = Harness.Reference(c, new AttnInputs<float> { Q = qs, K = ks, V = vs, DO = vs });
            Assert.True(TestData.RelativeError<float>(o, exact.Output) < 1e-5, $"sequence {s}; seed {TestData.RunSeed}");
            Assert.True(TestData.LseError(l, exact.Lse) < 1e-5, $"sequence {s}; seed {TestData.RunSeed}");
        }
        Assert.InRange(r.Density!.Value, 0.0, 1.0);
        Assert.DoesNotContain(r.Output.Data, x => float.IsNaN(x));
    }

    [Fact]
    public void VarlenShapesThatDisagreeWithTheOffsetsNameTheArgument()
    {
        var offsets = SeqOffsets.FromLengths([10, 20]);
        float[] q = new float[30 * 2 * 16], k = new float[30 * 16], v = new float[30 * 16], o = new float[30 * 2 * 16], lse = new float[2 * 30];
        Assert.Equal("q", Assert.Throws<ArgumentException>(() =>
            Scatterbrain.ForwardVarlen(new float[29 * 2 * 16], k, v, offsets, 2, 1, 16, new ScatterbrainOptions(), o, lse)).ParamName);
        Assert.Equal("lse", Assert.Throws<ArgumentException>(() =>
            HyperAttention.ForwardVarlen(q, k, v, offsets, 2, 1, 16, new HyperAttentionOptions(), o, new float[30])).ParamName);
        Assert.Equal("kvHeads", Assert.Throws<ArgumentException>(() =>
            HyperAttention.ForwardVarlen(q, k, v, offsets, 2, 3, 16, new HyperAttentionOptions(), o, lse)).ParamName);
    }
}
