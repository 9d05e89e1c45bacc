using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class RetrievalTests
{
    [Fact]
    public void DecodeStepsReuseOneIndexAndFindTheNeedle()
    {
        // A cache of 600 keys; one index; two decode queries (Tq = 1) that both point at a needle key.
        Random rng = TestData.Rng(1301);
        RoutingProblem cache = RoutingProblem.Random(rng, 1, 600, 2, 1, 64, scale: 0.5);
        cache.PlantNeedle(rng, position: 123, firstRow: 598, strength: 8f);
        KeyIndex index = KeyIndex.Build(cache.Input, 24);
        var options = new RetrievalAttentionOptions { TopK = 16, Sinks = 4, Window = 16, Probes = 4 };
        for (int step = 598; step < 600; step++)
        {
            var decode = new RoutingProblem { B = 1, T = 1, Tk = 600, H = 2, Hkv = 1, D = 64, Dv = 64, K = cache.K, V = cache.V, Q = cache.Q.AsSpan(step * 2 * 64, 2 * 64).ToArray() };
            // The decode query sits at position Tk − 1 = 599; the needle is retrieved, the rest is sinks + window + top-k.
            SparsePlan plan = RetrievalAttention.Plan(decode.Input, options, index);
            for (int h = 0; h < 2; h++)
            {
                Assert.True(plan.Mask.IsVisible(0, h, 599, 123), $"step {step} head {h} misses the needle; seed {TestData.RunSeed}");
                Assert.True(plan.Mask.IsVisible(0, h, 599, 2) && plan.Mask.IsVisible(0, h, 599, 590));
            }
            Assert.InRange(plan.ComputedPairs, 2 * 21, 2 * (4 + 16 + 16));
            decode.AssertMatchesReference(plan);
        }
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1302), 1, 40, 2, 1, 16);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => RetrievalAttention.Plan(p.Input, new() { TopK = 0 })).ParamName);
        Assert.Equal("Probes", Assert.Throws<ArgumentOutOfRangeException>(() => RetrievalAttention.Plan(p.Input, new() { Probes = 0 })).ParamName);
        Assert.Equal("Window", Assert.Throws<ArgumentOutOfRangeException>(() => RetrievalAttention.Plan(p.Input, new() { Window = -1 })).ParamName);
        Assert.Equal("Lists", Assert.Throws<ArgumentOutOfRangeException>(() => KeyIndex.Build(p.Input, 0)).ParamName);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => LandmarkAttention.Plan(p.Input, new() { TopK = 0 })).ParamName);
        Assert.Equal("BlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => LandmarkAttention.Plan(p.Input, new() { BlockSize = 0 })).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 40, 2, 16), new MethodTensor(p.K, 1, 40, 1, 16), new MethodTensor(p.V, 1, 40, 1, 16));
        Assert.Equal("probes", Assert.Throws<ArgumentException>(() => new RetrievalAttentionMethod().Run(inputs, MethodArguments.Parse(["probes=0"]))).ParamName);
        Assert.Equal("block", Assert.Throws<ArgumentException>(() => new LandmarkMethod().Run(inputs, MethodArguments.Parse(["block=0"]))).ParamName);
    }

    [Fact]
    public void LandmarkRetrievesTheTopKBlocksByMeanKeyPlusItsOwn()
    {
        Random rng = TestData.Rng(1303);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 100, 1, 1, 16);
        SparsePlan plan = LandmarkAttention.Plan(p.Input, new LandmarkOptions { BlockSize = 10, TopK = 2 });
        for (int q = 0; q < 100; q++)
        {
            int own = q / 10;
            var scores = new List<(double S, int B)>();
            for (int b = 0; b < own; b++)
            {
                double s = 0;
                for (int t = b * 10; t < b * 10 + 10; t++)
                    for (int i = 0; i < 16; i++) s += p.Q[q * 16 + i] * (double)p.K[t * 16 + i] / 10;
                scores.Add((s, b));
            }
            var top = scores.OrderByDescending(t => t.S).Take(2).Select(t => t.B).ToHashSet();
            top.Add(own);
            for (int k = 0; k <= q; k++) Assert.Equal(top.Contains(k / 10), plan.Mask.IsVisible(0, 0, q, k));
        }
    }
}
