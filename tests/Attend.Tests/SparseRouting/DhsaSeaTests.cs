using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Attend.Workloads;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class DhsaSeaTests
{
    [Fact]
    public void DhsaCutsWhereKeysChangeAndKeepsChunkLengthsInRange()
    {
        // Keys made of runs of one direction each (lengths 40, 70, 25+…): the cuts fall on run boundaries when
        // those are in reach, and every chunk is in [c/2, 2c].
        Random rng = TestData.Rng(1401);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 300, 1, 1, 16, scale: 0.01);
        int[] runEnds = [40, 110, 150, 220, 300];
        int run = 0;
        for (int t = 0; t < 300; t++)
        {
            if (t == runEnds[run]) run++;
            p.K[t * 16 + run % 16] += 1;
        }
        int[] starts = DHSA.Boundaries(p.Input, 0, 40);
        Assert.Equal([0, 40, 110, 150, 220], starts);
        int[] other = DHSA.Boundaries(RoutingProblem.Random(rng, 1, 1000, 2, 2, 16).Input, 0, 64);
        for (int i = 0; i < other.Length; i++)
        {
            int len = (i + 1 < other.Length ? other[i + 1] : 1000) - other[i];
            Assert.InRange(len, 32, 128);
        }
    }

    [Fact]
    public void DhsaKeepsTheBudgetAndItsOwnChunk()
    {
        Random rng = TestData.Rng(1402);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 400, 2, 1, 32);
        SparsePlan plan = DHSA.Plan(p.Input, new DhsaOptions { ChunkSize = 20, TokenBudget = 60 });
        for (int h = 0; h < 2; h++)
            for (int q = 0; q < 400; q += 13)
            {
                int seen = 0;
                for (int k = 0; k <= q; k++) seen += plan.Mask.IsVisible(0, h, q, k) ? 1 : 0;
                Assert.True(plan.Mask.IsVisible(0, h, q, q), "own chunk");
                Assert.InRange(seen, 1, 60 + 40 + 40); // budget, overshoot by the last whole chunk, plus the own chunk
            }
        p.AssertMatchesReference(plan);
    }

    [Fact]
    public void SeaEstimateRecoversMostOfTheMassOnStructuredAttention()
    {
        // On a workload with stripes and sinks, SEA's estimated top-k must capture far more of the exact attention
        // mass than the same number of blocks chosen without looking (the most recent ones).
        WorkloadOptions o = WorkloadPresets.Get(WorkloadPresets.Stripes, 512, heads: 2, kvHeads: 1, headDim: 64);
        Workload w = WorkloadGenerator.Generate(o, TestData.RunSeed);
        var p = new RoutingProblem { B = 1, T = 512, Tk = 512, H = 2, Hkv = 1, D = 64, Dv = 64, Q = w.Q, K = w.K, V = w.V };
        SparsePlan sea = SEA.Plan(p.Input, new SeaOptions { QueryBlockSize = 32, KeyBlockSize = 32, TopK = 3 });
        // The same budget spent without looking: the diagonal block and the three before it.
        var local = new BlockSelection(1, 1, 512, 512, 32, 32);
        for (int qb = 0; qb < 16; qb++) local.SelectRange(0, 0, qb, qb - 3, qb + 1);
        var recent = new SparsePlan(p.Input, Masks.And(Masks.Causal, local.ToMask()), true, 0);
        double seaRecall = Recall.Of(p, sea, true), baseline = Recall.Of(p, recent, true);
        Assert.True(seaRecall > 0.6 && seaRecall > baseline + 0.1, $"SEA recall {seaRecall:f3} vs {baseline:f3} of a local plan; seed {TestData.RunSeed}");
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1403), 1, 40, 2, 1, 16);
        Assert.Equal("ChunkSize", Assert.Throws<ArgumentOutOfRangeException>(() => DHSA.Plan(p.Input, new() { ChunkSize = 1 })).ParamName);
        Assert.Equal("TokenBudget", Assert.Throws<ArgumentOutOfRangeException>(() => DHSA.Plan(p.Input, new() { TokenBudget = 0 })).ParamName);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => SEA.Plan(p.Input, new() { TopK = 0 })).ParamName);
        Assert.Equal("KeyBlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => SEA.Plan(p.Input, new() { KeyBlockSize = 0 })).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 40, 2, 16), new MethodTensor(p.K, 1, 40, 1, 16), new MethodTensor(p.V, 1, 40, 1, 16));
        Assert.Equal("budget", Assert.Throws<ArgumentException>(() => new DhsaMethod().Run(inputs, MethodArguments.Parse(["budget=0"]))).ParamName);
        Assert.Equal("top-k", Assert.Throws<ArgumentException>(() => new SeaMethod().Run(inputs, MethodArguments.Parse(["top-k=0"]))).ParamName);
    }
}
