using Attend.Cuda.Sparse;
using Attend.Methods;
using Attend.Methods.Sparse;
using Attend.Methods.Sparse.Dynamic;
using Attend.Tests.CudaSparse;
using Xunit;

namespace Attend.Tests.SparseDynamic;

/// <summary>
/// <see cref="SlashCoverage.Blocks"/>: the covering key ranges of MInference's own kernel. The ranges are checked on
/// hand-worked blocks and against the rule's properties; the CPU kernel against the float64 reference of the same
/// definition (<see cref="VerticalSlashAttention.Reference{T}"/> reads <see cref="VerticalSlashPlan.CoveredKeys"/>); the
/// density against a pair-by-pair count; the CUDA host plan against an exact cover, decoded on the CPU.
/// </summary>
public class SlashCoverageTests
{
    private static VerticalSlashPlan Plan(int t, int[] slash, int[]? vertical = null)
    {
        var plan = new VerticalSlashPlan(1, 1, t, t) { Coverage = SlashCoverage.Blocks };
        plan.SetSlash(0, 0, slash);
        if (vertical is not null) plan.SetVertical(0, 0, vertical);
        return plan;
    }

    private static int[] Ranges(VerticalSlashPlan plan, int qb, int s = 0, int h = 0)
    {
        var r = new int[2 * plan.Slash(s, h).Length];
        int n = plan.SlashRanges(s, h, qb, r);
        return r[..(2 * n)];
    }

    [Fact]
    public void RangesFollowTheAuthorsRuleOnHandWorkedBlocks()
    {
        // Offsets 150 and 0 at T = 256. Block 3 (positions 192..255, e = 256): offset 150 names [42, 106), offset 0
        // ends at 256 > 106 + 64, so a second range [192, 256). Block 2 (e = 192): offset 150's end 42 is raised to 64,
        // [0, 64); offset 0 ends at 192 > 128: [128, 192). Block 0 (e = 64): offset 150 ≥ 64 reaches nothing.
        VerticalSlashPlan plan = Plan(256, [0, 150]);
        Assert.Equal([42, 106, 192, 256], Ranges(plan, 3));
        Assert.Equal([0, 64, 128, 192], Ranges(plan, 2));
        Assert.Equal([64, 128], Ranges(plan, 1));
        Assert.Equal([0, 64], Ranges(plan, 0));
        // Windows ending at most 64 past the range extend it by exactly 64 keys: 130 → [62, 126), 100 → 156 ≤ 190,
        // +64 → [62, 190), 5 → 251 ≤ 254, +64 → [62, 254), 0 → 256 ≤ 318, +64 → [62, 318), clamped to the 256 keys.
        Assert.Equal([62, 256], Ranges(Plan(256, [0, 5, 100, 130]), 3));
        // The last block is short (rows 192..199 of T = 200): its windows still end at its first position + 64 = 256
        // (offset 70: [122, 186); offset 0: 256 > 250, a new range [192, 256)), cut at the 200 keys its last row sees.
        Assert.Equal([122, 186, 192, 200], Ranges(Plan(200, [0, 70]), 3));
    }

    [Theory]
    [InlineData(300, 300, 11)]
    [InlineData(517, 517, 12)]
    [InlineData(131, 400, 13)] // Tq < Tk: positions are bottom-right aligned
    [InlineData(400, 131, 14)] // Tq > Tk: the first blocks see nothing
    public void RangesCoverEveryDiagonalPairAndNoEmptyStep(int tq, int tk, int salt)
    {
        Random rng = TestData.Rng(4300 + salt);
        var plan = new VerticalSlashPlan(1, 1, tq, tk) { Coverage = SlashCoverage.Blocks };
        var slash = new List<int>();
        for (int o = 0; o < tk; o++)
            if (rng.NextDouble() < 0.04) slash.Add(o);
        plan.SetSlash(0, 0, slash.ToArray());
        int shift = tk - tq;
        for (int qb = 0; qb < plan.QueryBlocks(0); qb++)
        {
            int[] r = Ranges(plan, qb);
            int i0 = qb * 64, i1 = Math.Min(tq, i0 + 64), pLast = i1 - 1 + shift;
            for (int x = 0; x < r.Length; x += 2)
            {
                Assert.True(r[x] >= 0 && r[x] < r[x + 1] && r[x + 1] <= Math.Min(tk, pLast + 1), $"range [{r[x]}, {r[x + 1]}), seed {TestData.RunSeed}");
                if (x > 0) Assert.True(r[x] > r[x - 1], $"ranges overlap or touch out of order; seed {TestData.RunSeed}");
            }
            // Superset: every diagonal pair (p, p − o) of the block lies in a range.
            for (int i = i0; i < i1; i++)
            {
                int p = i + shift;
                foreach (int o in slash)
                {
                    int k = p - o;
                    if (k < 0 || o > p) continue;
                    Assert.True(InRanges(r, k), $"block {qb}: pair ({p}, {k}) of offset {o} outside the ranges; seed {TestData.RunSeed}");
                    Assert.True(plan.Covers(0, 0, i, k));
                }
            }
            // Each 64-key step from a range's start meets some window of the block (no step is added for nothing),
            // before the clamp at the sequence's end.
            long e = i0 + shift + 64;
            for (int x = 0; x < r.Length; x += 2)
                for (int a = r[x]; a < r[x + 1]; a += 64)
                    Assert.Contains(slash, o => o < e && Math.Max(e - o, 64) - 64 < a + 64 && Math.Max(e - o, 64) > a);
        }
    }

    private static bool InRanges(int[] r, int k)
    {
        for (int x = 0; x < r.Length; x += 2)
            if (k >= r[x] && k < r[x + 1]) return true;
        return false;
    }

    [Theory]
    [InlineData(1, 1, 1, 1, 1, 32, false)]
    [InlineData(1, 37, 37, 2, 2, 64, false)]
    [InlineData(2, 200, 200, 4, 2, 64, true)]
    [InlineData(1, 131, 290, 4, 2, 128, true)] // Tq < Tk, GQA 2
    [InlineData(1, 290, 131, 2, 1, 48, false)] // Tq > Tk: the first rows see nothing (0, LSE −∞)
    [InlineData(1, 257, 257, 6, 2, 256, true)] // GQA 3, D = 256
    public void KernelEqualsTheFloat64ReferenceOfTheBlocksDefinition(int batch, int tq, int tk, int heads, int hkv, int dim, bool blockColumns)
    {
        Random rng = TestData.Rng(4310 + tq * 3 + dim);
        var c = new AttnCase { B = batch, Tq = tq, Tk = tk, H = heads, Hkv = hkv, D = dim };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 1.5);
        int[] qLens = Enumerable.Repeat(tq, batch).ToArray(), kLens = Enumerable.Repeat(tk, batch).ToArray();
        VerticalSlashPlan plan = VerticalSlashAttentionTests.RandomPlan(rng, qLens, kLens, heads, varlen: false, blockColumns, pv: 0.03, ps: 0.03);
        plan.Coverage = SlashCoverage.Blocks;
        var (o, lse) = Run(c, x, plan);
        ReferenceForwardResult r = Reference(c, x, plan);
        Assert.DoesNotContain(o, v => float.IsNaN(v));
        Assert.True(TestData.RelativeError<float>(o, r.Output) < 1e-5, $"output, seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-5, $"lse, seed {TestData.RunSeed}");
        if (tq > tk)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < tq - tk; i++)
                {
                    Assert.True(float.IsNegativeInfinity(lse[h * tq + i]), $"row {i} sees nothing: LSE −∞");
                    for (int d = 0; d < dim; d++) Assert.Equal(0f, o[((long)i * heads + h) * dim + d]);
                }
    }

    [Fact]
    public void VarlenWithAnEmptyAndAOneTokenSequenceEqualsReference()
    {
        Random rng = TestData.Rng(4320);
        var c = new AttnCase { H = 4, Hkv = 1, D = 64 };
        int[] lens = [70, 0, 1, 229];
        c.SetVarlen(lens, lens);
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        VerticalSlashPlan plan = VerticalSlashAttentionTests.RandomPlan(rng, lens, lens, c.H, varlen: true, blockColumns: true, pv: 0.05, ps: 0.05);
        plan.Coverage = SlashCoverage.Blocks;
        var (o, lse) = Run(c, x, plan);
        ReferenceForwardResult r = Reference(c, x, plan);
        Assert.True(TestData.RelativeError<float>(o, r.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-5, $"seed {TestData.RunSeed}");
    }

    [Fact]
    public void DensityCountsThePairsComputedAndContainsTheDiagonals()
    {
        Random rng = TestData.Rng(4321);
        VerticalSlashPlan plan = VerticalSlashAttentionTests.RandomPlan(rng, [190, 190], [230, 230], 3, varlen: false, blockColumns: true, 0.05, 0.05);
        double diagonalDensity = plan.Density;
        var diagonal = new bool[230];
        var covered = new bool[230];
        var perRow = new List<bool[]>();
        for (int s = 0; s < 2; s++)
            for (int h = 0; h < 3; h++)
                for (int i = 0; i < 190; i++)
                {
                    plan.CoveredKeys(s, h, i, diagonal);
                    perRow.Add((bool[])diagonal.Clone());
                }
        plan.Coverage = SlashCoverage.Blocks;
        long counted = 0, visible = 0;
        int row = 0;
        for (int s = 0; s < 2; s++)
            for (int h = 0; h < 3; h++)
                for (int i = 0; i < 190; i++, row++)
                {
                    plan.CoveredKeys(s, h, i, covered);
                    for (int j = 0; j < 230; j++)
                    {
                        Assert.Equal(covered[j], plan.Covers(s, h, i, j));
                        if (perRow[row][j]) Assert.True(covered[j], $"pair ({i}, {j}) of the diagonals is not in the blocks; seed {TestData.RunSeed}");
                        if (covered[j]) counted++;
                        if (j <= i + 40) visible++;
                    }
                }
        Assert.Equal(visible, plan.CausalPairs());
        Assert.Equal(counted, plan.ComputedPairs());
        Assert.True(plan.Density > diagonalDensity, $"blocks {plan.Density}, diagonals {diagonalDensity}");
    }

    [Theory]
    [InlineData(1, 2, 300, 300, 1)]
    [InlineData(2, 3, 131, 517, 2)] // Tq < Tk
    [InlineData(1, 2, 401, 150, 3)] // Tq > Tk
    [InlineData(1, 1, 1, 1, 4)]
    public void CudaHostPlanCoversTheBlocksDefinitionExactlyOnce(int batch, int heads, int tq, int tk, int salt)
    {
        Random rng = TestData.Rng(4330 + salt);
        VerticalSlashPlan plan = VerticalSlashAttentionTests.RandomPlan(rng, Enumerable.Repeat(tq, batch).ToArray(), Enumerable.Repeat(tk, batch).ToArray(),
            heads, varlen: false, blockColumns: true, 0.04, 0.03);
        plan.Coverage = SlashCoverage.Blocks;
        ColumnSparsePlanTests.AssertExactCover(plan, ColumnSparsePlan.Build(plan));
    }

    [Fact]
    public void MInferenceWithBlocksCoverageRunsItsPlanAndReportsItsDensity()
    {
        Random rng = TestData.Rng(4340);
        DynamicWorkload w = DynamicWorkload.Create(rng, 333, 4, 2, 64, needleKey: 100);
        IAttentionMethod method = new MInferenceMethod();
        MethodResult diagonals = method.Run(Inputs(w.Case, w.Inputs), MethodArguments.Parse(["budget=96"]));
        MethodResult blocks = method.Run(Inputs(w.Case, w.Inputs), MethodArguments.Parse(["budget=96", "coverage=blocks"]));
        var plan = (HybridSparsePlan)blocks.Coverage!;
        Assert.Equal(SlashCoverage.Blocks, plan.Tokens.Coverage);
        Assert.Equal(SlashCoverage.Diagonals, ((HybridSparsePlan)diagonals.Coverage!).Tokens.Coverage);
        ReferenceForwardResult r = plan.Reference(TestData.Bthd(w.Inputs.Q, 1, 333, 4, 64), TestData.Bthd(w.Inputs.K, 1, 333, 2, 64),
            TestData.Bthd(w.Inputs.V, 1, 333, 2, 64), new AttentionOptions());
        Assert.True(TestData.RelativeError<float>(blocks.Output.Data, r.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(blocks.Extras["lse"].Data, r.Lse) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.Equal(plan.Density, blocks.Density!.Value, 12);
        Assert.True(blocks.Density > diagonals.Density, $"blocks {blocks.Density}, diagonals {diagonals.Density}");
    }

    [Fact]
    public void TheOfflineSearchUnderBlocksCoverageRunsThePlanItScored()
    {
        Random rng = TestData.Rng(4342);
        DynamicWorkload w = DynamicWorkload.Create(rng, 300, 4, 2, 48, needleKey: 77);
        MethodResult r = new MInferenceMethod().Run(Inputs(w.Case, w.Inputs), MethodArguments.Parse(["pattern=search", "budget=80", "coverage=blocks"]));
        var plan = (HybridSparsePlan)r.Coverage!;
        Assert.Equal(SlashCoverage.Blocks, plan.Tokens.Coverage);
        ReferenceForwardResult reference = plan.Reference(TestData.Bthd(w.Inputs.Q, 1, 300, 4, 48), TestData.Bthd(w.Inputs.K, 1, 300, 2, 48),
            TestData.Bthd(w.Inputs.V, 1, 300, 2, 48), new AttentionOptions());
        Assert.True(TestData.RelativeError<float>(r.Output.Data, reference.Output) < 1e-5, $"seed {TestData.RunSeed}");
        Assert.Equal(plan.Density, r.Density!.Value, 12);
    }

    [Fact]
    public void BadArgumentsAreRefusedByName()
    {
        var plan = new VerticalSlashPlan(1, 1, 100, 100);
        plan.SetSlash(0, 0, [0, 3, 9]);
        Assert.Equal("value", Assert.Throws<ArgumentOutOfRangeException>(() => plan.Coverage = (SlashCoverage)7).ParamName);
        Assert.Equal("ranges", Assert.Throws<ArgumentException>(() => plan.SlashRanges(0, 0, 0, new int[5])).ParamName);
        Assert.Equal("queryBlock", Assert.Throws<ArgumentOutOfRangeException>(() => plan.SlashRanges(0, 0, 2, new int[6])).ParamName);
        Assert.Equal("head", Assert.Throws<ArgumentOutOfRangeException>(() => plan.SlashRanges(0, 1, 0, new int[6])).ParamName);
        DynamicWorkload w = DynamicWorkload.Create(TestData.Rng(4341), 80, 2, 1, 32, needleKey: 10);
        var e = Assert.ThrowsAny<ArgumentException>(() => new MInferenceMethod().Run(Inputs(w.Case, w.Inputs), MethodArguments.Parse(["coverage=tiles"])));
        Assert.Contains("coverage", e.Message);
    }

    private static MethodInputs Inputs(AttnCase c, AttnInputs<float> x) =>
        new(new MethodTensor(x.Q, c.B, c.Tq, c.H, c.D), new MethodTensor(x.K, c.B, c.Tk, c.Hkv, c.D), new MethodTensor(x.V, c.B, c.Tk, c.Hkv, c.D));

    private static (float[] O, float[] Lse) Run(AttnCase c, AttnInputs<float> x, VerticalSlashPlan plan)
    {
        float[] o = TestData.Poisoned<float>((long)c.B * c.Tq * c.H * c.D);
        float[] lse = TestData.Poisoned<float>((long)c.B * c.H * c.Tq);
        VerticalSlashAttention.Forward<float>(
            TestData.Bthd(x.Q, c.B, c.Tq, c.H, c.D), TestData.Bthd(x.K, c.B, c.Tk, c.Hkv, c.D), TestData.Bthd(x.V, c.B, c.Tk, c.Hkv, c.D),
            plan, c.Options() with { MaxThreads = 2 }, TestData.Bthd(o, c.B, c.Tq, c.H, c.D), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        return (o, lse);
    }

    private static ReferenceForwardResult Reference(AttnCase c, AttnInputs<float> x, VerticalSlashPlan plan) =>
        VerticalSlashAttention.Reference<float>(
            TestData.Bthd(x.Q, c.B, c.Tq, c.H, c.D), TestData.Bthd(x.K, c.B, c.Tk, c.Hkv, c.D), TestData.Bthd(x.V, c.B, c.Tk, c.Hkv, c.D),
            plan, c.Options());
}
