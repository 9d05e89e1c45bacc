using Attend.Methods.Sparse;
using Xunit;

namespace Attend.Tests.SparseDynamic;

public class VerticalSlashAttentionTests
{
    // Random verticals, slashes (always the local offsets 0..2 so few rows are empty) and, optionally, block columns.
    internal static VerticalSlashPlan RandomPlan(Random rng, int[] qLens, int[] kLens, int heads, bool varlen, bool blockColumns, double pv = 0.08, double ps = 0.08)
    {
        var plan = varlen
            ? new VerticalSlashPlan(SeqOffsets.FromLengths(qLens), SeqOffsets.FromLengths(kLens), heads)
            : new VerticalSlashPlan(qLens.Length, heads, qLens[0], kLens[0]);
        for (int s = 0; s < plan.Sequences; s++)
        {
            int tk = plan.KeyLength(s);
            for (int h = 0; h < heads; h++)
            {
                var vert = new List<int>();
                var slash = new List<int>();
                for (int j = 0; j < tk; j++)
                {
                    if (rng.NextDouble() < pv) vert.Add(j);
                    if (j < 3 || rng.NextDouble() < ps) slash.Add(j);
                }
                plan.SetVertical(s, h, vert.ToArray());
                plan.SetSlash(s, h, slash.ToArray());
                if (!blockColumns) continue;
                for (int qb = 0; qb < plan.QueryBlocks(s); qb++)
                {
                    var cols = new List<int>();
                    for (int j = 0; j < tk; j++)
                        if (rng.NextDouble() < 0.1) cols.Add(j);
                    plan.SetBlockColumns(s, h, qb, cols.ToArray());
                }
            }
        }
        return plan;
    }

    private static (float[] O, float[] Lse) Run(AttnCase c, AttnInputs<float> x, VerticalSlashPlan plan, int? threads = null)
    {
        float[] o = TestData.Poisoned<float>((long)c.B * c.Tq * c.H * c.D);
        float[] lse = TestData.Poisoned<float>((long)c.B * c.H * c.Tq);
        VerticalSlashAttention.Forward<float>(
            TestData.Bthd(x.Q, c.B, c.Tq, c.H, c.D), TestData.Bthd(x.K, c.B, c.Tk, c.Hkv, c.D), TestData.Bthd(x.V, c.B, c.Tk, c.Hkv, c.D),
            plan, c.Options() with { MaxThreads = threads }, TestData.Bthd(o, c.B, c.Tq, c.H, c.D), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        return (o, lse);
    }

    private static ReferenceForwardResult Reference(AttnCase c, AttnInputs<float> x, VerticalSlashPlan plan) =>
        VerticalSlashAttention.Reference<float>(
            TestData.Bthd(x.Q, c.B, c.Tq, c.H, c.D), TestData.Bthd(x.K, c.B, c.Tk, c.Hkv, c.D), TestData.Bthd(x.V, c.B, c.Tk, c.Hkv, c.D),
            plan, c.Options());

    [Theory]
    [InlineData(1, 1, 1, 1, 32, false)]
    [InlineData(1, 37, 37, 2, 64, false)]
    [InlineData(2, 200, 200, 4, 64, true)]
    [InlineData(1, 131, 150, 4, 128, true)] // Tq < Tk (bottom-right aligned), GQA 2
    [InlineData(1, 150, 131, 2, 48, false)] // Tq > Tk: the first rows see nothing
    [InlineData(1, 257, 257, 6, 256, true)]
    public void EqualsFloat64ReferenceOfTheSamePlan(int batch, int tq, int tk, int heads, int dim, bool blockColumns)
    {
        Random rng = TestData.Rng(4100 + tq * 7 + dim + (blockColumns ? 1 : 0));
        int hkv = heads % 2 == 0 ? heads / 2 : heads;
        var c = new AttnCase { B = batch, Tq = tq, Tk = tk, H = heads, Hkv = hkv, D = dim };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        int[] qLens = Enumerable.Repeat(tq, batch).ToArray(), kLens = Enumerable.Repeat(tk, batch).ToArray();
        VerticalSlashPlan plan = RandomPlan(rng, qLens, kLens, heads, varlen: false, blockColumns);
        var (o, lse) = Run(c, x, plan);
        ReferenceForwardResult r = Reference(c, x, plan);
        Assert.True(TestData.RelativeError<float>(o, r.Output) < 1e-5, $"output, seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-5, $"lse, seed {TestData.RunSeed}");
    }

    [Theory]
    [InlineData(0.45, 0.1)] // dense clusters (range tiles) next to isolated diagonals (diagonal path)
    [InlineData(0.9, 0.3)]
    [InlineData(0.02, 0.02)]
    public void MixedRangesDiagonalsAndColumnsCountEachPairOnce(double ps, double pv)
    {
        Random rng = TestData.Rng(4107 + (int)(ps * 100));
        var c = new AttnCase { B = 1, Tq = 300, Tk = 300, H = 4, Hkv = 2, D = 64 };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        VerticalSlashPlan plan = RandomPlan(rng, [300], [300], 4, varlen: false, blockColumns: true, pv, ps);
        var (o, lse) = Run(c, x, plan);
        ReferenceForwardResult r = Reference(c, x, plan);
        Assert.True(TestData.RelativeError<float>(o, r.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-5, $"seed {TestData.RunSeed}");
    }

    // Scattered slash lines (offsets 17–40 apart, each its own cluster) all take the transposed diagonal path; with more
    // than 64 per block they come in several chunks. Verticals and block columns cross them (each pair counted once).
    [Theory]
    [InlineData(new[] { 2000 }, new[] { 2000 }, 4, 1, 128, false)]
    [InlineData(new[] { 700 }, new[] { 900 }, 2, 2, 96, false)] // Tq < Tk, odd number of vectors per row
    [InlineData(new[] { 500 }, new[] { 330 }, 4, 2, 32, false)] // Tq > Tk: early rows see nothing, diagonals start before key 0
    [InlineData(new[] { 613, 1, 0, 1500 }, new[] { 613, 1, 0, 1500 }, 4, 2, 64, true)] // varlen with an empty sequence
    public void ScatteredSlashLinesEqualTheFloat64Reference(int[] qLens, int[] kLens, int heads, int hkv, int dim, bool varlen)
    {
        Random rng = TestData.Rng(4120 + qLens.Sum() + dim);
        var c = new AttnCase { H = heads, Hkv = hkv, D = dim };
        if (varlen) c.SetVarlen(qLens, kLens);
        else
        {
            c.Tq = qLens[0];
            c.Tk = kLens[0];
        }
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 1.5); // large logits
        var plan = varlen
            ? new VerticalSlashPlan(SeqOffsets.FromLengths(qLens), SeqOffsets.FromLengths(kLens), heads)
            : new VerticalSlashPlan(1, heads, qLens[0], kLens[0]);
        for (int s = 0; s < plan.Sequences; s++)
        {
            int tk = plan.KeyLength(s);
            for (int h = 0; h < heads; h++)
            {
                var slash = new List<int>();
                if (tk > 0) slash.Add(0);
                for (int o = 1 + rng.Next(17, 40); o < tk; o += rng.Next(17, 41)) slash.Add(o);
                var vert = new List<int>();
                for (int j = 0; j < tk; j++)
                    if (rng.NextDouble() < 0.03) vert.Add(j);
                plan.SetSlash(s, h, slash.ToArray());
                plan.SetVertical(s, h, vert.ToArray());
                for (int qb = 0; qb < plan.QueryBlocks(s); qb += 2)
                {
                    var cols = new List<int>();
                    for (int j = 0; j < tk; j++)
                        if (rng.NextDouble() < 0.05) cols.Add(j);
                    plan.SetBlockColumns(s, h, qb, cols.ToArray());
                }
            }
        }
        var (o1, lse) = Run(c, x, plan, threads: 2);
        ReferenceForwardResult r = Reference(c, x, plan);
        Assert.True(TestData.RelativeError<float>(o1, r.Output) < 1e-5, $"output, seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-5, $"lse, seed {TestData.RunSeed}");
        Assert.DoesNotContain(o1, v => float.IsNaN(v));
    }

    [Fact]
    public void VarlenWithAnEmptySequenceEqualsReference()
    {
        Random rng = TestData.Rng(4101);
        var c = new AttnCase { H = 4, Hkv = 1, D = 64 };
        int[] lens = [70, 0, 1, 129];
        c.SetVarlen(lens, lens);
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        VerticalSlashPlan plan = RandomPlan(rng, lens, lens, c.H, varlen: true, blockColumns: true);
        var (o, lse) = Run(c, x, plan, threads: 2);
        ReferenceForwardResult r = Reference(c, x, plan);
        Assert.True(TestData.RelativeError<float>(o, r.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-5, $"seed {TestData.RunSeed}");
    }

    [Theory]
    [InlineData(1, 100, 1, 64)]
    [InlineData(2, 191, 2, 96)]
    public void PlanThatKeepsEverythingIsExactCausalAttention(int batch, int t, int hkv, int dim)
    {
        Random rng = TestData.Rng(4102 + t);
        var c = new AttnCase { B = batch, Tq = t, Tk = t, H = 4, Hkv = hkv, D = dim, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 2);
        VerticalSlashPlan plan = VerticalSlashPlan.Everything(batch, c.H, t, t);
        Assert.Equal(1.0, plan.Density, 12);
        float[] o = TestData.Poisoned<float>((long)batch * t * c.H * dim), lse = TestData.Poisoned<float>((long)batch * c.H * t);
        VerticalSlashAttention.Forward<float>(
            TestData.Bthd(x.Q, c.B, t, c.H, dim), TestData.Bthd(x.K, c.B, t, hkv, dim), TestData.Bthd(x.V, c.B, t, hkv, dim),
            plan, null, TestData.Bthd(o, c.B, t, c.H, dim), AttentionLayout.Lse(lse, c.B, c.H, t));
        ReferenceForwardResult exact = Harness.Reference(c, x);
        Assert.True(TestData.RelativeError<float>(o, exact.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, exact.Lse) < 1e-5, $"seed {TestData.RunSeed}");
    }

    [Fact]
    public void EmptyPlanGivesZeroRowsAndMinusInfinityLse()
    {
        var c = new AttnCase { Tq = 70, Tk = 70, H = 2, Hkv = 2, D = 32 };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4103));
        var (o, lse) = Run(c, x, new VerticalSlashPlan(1, 2, 70, 70));
        Assert.All(o, v => Assert.Equal(0f, v));
        Assert.All(lse, v => Assert.True(float.IsNegativeInfinity(v)));
    }

    [Fact]
    public void LargeLogitsAreAsAccurateAsTheFlashKernel()
    {
        // Logits in the hundreds: float32 rounding of near ties dominates, so the bound is relative to the flash
        // kernel's own error on the same (everything-kept) problem.
        Random rng = TestData.Rng(4104);
        var c = new AttnCase { Tq = 130, Tk = 130, H = 2, Hkv = 1, D = 64, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 12);
        var (o, lse) = Run(new AttnCase { Tq = 130, Tk = 130, H = 2, Hkv = 1, D = 64 }, x, VerticalSlashPlan.Everything(1, 2, 130, 130));
        ReferenceForwardResult exact = Harness.Reference(c, x);
        var (flash, flashLse, _, _) = Harness.Forward(c, x, null);
        double mine = TestData.RelativeError<float>(o, exact.Output), theirs = TestData.RelativeError<double>(flash, exact.Output);
        Assert.True(mine <= 4 * theirs + 1e-6, $"token path {mine}, flash {theirs}; seed {TestData.RunSeed}");
        double mineLse = TestData.LseError(lse, exact.Lse), theirsLse = TestData.LseError(flashLse, exact.Lse);
        Assert.True(mineLse <= 4 * theirsLse + 1e-6, $"token path LSE {mineLse}, flash {theirsLse}; seed {TestData.RunSeed}");
    }

    [Fact]
    public void DensityCountsEachPairOnceAndMatchesCoverage()
    {
        Random rng = TestData.Rng(4105);
        VerticalSlashPlan plan = RandomPlan(rng, [90, 90], [100, 100], 3, varlen: false, blockColumns: true, 0.2, 0.2);
        long counted = 0, visible = 0;
        var covered = new bool[100];
        for (int s = 0; s < 2; s++)
            for (int h = 0; h < 3; h++)
                for (int i = 0; i < 90; i++)
                {
                    plan.CoveredKeys(s, h, i, covered);
                    for (int j = 0; j < 100; j++)
                    {
                        Assert.Equal(covered[j], plan.Covers(s, h, i, j));
                        if (covered[j]) counted++;
                        if (j <= i + 10) visible++;
                    }
                }
        Assert.Equal(counted, plan.ComputedPairs());
        Assert.Equal(visible, plan.CausalPairs());
    }

    [Fact]
    public void BadPlansAndOptionsNameTheArgument()
    {
        var plan = new VerticalSlashPlan(1, 2, 10, 10);
        Assert.Equal("keys", Assert.Throws<ArgumentOutOfRangeException>(() => plan.SetVertical(0, 0, [10])).ParamName);
        Assert.Equal("offsets", Assert.Throws<ArgumentOutOfRangeException>(() => plan.SetSlash(0, 1, [-1])).ParamName);
        Assert.Equal("head", Assert.Throws<ArgumentOutOfRangeException>(() => plan.SetSlash(0, 2, [0])).ParamName);
        Assert.Equal("queryBlock", Assert.Throws<ArgumentOutOfRangeException>(() => plan.SetBlockColumns(0, 0, 1, [0])).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentOutOfRangeException>(() => new VerticalSlashPlan(1, 0, 10, 10)).ParamName);
        var c = new AttnCase { Tq = 10, Tk = 10, H = 4, Hkv = 2, D = 16 };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4106));
        Assert.Equal("plan", Assert.Throws<ArgumentException>(() => Run(c, x, plan)).ParamName);
        c.Mask = Masks.Causal;
        Assert.Equal("options", Assert.Throws<ArgumentException>(() => Run(c, x, new VerticalSlashPlan(1, 4, 10, 10))).ParamName);
    }
}
