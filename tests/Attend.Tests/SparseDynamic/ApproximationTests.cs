using Attend.Methods;
using Attend.Methods.Approximation;
using Xunit;

namespace Attend.Tests.SparseDynamic;

public class ApproximationTests
{
    private static MethodResult Run(IAttentionMethod method, AttnCase c, AttnInputs<float> x, params string[] args) =>
        method.Run(new MethodInputs(new MethodTensor(x.Q, c.B, c.Tq, c.H, c.D), new MethodTensor(x.K, c.B, c.Tk, c.Hkv, c.D),
            new MethodTensor(x.V, c.B, c.Tk, c.Hkv, c.D)), MethodArguments.Parse(args));

    private static void AssertExact(MethodResult r, ReferenceForwardResult exact)
    {
        Assert.True(TestData.RelativeError<float>(r.Output.Data, exact.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(r.Extras["lse"].Data, exact.Lse) < 1e-5, $"seed {TestData.RunSeed}");
    }

    [Theory]
    [InlineData(true, 1)]
    [InlineData(false, 2)]
    public void HyperAttentionIsExactBelowMinSeqLen(bool causal, int batch)
    {
        var c = new AttnCase { B = batch, Tq = 150, Tk = 150, H = 4, Hkv = 2, D = 32, Mask = causal ? Masks.Causal : null };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4300));
        MethodResult r = Run(new HyperAttentionMethod(), c, x, $"causal={causal}", "min_seq_len=150");
        AssertExact(r, Harness.Reference(c, x));
        Assert.Equal(1.0, r.Density!.Value, 9);
    }

    [Fact]
    public void HyperAttentionRecursionAndMergesAreExactWhenOneBlockHoldsEveryKey()
    {
        // Blocks larger than any half: the sorted-block part is the whole quarter and the residual is fully masked, so
        // the causal recursion (three levels at min_seq_len 40) must reproduce exact causal attention.
        var c = new AttnCase { Tq = 301, Tk = 301, H = 4, Hkv = 1, D = 64, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4301), scale: 1.5);
        MethodResult r = Run(new HyperAttentionMethod(), c, x, "min_seq_len=40", "block=320", "samples=16");
        AssertExact(r, Harness.Reference(c, x));
    }

    [Fact]
    public void HyperAttentionErrorFallsWithMoreSamplesAndLeavesAreExact()
    {
        Random rng = TestData.Rng(4302);
        var c = new AttnCase { Tq = 1024, Tk = 1024, H = 2, Hkv = 1, D = 64, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 0.7);
        ReferenceForwardResult exact = Harness.Reference(c, x);
        MethodResult few = Run(new HyperAttentionMethod(), c, x, "min_seq_len=256", "block=64", "samples=8");
        MethodResult many = Run(new HyperAttentionMethod(), c, x, "min_seq_len=256", "block=64", "samples=2048");
        Assert.DoesNotContain(few.Output.Data, v => !float.IsFinite(v));
        double eFew = DynamicWorkload.Frobenius(few.Output.Data, exact.Output), eMany = DynamicWorkload.Frobenius(many.Output.Data, exact.Output);
        Assert.True(eMany < eFew && eMany < 0.2, $"error with 2048 samples {eMany}, with 8 {eFew}; seed {TestData.RunSeed}");
        Assert.InRange(few.Density!.Value, 0.01, 0.9);
        // More samples than a quarter has keys are not drawn (they would be counted pairs beyond the quarter's own).
        Assert.InRange(many.Density!.Value, 0.01, 1.0);
        // The leaves of the recursion are exact causal blocks: row 10 covers keys 0..10 and nothing after.
        var covered = new bool[1024];
        few.Coverage!.CoveredKeys(0, 1, 10, covered);
        for (int j = 0; j < 1024; j++) Assert.Equal(j <= 10, covered[j]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ScatterbrainIsExactWhenTheSupportIsEverything(bool causal)
    {
        var c = new AttnCase { B = 2, Tq = 100, Tk = 120, H = 4, Hkv = 2, D = 32, Mask = causal ? Masks.Causal : null };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4303));
        MethodResult r = Run(new ScatterbrainMethod(), c, x, "block=128", $"causal={causal}");
        AssertExact(r, Harness.Reference(c, x));
        Assert.Equal(1.0, r.Density!.Value, 9);
    }

    private static DocumentMask Chunks() => Masks.Document(SeqOffsets.FromLengths(Enumerable.Repeat(64, 8).ToArray()));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ScatterbrainBeatsASparseSupportOfTheSameSizeAlone(bool causal)
    {
        Random rng = TestData.Rng(4304);
        var c = new AttnCase { Tq = 512, Tk = 512, H = 2, Hkv = 2, D = 32, Mask = causal ? Masks.Causal : null };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 0.5);
        ReferenceForwardResult exact = Harness.Reference(c, x);
        MethodResult r = Run(new ScatterbrainMethod(), c, x, "block=64", "features=256", $"causal={causal}");
        Assert.DoesNotContain(r.Output.Data, v => !float.IsFinite(v));
        double err = DynamicWorkload.Frobenius(r.Output.Data, exact.Output);
        // Attention restricted to the 64-blocks of the diagonal: an exact support of the same size, without the low rank.
        var local = new AttnCase { Tq = 512, Tk = 512, H = 2, Hkv = 2, D = 32, Mask = causal ? Masks.And(Masks.Causal, Chunks()) : Chunks() };
        ReferenceForwardResult sparse = Harness.Reference(local, x);
        double num = 0, den = 0;
        for (int i = 0; i < exact.Output.Length; i++) { num += Math.Pow(sparse.Output[i] - exact.Output[i], 2); den += exact.Output[i] * exact.Output[i]; }
        double sparseOnly = Math.Sqrt(num / den);
        Assert.True(err < sparseOnly, $"scatterbrain {err} vs sparse only {sparseOnly}; seed {TestData.RunSeed}");
    }
}

public class SortLshTests
{
    [Fact]
    public void NearbyDirectionsShareBucketsMoreOftenThanRandomOnesAndOrdersAreStable()
    {
        Random rng = TestData.Rng(4310);
        var lsh = new SortLsh(7, 32, seed: 5);
        int same = 0, sameRandom = 0;
        for (int t = 0; t < 200; t++)
        {
            float[] x = TestData.Gaussian<float>(rng, 32), noise = TestData.Gaussian<float>(rng, 32, 0.05), y = TestData.Gaussian<float>(rng, 32);
            float[] near = x.Zip(noise, (a, b) => a + b).ToArray();
            if (lsh.Bucket(x) == lsh.Bucket(near)) same++;
            if (lsh.Bucket(x) == lsh.Bucket(y)) sameRandom++;
        }
        Assert.True(same > 150 && sameRandom < 40, $"near {same}/200, random {sameRandom}/200; seed {TestData.RunSeed}");
        // The scaled copy of a vector has the same bucket; the sort order lists every row once.
        float[] rows = TestData.Gaussian<float>(rng, 50 * 32);
        int[] order = lsh.SortOrder(rows, 50, 32);
        Assert.Equal(Enumerable.Range(0, 50), order.OrderBy(i => i));
        for (int i = 1; i < 50; i++)
            Assert.True(lsh.Bucket(rows.AsSpan(order[i - 1] * 32, 32)) <= lsh.Bucket(rows.AsSpan(order[i] * 32, 32)));
        Assert.Equal("bits", Assert.Throws<ArgumentOutOfRangeException>(() => new SortLsh(0, 4, 1)).ParamName);
    }
}
