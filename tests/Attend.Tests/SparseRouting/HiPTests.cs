using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class HiPTests
{
    [Fact]
    public void KeepsAtMostTopKBlocksPlusTheDiagonalAndFindsThePeak()
    {
        // Keys whose score against every query rises smoothly to a peak block (attention locality, which the tree
        // search relies on): the search must keep the peak.
        Random rng = TestData.Rng(1201);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 512, 2, 1, 32, scale: 0.05);
        var u = new float[32];
        u[3] = 1;
        int peakBlock = 11;
        for (int t = 0; t < 512; t++)
        {
            float height = 4f - 0.3f * Math.Abs(t / 16 - peakBlock) + 0.01f * (float)rng.NextDouble();
            for (int i = 0; i < 32; i++) p.K[t * 32 + i] += height * u[i];
            for (int h = 0; h < 2; h++) p.Q[(t * 2 + h) * 32 + 3] += 2f;
        }
        SparsePlan plan = HiP.Plan(p.Input, new HiPOptions { QueryBlockSize = 16, KeyBlockSize = 16, TopK = 3 });
        for (int h = 0; h < 2; h++)
            for (int qb = 0; qb < 32; qb++)
            {
                int kept = 0;
                for (int kb = 0; kb <= qb; kb++) kept += plan.Mask.IsVisible(0, h, qb * 16 + 15, kb * 16) ? 1 : 0;
                Assert.InRange(kept, Math.Min(qb + 1, 1), 4);
                if (qb > peakBlock) Assert.True(plan.Mask.IsVisible(0, h, qb * 16 + 15, peakBlock * 16), $"query block {qb} head {h} misses the peak; seed {TestData.RunSeed}");
            }
        p.AssertMatchesReference(plan);
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1202), 1, 32, 1, 1, 16);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => HiP.Plan(p.Input, new HiPOptions { TopK = 0 })).ParamName);
        Assert.Equal("KeyBlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => HiP.Plan(p.Input, new HiPOptions { KeyBlockSize = 0 })).ParamName);
        Assert.Equal("QueryBlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => HiP.Plan(p.Input, new HiPOptions { QueryBlockSize = -3 })).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 32, 1, 16), new MethodTensor(p.K, 1, 32, 1, 16), new MethodTensor(p.V, 1, 32, 1, 16));
        Assert.Equal("top-k", Assert.Throws<ArgumentException>(() => new HiPMethod().Run(inputs, MethodArguments.Parse(["top-k=0"]))).ParamName);
    }
}
