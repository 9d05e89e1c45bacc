using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class LongHeadsTests
{
    [Theory]
    [InlineData(8f)]
    [InlineData(40f)] // needle logit ≈ 200: the chunk summary's softmax must not overflow
    public void FindsANeedleItsOwnChunkFindsSalient(float strength)
    {
        // The needle's neighbours attend to it (as a passkey's surrounding tokens do), so the chunk summary points at
        // it; a far query block asking for it must then select the needle's chunk in every head.
        Random rng = TestData.Rng(1501);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 512, 4, 2, 64, scale: 0.5);
        p.PlantNeedle(rng, position: 37, firstRow: 448, strength: strength);
        for (int row = 32; row < 48; row++)
            for (int h = 0; h < 4; h++)
                for (int i = 0; i < 64; i++) p.Q[(row * 4 + h) * 64 + i] = p.Q[(511 * 4 + h) * 64 + i];
        SparsePlan plan = LongHeads.Plan(p.Input, new LongHeadsOptions { ChunkSize = 16, Chunks = 4 });
        p.AssertFindsNeedle(plan, 37, 448);
    }

    [Fact]
    public void EveryHeadKeepsFirstAndOwnChunkAndItsBudget()
    {
        Random rng = TestData.Rng(1502);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 300, 4, 1, 32);
        SparsePlan plan = LongHeads.Plan(p.Input, new LongHeadsOptions { ChunkSize = 20, Chunks = 4 });
        Assert.True(plan.Mask.DependsOnHead);
        for (int h = 0; h < 4; h++)
            for (int q = 0; q < 300; q += 11)
            {
                var chunks = new HashSet<int>();
                for (int k = 0; k <= q; k++) if (plan.Mask.IsVisible(0, h, q, k)) chunks.Add(k / 20);
                Assert.Contains(0, chunks);
                Assert.Contains(q / 20, chunks);
                Assert.InRange(chunks.Count, 1, 4);
            }
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1503), 1, 40, 2, 1, 16);
        Assert.Equal("Chunks", Assert.Throws<ArgumentOutOfRangeException>(() => LongHeads.Plan(p.Input, new() { Chunks = 1 })).ParamName);
        Assert.Equal("ChunkSize", Assert.Throws<ArgumentOutOfRangeException>(() => LongHeads.Plan(p.Input, new() { ChunkSize = 0 })).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 40, 2, 16), new MethodTensor(p.K, 1, 40, 1, 16), new MethodTensor(p.V, 1, 40, 1, 16));
        Assert.Equal("chunks", Assert.Throws<ArgumentException>(() => new LongHeadsMethod().Run(inputs, MethodArguments.Parse(["chunks=1"]))).ParamName);
    }
}
