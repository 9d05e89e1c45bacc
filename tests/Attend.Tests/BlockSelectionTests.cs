using Xunit;
using Attend.Methods;

namespace Attend.Tests;

public class BlockSelectionTests
{
    // A random selection over heads and sequences, with cells of the given sizes.
    private static BlockSelection RandomSelection(Random rng, int[] qLens, int[] kLens, int heads, int bq, int bk, double p, bool varlen)
    {
        var s = varlen
            ? new BlockSelection(SeqOffsets.FromLengths(qLens), SeqOffsets.FromLengths(kLens), heads, bq, bk)
            : new BlockSelection(qLens.Length, heads, qLens[0], kLens[0], bq, bk);
        for (int e = 0; e < s.Sequences; e++)
            for (int h = 0; h < heads; h++)
                for (int qb = 0; qb < s.QueryBlocks(e); qb++)
                    for (int kb = 0; kb < s.KeyBlocks(e); kb++)
                        if (rng.NextDouble() < p) s.Select(e, h, qb, kb);
        return s;
    }

    [Fact]
    public void MaskIsTheChosenCellsInRowCoordinates()
    {
        Random rng = TestData.Rng(301);
        int tq = 37, tk = 53, heads = 3;
        BlockSelection sel = RandomSelection(rng, [tq, tq], [tk, tk], heads, 8, 16, 0.4, varlen: false);
        BlockSelectionMask mask = sel.ToMask();
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < tq; i++)
                    for (int j = 0; j < tk; j++)
                        Assert.Equal(sel.IsSelected(b, h, i / 8, j / 16), mask.IsVisible(b, h, i + tk - tq, j));
        // Frozen: later selections do not change the mask. Every key of query block 0 before and after selecting them all.
        var before = new bool[tk];
        for (int j = 0; j < tk; j++) before[j] = mask.IsVisible(0, 0, tk - tq, j);
        sel.SelectRange(0, 0, 0, 0, sel.KeyBlocks(0));
        for (int j = 0; j < tk; j++)
        {
            Assert.Equal(before[j], mask.IsVisible(0, 0, tk - tq, j));
            Assert.True(sel.ToMask().IsVisible(0, 0, tk - tq, j));
        }
        // The same on a selection that starts empty, so the later selection certainly changes something.
        var empty = new BlockSelection(1, heads, tq, tk, 8, 16);
        BlockSelectionMask frozen = empty.ToMask();
        empty.SelectRange(0, 0, 0, 0, empty.KeyBlocks(0));
        for (int j = 0; j < tk; j++)
        {
            Assert.False(frozen.IsVisible(0, 0, tk - tq, j));
            Assert.True(empty.ToMask().IsVisible(0, 0, tk - tq, j));
        }
    }

    [Theory]
    [InlineData(64, 64, false)]
    [InlineData(32, 16, false)]
    [InlineData(64, 64, true)]
    [InlineData(48, 80, true)]
    public void BlockMaskOfSelectionEqualsDenseEvaluation(int bq, int bk, bool varlen)
    {
        Random rng = TestData.Rng(302 + bq + bk + (varlen ? 1 : 0));
        int[] qLens = varlen ? [rng.Next(1, 200), 0, rng.Next(1, 300)] : [rng.Next(1, 300), 0];
        int[] kLens = varlen ? [qLens[0] + rng.Next(0, 40), 5, qLens[2]] : [qLens[0] + rng.Next(0, 40), 0];
        if (!varlen) { qLens[1] = qLens[0]; kLens[1] = kLens[0]; }
        int heads = 2;
        BlockSelection sel = RandomSelection(rng, qLens, kLens, heads, bq, bk, 0.3, varlen);
        var mask = Masks.And(Masks.Causal, sel.ToMask());
        BlockMask blocks = varlen
            ? BlockMask.Create(mask, SeqOffsets.FromLengths(qLens), SeqOffsets.FromLengths(kLens), heads)
            : BlockMask.Create(mask, qLens[0], kLens[0], qLens.Length, heads);
        for (int e = 0; e < blocks.Sequences; e++)
        {
            int tq = blocks.QueryLength(e), tk = blocks.KeyLength(e), shift = tk - tq;
            for (int h = 0; h < heads; h++)
                for (int qb = 0; qb < blocks.QueryBlocks(e); qb++)
                    for (int kb = 0; kb < blocks.KeyBlocks(e); kb++)
                    {
                        int visible = 0, total = 0;
                        for (int i = qb * 64; i < Math.Min(tq, qb * 64 + 64); i++)
                            for (int j = kb * 64; j < Math.Min(tk, kb * 64 + 64); j++)
                            {
                                total++;
                                bool chosen = sel.IsSelected(e, h, i / bq, j / bk) && j <= i + shift;
                                Assert.Equal(chosen, mask.IsVisible(e, h, i + shift, j));
                                if (chosen) visible++;
                            }
                        BlockKind kind = blocks.KindOf(e, h, qb, kb);
                        if (visible == 0) Assert.Equal(BlockKind.Empty, kind);
                        else if (visible < total) Assert.Equal(BlockKind.Partial, kind);
                        else Assert.NotEqual(BlockKind.Empty, kind);
                    }
        }
    }

    [Fact]
    public void SelectedAttentionEqualsReferenceAndCoverageMatches()
    {
        Random rng = TestData.Rng(303);
        var c = new AttnCase { B = 2, Tq = 131, Tk = 131, H = 4, Hkv = 2, D = 64 };
        BlockSelection sel = RandomSelection(rng, [c.Tq, c.Tq], [c.Tk, c.Tk], c.H, 64, 64, 0.5, varlen: false);
        // Every query block keeps its diagonal block, so no causal row is empty only by chance of the draw.
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < c.H; h++)
                for (int qb = 0; qb < sel.QueryBlocks(b); qb++) sel.Select(b, h, qb, qb);
        c.Mask = Masks.And(Masks.Causal, sel.ToMask());
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        var (o, _, _, _) = Harness.Forward(c, x, null);
        ReferenceForwardResult reference = Harness.Reference(c, x);
        Assert.True(TestData.RelativeError<double>(o, reference.Output) < 1e-5, $"seed {TestData.RunSeed}");

        var coverage = new MaskCoverage(c.Mask, c.Tq, c.Tk);
        var covered = new bool[c.Tk];
        coverage.CoveredKeys(1, 3, 100, covered);
        for (int j = 0; j < c.Tk; j++) Assert.Equal(j <= 100 && sel.IsSelected(1, 3, 1, j / 64), covered[j]);
    }

    [Fact]
    public void BadIndicesAndSizesNameTheArgument()
    {
        var sel = new BlockSelection(1, 2, 100, 100, 64, 64);
        Assert.Equal("head", Assert.Throws<ArgumentOutOfRangeException>(() => sel.Select(0, 2, 0, 0)).ParamName);
        Assert.Equal("keyBlock", Assert.Throws<ArgumentOutOfRangeException>(() => sel.Select(0, 0, 0, 2)).ParamName);
        Assert.Equal("queryBlock", Assert.Throws<ArgumentOutOfRangeException>(() => sel.IsSelected(0, 0, -1, 0)).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentOutOfRangeException>(() => new BlockSelection(1, 0, 10, 10)).ParamName);
        Assert.Equal("keyLength", Assert.Throws<ArgumentOutOfRangeException>(() => new BlockSelection(1, 1, 10, -1)).ParamName);
        Assert.Throws<InvalidOperationException>(() => default(BlockSelectionMask).IsVisible(0, 0, 0, 0));
    }
}
