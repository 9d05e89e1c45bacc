using Attend.Methods.Sparse;
using Attend.Methods.Sparse.Dynamic;
using Xunit;

namespace Attend.Tests.SparseDynamic;

/// <summary>
/// AnchorAttention's stripes (streamed per strip of query blocks, keys transposed once per KV head) against the float64
/// definition of its selection: the mean query of each 64-row block, scaled, against every key; the anchor is the
/// largest estimate over the sinks and the block's window; a key in [64, p_last − 64] is kept when its estimate ≥
/// anchor − θ. Keys whose float64 estimate lies within a rounding margin of the threshold may go either way.
/// </summary>
public class AnchorSelectionTests
{
    private const double Margin = 1e-3;

    [Theory]
    [InlineData(new[] { 1100 }, 4, 1, 64, 0.3)] // several strips of 16 blocks, GQA 4:1, a short last block
    [InlineData(new[] { 700, 1, 0, 1234 }, 4, 2, 32, 0.5)] // varlen with an empty and a one-token sequence
    [InlineData(new[] { 129 }, 2, 2, 48, 0.0)] // odd head dim, T just over two blocks
    [InlineData(new[] { 2100 }, 2, 1, 128, 1.0)]
    public void StripesEqualTheFloat64Selection(int[] lens, int heads, int kvHeads, int dim, double theta)
    {
        Random rng = TestData.Rng(4301 + lens.Sum() + dim);
        int total = lens.Sum();
        var q = TestData.Gaussian<float>(rng, (long)total * heads * dim);
        var k = TestData.Gaussian<float>(rng, (long)total * kvHeads * dim);
        var v = TestData.Gaussian<float>(rng, (long)total * kvHeads * dim);
        // A few strong keys, so the selection keeps some stripes and drops others.
        for (int j = 0; j < total; j += 97)
            for (int x = 0; x < dim; x++) k[((long)j * kvHeads) * dim + x] *= 3;
        SeqOffsets? offsets = lens.Length > 1 ? SeqOffsets.FromLengths(lens) : null;
        var options = new AnchorAttentionOptions { Theta = theta, Offsets = offsets };
        HybridSparsePlan plan = AnchorAttention.BuildPlan(TestData.Bthd(q, 1, total, heads, dim), TestData.Bthd(k, 1, total, kvHeads, dim),
            TestData.Bthd(v, 1, total, kvHeads, dim), options);

        double scale = 1 / Math.Sqrt(dim);
        int start = 0, kept = 0, dropped = 0;
        for (int s = 0; s < lens.Length; s++)
        {
            int t = lens[s];
            for (int h = 0; h < heads; h++)
            {
                int hk = h / (heads / kvHeads);
                for (int qb = 0; qb * 64 < t; qb++)
                {
                    int i0 = qb * 64, mr = Math.Min(64, t - i0), pLast = i0 + mr - 1;
                    var mean = new double[dim];
                    for (int r = i0; r <= pLast; r++)
                        for (int x = 0; x < dim; x++) mean[x] += q[((long)(start + r) * heads + h) * dim + x] / mr;
                    var est = new double[pLast + 1];
                    for (int j = 0; j <= pLast; j++)
                    {
                        double dot = 0;
                        for (int x = 0; x < dim; x++) dot += mean[x] * k[((long)(start + j) * kvHeads + hk) * dim + x];
                        est[j] = dot * scale;
                    }
                    double anchor = double.NegativeInfinity;
                    for (int j = 0; j < Math.Min(64, pLast + 1); j++) anchor = Math.Max(anchor, est[j]);
                    for (int j = Math.Max(0, i0 - 63); j <= pLast; j++) anchor = Math.Max(anchor, est[j]);
                    double threshold = anchor - theta;
                    var chosen = new HashSet<int>(plan.Tokens.BlockColumns(s, h, qb).ToArray());
                    for (int j = 0; j < t; j++)
                    {
                        bool candidate = j >= 64 && j <= pLast - 64;
                        if (!candidate)
                        {
                            Assert.False(chosen.Contains(j), $"seq {s} head {h} block {qb}: key {j} is outside the stripe range; seed {TestData.RunSeed}");
                            continue;
                        }
                        if (est[j] >= threshold + Margin)
                        {
                            Assert.True(chosen.Contains(j), $"seq {s} head {h} block {qb}: key {j} (estimate {est[j]:F4} ≥ {threshold:F4}) missing; seed {TestData.RunSeed}");
                            kept++;
                        }
                        else if (est[j] < threshold - Margin)
                        {
                            Assert.False(chosen.Contains(j), $"seq {s} head {h} block {qb}: key {j} (estimate {est[j]:F4} < {threshold:F4}) kept; seed {TestData.RunSeed}");
                            dropped++;
                        }
                    }
                    // Sinks and the window are always computed, as vertical columns and diagonals.
                    Assert.Equal(Math.Min(64, t), plan.Tokens.Vertical(s, h).Length);
                }
            }
            start += t;
        }
        if (total > 1000)
        {
            Assert.True(kept > 0, "the test should keep some stripes");
            Assert.True(dropped > 0, "the test should drop some stripes");
        }
    }
}
