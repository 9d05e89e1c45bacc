using Attend.Methods;
using Attend.Methods.Sparse.Static;
using Attend.Workloads;
using Xunit;

namespace Attend.Tests.Sparse;

/// <summary>Combiner: the kernel path (two exact attentions merged through the LSE) equals its float64 definition.</summary>
public sealed class CombinerTests
{
    private static MethodInputs Inputs(float[] q, float[] k, float[] v, int b, int t, int h, int hkv, int d) =>
        new(new MethodTensor(q, b, t, h, d), new MethodTensor(k, b, t, hkv, d), new MethodTensor(v, b, t, hkv, d));

    [Theory]
    [InlineData(1, 5, 2, 1, 32, 8, 1)]
    [InlineData(2, 77, 4, 2, 64, 8, 2)]
    [InlineData(1, 130, 3, 3, 40, 16, 1)]
    [InlineData(1, 200, 8, 2, 128, 64, 1)]
    [InlineData(1, 259, 4, 1, 64, 7, 3)]
    public void EqualsItsFloat64Definition(int b, int t, int h, int hkv, int d, int block, int local)
    {
        var rng = TestData.Rng(t * 7 + block);
        float[] q = TestData.Gaussian<float>(rng, (long)b * t * h * d), k = TestData.Gaussian<float>(rng, (long)b * t * hkv * d),
            v = TestData.Gaussian<float>(rng, (long)b * t * hkv * d);
        MethodResult r = new CombinerMethod().Run(Inputs(q, k, v, b, t, h, hkv, d),
            MethodArguments.Parse([$"block={block}", $"local={local}"]));
        double[] expected = Combiner.Reference(q, k, v, b, t, h, hkv, d, d, new CombinerOptions(block, local));
        double err = TestData.RelativeError<float>(r.Output.Data, expected);
        Assert.True(err <= 1e-5, $"B{b} T{t} H{h}/{hkv} D{d} block {block} local {local}: error {err:E2} (seed {TestData.RunSeed})");
        Assert.All(r.Extras["lse"].Data, x => Assert.True(float.IsFinite(x)));
        Assert.InRange(r.Density!.Value, 0, 1.0 + 1e-12);
    }

    [Fact]
    public void WithEveryBlockLocalItIsExactCausalAttention()
    {
        var rng = TestData.Rng(3);
        const int b = 1, t = 150, h = 4, hkv = 2, d = 64;
        float[] q = TestData.Gaussian<float>(rng, (long)b * t * h * d), k = TestData.Gaussian<float>(rng, (long)b * t * hkv * d),
            v = TestData.Gaussian<float>(rng, (long)b * t * hkv * d);
        MethodResult r = new CombinerMethod().Run(Inputs(q, k, v, b, t, h, hkv, d), MethodArguments.Parse(["block=16", "local=10"]));
        ReferenceForwardResult exact = ReferenceAttention.Forward<float>(AttentionLayout.Bthd<float>(q, b, t, h, d),
            AttentionLayout.Bthd<float>(k, b, t, hkv, d), AttentionLayout.Bthd<float>(v, b, t, hkv, d), new AttentionOptions { Mask = new CausalMask() });
        Assert.True(TestData.RelativeError<float>(r.Output.Data, exact.Output) <= 1e-5);
        Assert.Equal(1.0, r.Density!.Value, 12);
    }

    [Fact]
    public void SummariesHelpOnLocalisedFarMassAndTheErrorIsBelowTheLocalWindowAlone()
    {
        // On the llm workload the far blocks carry mass (sinks, stripes): the summaries must bring the output closer to
        // exact attention than the local window alone.
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(WorkloadPresets.Clusters, 1024, heads: 2, kvHeads: 1, headDim: 64), TestData.RunSeed);
        MethodResult combiner = new CombinerMethod().Run(w.ToInputs(), MethodArguments.Parse(["block=32", "local=4"]));
        MethodResult localOnly = new AShapeMethod().Run(w.ToInputs(), MethodArguments.Parse(["block=32", "sinks=0", "local=4"]));
        MethodResult exact = new Attend.Methods.Softmax.ExactAttentionMethod().Run(w.ToInputs(), MethodArguments.Parse(["mask=causal"]));
        double Err(float[] o)
        {
            double num = 0, den = 0;
            for (int i = 0; i < o.Length; i++) { double e = o[i] - exact.Output.Data[i]; num += e * e; den += (double)exact.Output.Data[i] * exact.Output.Data[i]; }
            return Math.Sqrt(num / den);
        }
        double withSummaries = Err(combiner.Output.Data), without = Err(localOnly.Output.Data);
        Assert.True(withSummaries < without, $"combiner {withSummaries:F3} vs local window alone {without:F3}");
    }

    [Fact]
    public void BadParametersAndInputsAreNamed()
    {
        var inputs = Inputs(new float[64], new float[32], new float[32], 1, 4, 2, 1, 8);
        Assert.Contains("block", Assert.ThrowsAny<ArgumentException>(() => new CombinerMethod().Run(inputs, MethodArguments.Parse(["block=0"]))).Message, StringComparison.Ordinal);
        Assert.Contains("local", Assert.ThrowsAny<ArgumentException>(() => new CombinerMethod().Run(inputs, MethodArguments.Parse(["local=0"]))).Message, StringComparison.Ordinal);
        var varlen = new MethodInputs(new MethodTensor(new float[64], 1, 4, 2, 8), new MethodTensor(new float[32], 1, 4, 1, 8), new MethodTensor(new float[32], 1, 4, 1, 8))
        { Offsets = SeqOffsets.FromLengths([1, 3]) };
        Assert.Equal("offsets", Assert.ThrowsAny<ArgumentException>(() => new CombinerMethod().Run(varlen, MethodArguments.Empty)).ParamName);
        Assert.Equal("blockSize", Assert.Throws<ArgumentOutOfRangeException>(() => new CombinerOptions(0, 1)).ParamName);
    }
}
