using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>
/// The Routing Transformer's sorted form computes exactly the plan's pairs: against the float64 reference of the
/// plan's mask, on dense and packed batches, causal and bidirectional, with and without the local window.
/// </summary>
public class ClusterSortedAttentionTests
{
    private static (float[] O, float[] Lse) RunSorted(RoutingProblem p, SparsePlan plan, float? scale = null)
    {
        float[] o = TestData.Poisoned<float>((long)p.B * p.T * p.H * p.Dv), lse = TestData.Poisoned<float>((long)p.B * p.H * p.T);
        ClusterSortedAttention.Forward(p.Q, p.K, p.V, plan, p.Dv, scale, o, lse);
        return (o, lse);
    }

    private static void AssertSortedMatchesPlan(RoutingProblem p, SparsePlan plan, float? scale = null, double tolerance = 2e-5)
    {
        var (o, lse) = RunSorted(p, plan, scale);
        ReferenceForwardResult r = p.Reference(plan.Options(scale));
        foreach (float x in o) Assert.False(float.IsNaN(x), $"NaN in the sorted form's output; {p}");
        double err = TestData.RelativeError<float>(o, r.Output);
        Assert.True(err < tolerance, $"sorted form vs the float64 reference of the plan: output error {err:g3}; {p}");
        double lseErr = TestData.LseError(lse, r.Lse);
        Assert.True(lseErr < 1e-4, $"sorted form LSE error {lseErr:g3}; {p}");
    }

    [Theory]
    [InlineData(2, 150, 4, 2, 32, 6, true, 5)]    // dense batch, GQA 2, causal, window
    [InlineData(1, 97, 3, 1, 64, 0, true, 7)]     // routing alone: rows whose cluster has no earlier key are empty
    [InlineData(1, 130, 2, 2, 48, 3, false, 4)]   // bidirectional: the cluster's keys on both sides of the window
    [InlineData(1, 1, 2, 1, 32, 4, true, 1)]      // T = 1
    [InlineData(1, 200, 8, 2, 128, 64, true, 14)] // the default window, √T clusters, D = 128
    public void SortedFormEqualsTheReferenceOfThePlan(int b, int t, int h, int hkv, int d, int window, bool causal, int clusters)
    {
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster") + t * 31 + window);
        RoutingProblem p = RoutingProblem.Random(rng, b, t, h, hkv, d);
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = clusters, Window = window, Causal = causal });
        AssertSortedMatchesPlan(p, plan);
    }

    [Theory]
    [InlineData(true, 5)]
    [InlineData(false, 0)]
    public void DecodeShapedQueriesAgainstLongerKeys(bool causal, int window)
    {
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster-decode") + window);
        RoutingProblem p = RoutingProblem.Random(rng, 2, 9, 2, 1, 32, tk: 75);
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 6, Window = window, Causal = causal });
        AssertSortedMatchesPlan(p, plan, scale: 0.3f);
    }

    [Fact]
    public void PackedBatchKeepsEachSequenceApart()
    {
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster-varlen"));
        RoutingProblem p = RoutingProblem.Random(rng, 1, 0, 4, 2, 32, lens: [1, 37, 66, 5]);
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 5, Window = 4 });
        AssertSortedMatchesPlan(p, plan);
    }

    [Fact]
    public void LargeLogitsAndAnEmptyLseSpan()
    {
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster-large"));
        RoutingProblem p = RoutingProblem.Random(rng, 1, 90, 2, 1, 64, scale: 12.0);
        SparsePlan plan = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 4, Window = 3 });
        // Logits in the thousands: the float32 softmax and the merge's weights round at ~1e-5 of the output.
        AssertSortedMatchesPlan(p, plan, tolerance: 1e-4);
        float[] o = TestData.Poisoned<float>((long)p.T * p.H * p.Dv);
        ClusterSortedAttention.Forward(p.Q, p.K, p.V, plan, p.Dv, null, o, default);
        var (withLse, _) = RunSorted(p, plan);
        Assert.Equal(withLse, o);
    }

    [Fact]
    public void MaskWordsAndBlockKindsAgreeWithTheMaskItself()
    {
        // Segments of ascending positions as the sorted form builds them, random gaps, several windows.
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster-mask"));
        foreach (bool causal in new[] { true, false })
            foreach (int window in new[] { 0, 1, 5 })
            {
                int[] qLens = [70, 1, 130], kLens = [90, 3, 129];
                var qPos = new List<int>();
                var kPos = new List<int>();
                for (int s = 0; s < qLens.Length; s++)
                {
                    qPos.AddRange(AscendingPositions(rng, qLens[s]));
                    kPos.AddRange(AscendingPositions(rng, kLens[s]));
                }
                SeqOffsets qo = SeqOffsets.FromLengths(qLens), ko = SeqOffsets.FromLengths(kLens);
                var mask = new SortedClusterMask(qPos.ToArray(), kPos.ToArray(), qo, ko, window, causal);
                for (int s = 0; s < qLens.Length; s++)
                {
                    int shift = kLens[s] - qLens[s];
                    for (int r = 0; r < qLens[s]; r++)
                        for (int k0 = 0; k0 < kLens[s]; k0 += 64)
                        {
                            ulong expected = 0;
                            for (int j = 0; j < 64 && k0 + j < kLens[s]; j++)
                            {
                                long p = qPos[qo.Start(s) + r], pk = kPos[ko.Start(s) + k0 + j];
                                bool visible = pk <= p - window || (!causal && pk >= p + window);
                                Assert.Equal(visible, mask.IsVisible(s, 0, r + shift, k0 + j));
                                if (visible) expected |= 1UL << j;
                            }
                            Assert.Equal(expected, mask.RowWord(s, 0, r + shift, k0, ulong.MaxValue));
                        }
                    for (int q0 = shift - 16; q0 < qLens[s] + shift; q0 += 16)
                        for (int k0 = -8; k0 < kLens[s] + 8; k0 += 24)
                        {
                            BlockKind kind = mask.ClassifyBlock(s, 0, q0, q0 + 16, k0, k0 + 24);
                            BlockKind truth = BlockClassifier.ByEvaluation(mask, s, 0, q0, q0 + 16, k0, k0 + 24);
                            if (truth == BlockKind.Empty) Assert.NotEqual(BlockKind.Full, kind);
                            if (truth != BlockKind.Empty) Assert.NotEqual(BlockKind.Empty, kind);
                            if (kind == BlockKind.Full) Assert.Equal(BlockKind.Full, truth);
                            if (kind == BlockKind.Empty) Assert.Equal(BlockKind.Empty, truth);
                        }
                }
            }
    }

    [Fact]
    public void MethodRunsSortedByDefaultWithTheMaskFormsResult()
    {
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster-method"));
        RoutingProblem p = RoutingProblem.Random(rng, 1, 120, 2, 1, 32);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, p.T, p.H, p.D), new MethodTensor(p.K, 1, p.Tk, p.Hkv, p.D), new MethodTensor(p.V, 1, p.Tk, p.Hkv, p.Dv));
        var method = new RoutingTransformerMethod();
        MethodResult sorted = method.Run(inputs, MethodArguments.Parse(["clusters=6", "window=8"]));
        MethodResult masked = method.Run(inputs, MethodArguments.Parse(["clusters=6", "window=8", "sorted=false"]));
        Assert.StartsWith("cluster-sorted", sorted.Report.First(e => e.Key == "kernel").Value);
        Assert.Equal(masked.Density, sorted.Density);
        double err = TestData.RelativeError<float>(sorted.Output.Data, Array.ConvertAll(masked.Output.Data, x => (double)x));
        Assert.True(err < 1e-5, $"sorted vs mask form: {err:g3}; {p}");
    }

    [Fact]
    public void RefusesAPlanThatIsNotClusterRoutingAndWrongSpans()
    {
        Random rng = TestData.Rng(TestData.Salt("sorted-cluster-args"));
        RoutingProblem p = RoutingProblem.Random(rng, 1, 40, 2, 1, 32);
        SparsePlan routing = RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 3 });
        var o = new float[p.T * p.H * p.Dv];
        var e = Assert.Throws<ArgumentException>(() => ClusterSortedAttention.Forward(p.Q, p.K, p.V, routing, p.Dv, null, o.AsSpan(1), default));
        Assert.Equal("output", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => ClusterSortedAttention.Forward(p.Q.AsSpan(2), p.K, p.V, routing, p.Dv, null, o, default));
        Assert.Equal("q", e.ParamName);
        SparsePlan other = LandmarkAttention.Plan(p.Input, new LandmarkOptions { TopK = 2 });
        e = Assert.Throws<ArgumentException>(() => ClusterSortedAttention.Forward(p.Q, p.K, p.V, other, p.Dv, null, o, default));
        Assert.Equal("plan", e.ParamName);
    }

    private static IEnumerable<int> AscendingPositions(Random rng, int count)
    {
        int at = rng.Next(-3, 4);
        for (int i = 0; i < count; i++)
        {
            at += rng.Next(1, 6);
            yield return at;
        }
    }
}
