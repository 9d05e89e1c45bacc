using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class RoutingTransformerTests
{
    // The nearest centroid by float64 cosine, recomputed independently of the selector.
    private static int Nearest(RoutingCentroids c, int head, ReadOnlySpan<float> v)
    {
        int best = 0;
        double bestScore = double.NegativeInfinity;
        for (int i = 0; i < c.Clusters; i++)
        {
            double s = 0;
            ReadOnlySpan<float> mu = c.Centroid(head, i);
            for (int x = 0; x < v.Length; x++) s += (double)mu[x] * v[x];
            if (s > bestScore + 1e-9) { bestScore = s; best = i; }
        }
        return best;
    }

    [Fact]
    public void MaskIsSameClusterOrLocalWindowAndDensityIsExact()
    {
        Random rng = TestData.Rng(1101);
        RoutingProblem p = RoutingProblem.Random(rng, 2, 150, 4, 2, 32);
        SelectorInput x = p.Input;
        RoutingCentroids centroids = RoutingCentroids.Fit(x, 5, 2);
        SparsePlan plan = RoutingTransformer.Plan(x, new RoutingTransformerOptions { Window = 6 }, centroids);
        var mask = (ClusterMask)plan.Mask;
        long visible = 0;
        for (int s = 0; s < 2; s++)
            for (int h = 0; h < 4; h++)
            {
                var kc = new int[150];
                for (int k = 0; k < 150; k++) kc[k] = Nearest(centroids, h, x.KeyRow(s, h / 2, k));
                for (int q = 0; q < 150; q++)
                {
                    int qc = Nearest(centroids, h, x.QueryRow(s, h, q));
                    Assert.Equal(qc, mask.QueryCluster(s, h, q));
                    for (int k = 0; k < 150; k++)
                    {
                        bool expected = k <= q && (q - k < 6 || qc == kc[k]);
                        Assert.Equal(expected, plan.Mask.IsVisible(s, h, q, k));
                        if (expected) visible++;
                    }
                }
            }
        Assert.Equal(visible, plan.ComputedPairs);
        Assert.Equal(visible, plan.Blocks.VisiblePairs()); // the O(T) count agrees with the block walk
    }

    [Theory]
    [InlineData(false, 0)]
    [InlineData(true, 3)]
    public void BidirectionalAndDecodeCountsAgreeWithBlockWalk(bool causal, int window)
    {
        Random rng = TestData.Rng(1102 + window);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 7, 2, 1, 16, tk: 90);
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 4, Window = window, Causal = causal });
        Assert.Equal(plan.Blocks.VisiblePairs() * 2 / plan.Blocks.Heads, plan.ComputedPairs);
        p.AssertMatchesReference(plan);
    }

    [Fact]
    public void CentroidUpdateIsTheMovingAverageOfRoutedMeans()
    {
        Random rng = TestData.Rng(1103);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 40, 2, 1, 8);
        SelectorInput x = p.Input;
        RoutingCentroids c = RoutingCentroids.Fit(x, 3, 0);
        var before = new float[2 * 3 * 8];
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 3; k++) c.Centroid(h, k).CopyTo(before.AsSpan((h * 3 + k) * 8, 8));
        const double decay = 0.75;
        // Expected, in float64: the means of the unit queries and keys routed to each centroid.
        var expected = new double[before.Length];
        for (int h = 0; h < 2; h++)
        {
            var sq = new double[3, 8];
            var sk = new double[3, 8];
            var nq = new int[3];
            var nk = new int[3];
            for (int t = 0; t < 40; t++)
            {
                foreach (bool isQuery in new[] { true, false })
                {
                    ReadOnlySpan<float> v = isQuery ? x.QueryRow(0, h, t) : x.KeyRow(0, 0, t);
                    double norm = 0;
                    foreach (float f in v) norm += f * f;
                    norm = Math.Sqrt(norm);
                    int cl = Nearest(c, h, v);
                    for (int i = 0; i < 8; i++) (isQuery ? sq : sk)[cl, i] += v[i] / norm;
                    (isQuery ? nq : nk)[cl]++;
                }
            }
            for (int k = 0; k < 3; k++)
            {
                int sides = (nq[k] > 0 ? 1 : 0) + (nk[k] > 0 ? 1 : 0);
                var mu = new double[8];
                double norm = 0;
                for (int i = 0; i < 8; i++)
                {
                    double target = sides == 0 ? 0 : ((nq[k] > 0 ? sq[k, i] / nq[k] : 0) + (nk[k] > 0 ? sk[k, i] / nk[k] : 0)) / sides;
                    mu[i] = sides == 0 ? before[(h * 3 + k) * 8 + i] : decay * before[(h * 3 + k) * 8 + i] + (1 - decay) * target;
                    norm += mu[i] * mu[i];
                }
                for (int i = 0; i < 8; i++) expected[(h * 3 + k) * 8 + i] = mu[i] / Math.Sqrt(norm);
            }
        }
        c.Update(x, decay);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 3; k++)
                for (int i = 0; i < 8; i++)
                    Assert.True(Math.Abs(c.Centroid(h, k)[i] - expected[(h * 3 + k) * 8 + i]) < 1e-5, $"head {h} centroid {k} [{i}]; seed {TestData.RunSeed}");
    }

    [Fact]
    public void OnClusteredKeysTheRoutedMassFarExceedsTheDensity()
    {
        // The workload generator's clustered keys: a query favours its cluster's keys wherever they are. Content
        // routing must cover much more of the exact attention mass than its density (random choice would match it).
        Attend.Workloads.WorkloadOptions o = Attend.Workloads.WorkloadPresets.Get(Attend.Workloads.WorkloadPresets.Clusters, 512, heads: 2, kvHeads: 1, headDim: 64);
        Attend.Workloads.Workload w = Attend.Workloads.WorkloadGenerator.Generate(o, TestData.RunSeed);
        var p = new RoutingProblem { B = 1, T = 512, Tk = 512, H = 2, Hkv = 1, D = 64, Dv = 64, Q = w.Q, K = w.K, V = w.V };
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Window = 8 });
        double recall = Recall.Of(p, plan, true);
        Assert.True(recall > 3 * plan.Density, $"recall {recall:f3} at density {plan.Density:f3}; seed {TestData.RunSeed}");
    }

    [Fact]
    public void BackwardMatchesFloat64ReferenceOfThePlan()
    {
        Random rng = TestData.Rng(1104);
        RoutingProblem p = RoutingProblem.Random(rng, 2, 97, 4, 2, 32);
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 4, Window = 5 });
        RoutingBackward.AssertMatchesReference(p, plan);
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1105), 1, 20, 2, 1, 16);
        Assert.Equal("Clusters", Assert.Throws<ArgumentOutOfRangeException>(() => RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 21 })).ParamName);
        Assert.Equal("Clusters", Assert.Throws<ArgumentOutOfRangeException>(() => RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 0 })).ParamName);
        Assert.Equal("Window", Assert.Throws<ArgumentOutOfRangeException>(() => RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Window = -1 })).ParamName);
        RoutingCentroids c = RoutingCentroids.Fit(p.Input, 2, 1);
        Assert.Equal("decay", Assert.Throws<ArgumentOutOfRangeException>(() => c.Update(p.Input, 1.5)).ParamName);
        RoutingProblem other = RoutingProblem.Random(TestData.Rng(1106), 1, 20, 4, 1, 16);
        Assert.Throws<ArgumentException>(() => RoutingTransformer.Plan(other.Input, null, c));
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 20, 2, 16), new MethodTensor(p.K, 1, 20, 1, 16), new MethodTensor(p.V, 1, 20, 1, 16));
        Assert.Equal("clusters", Assert.Throws<ArgumentException>(() => new RoutingTransformerMethod().Run(inputs, MethodArguments.Parse(["clusters=0"]))).ParamName);
    }
}
