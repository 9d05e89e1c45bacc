using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>DELTA, Recycled Attention and Superlinear: the selections themselves.</summary>
public class TokenSelectorTests
{
    private static double[] Probabilities(RoutingProblem p, int h, int row, int end)
    {
        var l = new double[end];
        for (int k = 0; k < end; k++)
        {
            double dot = 0;
            for (int i = 0; i < p.D; i++) dot += (double)p.Q[(row * p.H + h) * p.D + i] * p.K[(k * p.Hkv + h / (p.H / p.Hkv)) * p.D + i];
            l[k] = dot / Math.Sqrt(p.D);
        }
        double max = l.Max(), z = l.Sum(x => Math.Exp(x - max));
        return [.. l.Select(x => Math.Exp(x - max) / z)];
    }

    [Fact]
    public void DeltaKeepsTheHeadSummedTopKAndASelectionServesLaterLayers()
    {
        Random rng = TestData.Rng(1701);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 96, 4, 2, 16);
        var options = new DeltaOptions { TopK = 5, Sinks = 1, Window = 3, QueryBlockSize = 32 };
        DeltaSelection sel = DELTA.Select(p.Input, options);
        int block = 2, last = 95;
        var importance = new double[96];
        for (int h = 0; h < 4; h++)
        {
            double[] pr = Probabilities(p, h, last, 96);
            for (int k = 0; k < 96; k++) importance[k] += pr[k];
        }
        var expected = Enumerable.Range(0, 96).OrderByDescending(k => importance[k]).Take(5).ToHashSet();
        expected.Add(0);
        for (int k = 64 - 2; k < 96; k++) expected.Add(k);
        for (int k = 0; k < 96; k++) Assert.Equal(expected.Contains(k), sel.Tokens.IsSelected(0, 0, block, k));
        // A later layer (new Q, K of the same shape) attends to that set with every head.
        RoutingProblem later = RoutingProblem.Random(rng, 1, 96, 4, 2, 16);
        SparsePlan plan = DELTA.Plan(later.Input, sel);
        Assert.False(plan.Mask.DependsOnHead);
        for (int k = 0; k < 96; k++) Assert.Equal(expected.Contains(k), plan.Mask.IsVisible(0, 3, 95, k));
        later.AssertMatchesReference(plan);
        RoutingProblem other = RoutingProblem.Random(rng, 1, 50, 4, 2, 16);
        Assert.Equal("selection", Assert.Throws<ArgumentException>(() => DELTA.Plan(other.Input, sel)).ParamName);
    }

    [Fact]
    public void RecycledRowsSeeTheirFullStepsTopKAndTheNewerTokens()
    {
        Random rng = TestData.Rng(1702);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 120, 2, 1, 16);
        SparsePlan plan = RecycledAttention.Plan(p.Input, new RecycledOptions { Stride = 10, TopK = 4 });
        for (int h = 0; h < 2; h++)
            for (int row = 0; row < 120; row++)
            {
                int f = row / 10 * 10;
                var top = Probabilities(p, h, f, f + 1).Select((v, k) => (v, k)).OrderByDescending(t => t.v).Take(4).Select(t => t.k).ToHashSet();
                for (int k = 0; k < 120; k++)
                {
                    bool expected = k <= row && (row == f || k > f || top.Contains(k));
                    Assert.Equal(expected, plan.Mask.IsVisible(0, h, row, k));
                }
            }
        p.AssertMatchesReference(plan);
        // A decode step after the prefill reuses the last period's recorded keys.
        RecycledPattern pattern = RecycledAttention.PatternOf(plan);
        var decode = new RoutingProblem { B = 1, T = 1, Tk = 120, H = 2, Hkv = 1, D = 16, Dv = 16, K = p.K, V = p.V, Q = p.Q.AsSpan(119 * 32, 32).ToArray() };
        SparsePlan step = RecycledAttention.Plan(decode.Input, pattern);
        for (int k = 0; k < 120; k++) Assert.Equal(plan.Mask.IsVisible(0, 1, 119, k), step.Mask.IsVisible(0, 1, 119, k));
        decode.AssertMatchesReference(step);
    }

    [Fact]
    public void SuperlinearSpanLengthsAndBudget()
    {
        Random rng = TestData.Rng(1703);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 512, 2, 1, 16);
        SparsePlan two = SuperlinearAttention.Plan(p.Input, new SuperlinearOptions { Steps = 2, TopK = 3 });
        // N = 2: spans of round(√512) = 23 keys; each query block keeps ≤ 3 spans + its own.
        for (int q = 63; q < 512; q += 64)
        {
            var spans = new HashSet<int>();
            for (int k = 0; k <= q; k++) if (two.Mask.IsVisible(0, 0, q, k)) spans.Add(k / 23);
            Assert.InRange(spans.Count, 1, 4);
            Assert.Contains(q / 23, spans);
        }
        SparsePlan three = SuperlinearAttention.Plan(p.Input, new SuperlinearOptions { Steps = 3, TopK = 3 });
        Assert.True(three.Density < 0.5, $"{three.Density}");
        p.AssertMatchesReference(three);
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1704), 1, 40, 2, 1, 16);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => DELTA.Select(p.Input, new() { TopK = 0 })).ParamName);
        Assert.Equal("Window", Assert.Throws<ArgumentOutOfRangeException>(() => DELTA.Select(p.Input, new() { Window = -2 })).ParamName);
        Assert.Equal("Stride", Assert.Throws<ArgumentOutOfRangeException>(() => RecycledAttention.Plan(p.Input, new RecycledOptions { Stride = 0 })).ParamName);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => RecycledAttention.Plan(p.Input, new RecycledOptions { TopK = 0 })).ParamName);
        Assert.Equal("Steps", Assert.Throws<ArgumentOutOfRangeException>(() => SuperlinearAttention.Plan(p.Input, new() { Steps = 1 })).ParamName);
        Assert.Equal("TopK", Assert.Throws<ArgumentOutOfRangeException>(() => SuperlinearAttention.Plan(p.Input, new() { TopK = 0 })).ParamName);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 40, 2, 16), new MethodTensor(p.K, 1, 40, 1, 16), new MethodTensor(p.V, 1, 40, 1, 16));
        Assert.Equal("stride", Assert.Throws<ArgumentException>(() => new RecycledMethod().Run(inputs, MethodArguments.Parse(["stride=0"]))).ParamName);
        Assert.Equal("top-k", Assert.Throws<ArgumentException>(() => new DeltaMethod().Run(inputs, MethodArguments.Parse(["top-k=0"]))).ParamName);
        Assert.Equal("steps", Assert.Throws<ArgumentException>(() => new SuperlinearMethod().Run(inputs, MethodArguments.Parse(["steps=1"]))).ParamName);
    }
}
