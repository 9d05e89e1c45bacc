using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>
/// DELTA, Landmark and Recycled split their selection into work items of (sequence, head, run of query blocks or
/// periods). Sequences long enough for several items per head must still select, in every item, what the float64
/// definition selects: checked on query blocks / rows / periods in the first and in later items.
/// </summary>
public class SelectorWorkItemTests
{
    private static double Dot(RoutingProblem p, int row, int h, int key)
    {
        double dot = 0;
        int g = p.H / p.Hkv;
        for (int i = 0; i < p.D; i++) dot += (double)p.Q[((long)row * p.H + h) * p.D + i] * p.K[((long)key * p.Hkv + h / g) * p.D + i];
        return dot;
    }

    [Fact]
    public void DeltaSelectsTheHeadSummedTopKInEveryItem()
    {
        Random rng = TestData.Rng(4600);
        const int t = 600, qbs = 16, topK = 7, sinks = 2, window = 5;
        RoutingProblem p = RoutingProblem.Random(rng, 1, t, 4, 2, 16);
        DeltaSelection sel = DELTA.Select(p.Input, new DeltaOptions { TopK = topK, Sinks = sinks, Window = window, QueryBlockSize = qbs });
        foreach (int qb in new[] { 0, 7, 8, 20, 37 }) // items hold 8 blocks: blocks of the first, second, third and last item
        {
            int last = Math.Min(t, (qb + 1) * qbs) - 1, end = last + 1;
            var importance = new double[end];
            for (int h = 0; h < p.H; h++)
            {
                double[] l = Enumerable.Range(0, end).Select(k => Dot(p, last, h, k) / Math.Sqrt(p.D)).ToArray();
                double max = l.Max(), z = l.Sum(x => Math.Exp(x - max));
                for (int k = 0; k < end; k++) importance[k] += Math.Exp(l[k] - max) / z;
            }
            var expected = Enumerable.Range(0, end).OrderByDescending(k => importance[k]).Take(topK).ToHashSet();
            for (int k = 0; k < Math.Min(sinks, end); k++) expected.Add(k);
            for (int k = Math.Max(0, qb * qbs - window + 1); k < end; k++) expected.Add(k);
            for (int k = 0; k < t; k++)
                Assert.True(expected.Contains(k) == sel.Tokens.IsSelected(0, 0, qb, k), $"block {qb} key {k}; seed {TestData.RunSeed}");
        }
    }

    [Fact]
    public void LandmarkSelectsTheTopBlocksByMeanKeyInEveryItem()
    {
        Random rng = TestData.Rng(4601);
        const int t = 1100, block = 16, topK = 3; // items hold 1024 rows (query blocks of 1 row)
        RoutingProblem p = RoutingProblem.Random(rng, 1, t, 2, 1, 16);
        SparsePlan plan = LandmarkAttention.Plan(p.Input, new LandmarkOptions { BlockSize = block, TopK = topK });
        int blocks = (t + block - 1) / block;
        var landmarks = new double[blocks][];
        for (int b = 0; b < blocks; b++)
        {
            landmarks[b] = new double[p.D];
            int n = Math.Min(t, (b + 1) * block) - b * block;
            for (int k = b * block; k < b * block + n; k++)
                for (int i = 0; i < p.D; i++) landmarks[b][i] += p.K[(long)k * p.D + i] / n;
        }
        foreach (int row in new[] { 100, 1023, 1024, 1099 })
            for (int h = 0; h < p.H; h++)
            {
                int own = row / block;
                double Score(int b) => Enumerable.Range(0, p.D).Sum(i => (double)p.Q[((long)row * p.H + h) * p.D + i] * landmarks[b][i]);
                var expected = Enumerable.Range(0, own).OrderByDescending(Score).Take(topK).ToHashSet();
                expected.Add(own);
                for (int k = 0; k <= row; k++)
                    Assert.True(expected.Contains(k / block) == plan.Mask.IsVisible(0, h, row, k), $"row {row} head {h} key {k}; seed {TestData.RunSeed}");
            }
    }

    [Fact]
    public void RecycledRecordsTheTopKOfEveryFullStepInEveryItem()
    {
        Random rng = TestData.Rng(4602);
        const int t = 1100, stride = 32, topK = 9; // 35 periods: items of 16 periods
        RoutingProblem p = RoutingProblem.Random(rng, 1, t, 2, 2, 16);
        SparsePlan plan = RecycledAttention.Plan(p.Input, new RecycledOptions { Stride = stride, TopK = topK });
        foreach (int period in new[] { 1, 15, 16, 33, 34 })
            for (int h = 0; h < p.H; h++)
            {
                int full = period * stride, row = Math.Min(t - 1, full + 3);
                var expected = Enumerable.Range(0, full + 1).OrderByDescending(k => Dot(p, full, h, k)).Take(topK).ToHashSet();
                for (int k = 0; k <= row; k++)
                {
                    bool visible = k > full || expected.Contains(k);
                    Assert.True(visible == plan.Mask.IsVisible(0, h, row, k), $"period {period} row {row} head {h} key {k}; seed {TestData.RunSeed}");
                }
            }
    }

    [Fact]
    public void RetrievalWithEveryListOpenedFindsTheExactTopKInEveryItem()
    {
        // 2300 keys: the index's assignment runs in two key chunks per group; 2300 query rows of 1: three search items.
        Random rng = TestData.Rng(4603);
        const int t = 2300, topK = 6, sinks = 2, window = 4, lists = 12;
        RoutingProblem p = RoutingProblem.Random(rng, 1, t, 2, 1, 16);
        SparsePlan plan = RetrievalAttention.Plan(p.Input, new RetrievalAttentionOptions
        {
            TopK = topK, Sinks = sinks, Window = window, Lists = lists, Probes = lists, QueryBlockSize = 1,
        });
        foreach (int row in new[] { 10, 1023, 1024, 2100, 2299 })
            for (int h = 0; h < p.H; h++)
            {
                bool Static(int k) => k < sinks || k > row - window;
                var expected = Enumerable.Range(0, row + 1).Where(k => !Static(k)).OrderByDescending(k => Dot(p, row, h, k)).Take(topK).ToHashSet();
                for (int k = 0; k <= row; k++)
                    Assert.True((Static(k) || expected.Contains(k)) == plan.Mask.IsVisible(0, h, row, k), $"row {row} head {h} key {k}; seed {TestData.RunSeed}");
            }
    }

    [Fact]
    public void RoutingCentroidUpdateOverSeveralTokenRunsEqualsTheFloat64LloydStep()
    {
        // 100,000 tokens (queries and keys of two sequences): four runs of 32,768, one cut inside a sequence's keys.
        Random rng = TestData.Rng(4604);
        int[] lens = [20000, 30000];
        RoutingProblem p = RoutingProblem.Random(rng, 1, 0, 2, 1, 8, lens);
        const int clusters = 3;
        var seed = TestData.Gaussian<float>(rng, 2 * clusters * 8);
        var c = new RoutingCentroids(2, clusters, 8, seed);
        var before = new double[2 * clusters * 8];
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < clusters; k++)
                for (int i = 0; i < 8; i++) before[(h * clusters + k) * 8 + i] = c.Centroid(h, k)[i];
        SelectorInput x = p.Input;
        var expected = new double[before.Length];
        for (int h = 0; h < 2; h++)
        {
            var sq = new double[clusters, 8];
            var sk = new double[clusters, 8];
            var nq = new int[clusters];
            var nk = new int[clusters];
            for (int s = 0; s < lens.Length; s++)
                for (int t = 0; t < lens[s]; t++)
                    foreach (bool isQuery in new[] { true, false })
                    {
                        ReadOnlySpan<float> v = isQuery ? x.QueryRow(s, h, t) : x.KeyRow(s, 0, t);
                        double norm = 0;
                        foreach (float f in v) norm += f * f;
                        norm = Math.Sqrt(norm);
                        int cl = c.Nearest(h, v);
                        for (int i = 0; i < 8; i++) (isQuery ? sq : sk)[cl, i] += v[i] / norm;
                        (isQuery ? nq : nk)[cl]++;
                    }
            for (int k = 0; k < clusters; k++)
            {
                int sides = (nq[k] > 0 ? 1 : 0) + (nk[k] > 0 ? 1 : 0);
                var mu = new double[8];
                double norm = 0;
                for (int i = 0; i < 8; i++)
                {
                    mu[i] = sides == 0 ? before[(h * clusters + k) * 8 + i] : ((nq[k] > 0 ? sq[k, i] / nq[k] : 0) + (nk[k] > 0 ? sk[k, i] / nk[k] : 0)) / sides;
                    norm += mu[i] * mu[i];
                }
                for (int i = 0; i < 8; i++) expected[(h * clusters + k) * 8 + i] = mu[i] / Math.Sqrt(norm);
            }
        }
        c.Update(x, 0);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < clusters; k++)
                for (int i = 0; i < 8; i++)
                    Assert.True(Math.Abs(c.Centroid(h, k)[i] - expected[(h * clusters + k) * 8 + i]) < 1e-5, $"head {h} centroid {k} [{i}]; seed {TestData.RunSeed}");
    }
}
