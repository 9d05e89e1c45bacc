using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class SpAttenTests
{
    [Fact]
    public void CascadePrunesTokensByEarlierImportanceAndHeadsByMagnitude()
    {
        Random rng = TestData.Rng(1801);
        RoutingProblem layer1 = RoutingProblem.Random(rng, 1, 0, 4, 2, 16, lens: [60, 37]);
        SparsePlan p1 = SpAtten.Plan(layer1.Input, new SpAttenOptions { TokenKeep = 0.5, QuerySample = 3 });
        layer1.AssertMatchesReference(p1);
        SpAttenState s1 = SpAtten.StateOf(p1);
        Assert.Equal(30, s1.KeptTokens[0].Count(b => b));
        Assert.Equal(19, s1.KeptTokens[1].Count(b => b));
        var (o1, _) = layer1.Run(p1);
        s1.AddHeadImportance(o1, 4, 16);
        int weakest = Array.IndexOf(s1.HeadImportance, s1.HeadImportance.Min());

        RoutingProblem layer2 = RoutingProblem.Random(rng, 1, 0, 4, 2, 16, lens: [60, 37]);
        SparsePlan p2 = SpAtten.Plan(layer2.Input, new SpAttenOptions { TokenKeep = 0.5, HeadKeep = 0.75, QuerySample = 3 }, s1);
        SpAttenState s2 = SpAtten.StateOf(p2);
        for (int s = 0; s < 2; s++)
        {
            // Kept in layer 2 ⊂ kept in layer 1, and they are layer 1's most important among those.
            var survivors = Enumerable.Range(0, s1.KeptTokens[s].Length).Where(k => s1.KeptTokens[s][k]).ToList();
            var expected = survivors.OrderByDescending(k => (float)s1.TokenImportance[s][k]).ThenBy(k => k).Take((survivors.Count + 1) / 2).ToHashSet();
            for (int k = 0; k < s2.KeptTokens[s].Length; k++) Assert.Equal(expected.Contains(k), s2.KeptTokens[s][k]);
        }
        Assert.False(s2.KeptHeads[weakest]);
        Assert.Equal(3, s2.KeptHeads.Count(b => b));
        layer2.AssertMatchesReference(p2); // the pruned head's rows are 0 with LSE −∞, as in the reference
        var (o2, _) = layer2.Run(p2);
        for (int t = 0; t < 97; t++) Assert.Equal(0f, o2[(t * 4 + weakest) * 16]);
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1802), 1, 40, 2, 1, 16);
        Assert.Equal("TokenKeep", Assert.Throws<ArgumentOutOfRangeException>(() => SpAtten.Plan(p.Input, new() { TokenKeep = 0 })).ParamName);
        Assert.Equal("HeadKeep", Assert.Throws<ArgumentOutOfRangeException>(() => SpAtten.Plan(p.Input, new() { HeadKeep = 1.5 })).ParamName);
        Assert.Equal("QuerySample", Assert.Throws<ArgumentOutOfRangeException>(() => SpAtten.Plan(p.Input, new() { QuerySample = 0 })).ParamName);
        SpAttenState s = SpAtten.StateOf(SpAtten.Plan(p.Input));
        RoutingProblem other = RoutingProblem.Random(TestData.Rng(1803), 1, 41, 2, 1, 16);
        Assert.Equal("previous", Assert.Throws<ArgumentException>(() => SpAtten.Plan(other.Input, null, s)).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 40, 2, 16), new MethodTensor(p.K, 1, 40, 1, 16), new MethodTensor(p.V, 1, 40, 1, 16));
        Assert.Equal("token-keep", Assert.Throws<ArgumentException>(() => new SpAttenMethod().Run(inputs, MethodArguments.Parse(["token-keep=0"]))).ParamName);
    }
}
