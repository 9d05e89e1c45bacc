using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class BiFormerTests
{
    [Fact]
    public void RoutesTopKRegionsByPooledAffinity()
    {
        Random rng = TestData.Rng(1001);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 128, 2, 1, 32);
        var options = new BiFormerOptions { RegionSize = 16, TopK = 3, Causal = false, PerHead = true };
        SparsePlan plan = BiFormer.Plan(p.Input, options);
        // Recompute the affinity of one head in float64 and check the chosen regions are its top 3.
        int h = 1, regions = 8;
        var qbar = new double[regions, p.D];
        var kbar = new double[regions, p.D];
        for (int t = 0; t < 128; t++)
            for (int i = 0; i < p.D; i++)
            {
                qbar[t / 16, i] += p.Q[((long)t * p.H + h) * p.D + i] / 16.0;
                kbar[t / 16, i] += p.K[(long)t * p.D + i] / 16.0;
            }
        for (int qr = 0; qr < regions; qr++)
        {
            var scores = new double[regions];
            for (int kr = 0; kr < regions; kr++)
                for (int i = 0; i < p.D; i++) scores[kr] += qbar[qr, i] * kbar[kr, i];
            var top = Enumerable.Range(0, regions).OrderByDescending(kr => scores[kr]).Take(3).ToHashSet();
            for (int kr = 0; kr < regions; kr++)
                Assert.Equal(top.Contains(kr), plan.Mask.IsVisible(0, h, qr * 16 + 5, kr * 16 + 7));
        }
        Assert.Equal(3.0 / 8, plan.Density, 12);
    }

    [Fact]
    public void SharedRoutingIsTheSameForEveryHead()
    {
        Random rng = TestData.Rng(1002);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 96, 4, 2, 32);
        SparsePlan plan = BiFormer.Plan(p.Input, new BiFormerOptions { RegionSize = 16, TopK = 2 });
        Assert.False(plan.Mask.DependsOnHead);
        for (int q = 0; q < 96; q += 7)
            for (int k = 0; k <= q; k++)
                Assert.Equal(plan.Mask.IsVisible(0, 0, q, k), plan.Mask.IsVisible(0, 3, q, k));
    }

    [Fact]
    public void BackwardMatchesFloat64ReferenceOfThePlan()
    {
        Random rng = TestData.Rng(1003);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 0, 4, 2, 32, lens: [90, 51]);
        SparsePlan plan = BiFormer.Plan(p.Input, new BiFormerOptions { RegionSize = 16, TopK = 2, PerHead = true });
        RoutingBackward.AssertMatchesReference(p, plan);
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1004), 1, 32, 1, 1, 16);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => BiFormer.Plan(p.Input, new BiFormerOptions { TopK = 0 })).ParamName);
        Assert.Equal("RegionSize", Assert.Throws<ArgumentOutOfRangeException>(() => BiFormer.Plan(p.Input, new BiFormerOptions { RegionSize = 0 })).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 32, 1, 16), new MethodTensor(p.K, 1, 32, 1, 16), new MethodTensor(p.V, 1, 32, 1, 16));
        var e = Assert.Throws<ArgumentException>(() => new BiFormerMethod().Run(inputs, MethodArguments.Parse(["top-k=0"])));
        Assert.Equal("top-k", e.ParamName);
    }
}
