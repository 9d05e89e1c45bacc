using Xunit;
using Attend.Cuda;
using Attend.Cuda.Sparse;

namespace Attend.Tests.CudaSparse;

/// <summary>
/// Regrouping a method's 64 × 64 block mask into the CUDA kernel's 128 × 64 blocks, checked on the CPU: every pair the
/// mask lets through is visited exactly once, with the right visibility, and full blocks only where all pairs are visible.
/// </summary>
public class FineBlockPlanTests
{
    [Theory]
    [InlineData(2, 3, 333, 333, true, 1)]
    [InlineData(1, 2, 190, 611, false, 2)]
    [InlineData(1, 1, 64, 64, true, 3)]
    [InlineData(1, 4, 1, 257, false, 4)]
    public void RegroupedPlanIsTheMask(int batch, int heads, int tq, int tk, bool causal, int salt)
    {
        Random rng = TestData.Rng(800 + salt);
        var sel = new BlockSelection(batch, heads, tq, tk, 64, 64);
        for (int s = 0; s < batch; s++)
            for (int h = 0; h < heads; h++)
                for (int qb = 0; qb < sel.QueryBlocks(s); qb++)
                    for (int kb = 0; kb < sel.KeyBlocks(s); kb++)
                        if (rng.Next(3) == 0) sel.Select(s, h, qb, kb);
        IMaskMod mask = causal ? Masks.And(Masks.Causal, sel.ToMask()) : sel.ToMask();
        BlockMask fine = BlockMask.Create(mask, tq, tk, batch, heads, 64, 64);
        FlashBlockPlan plan = Build(fine, mask);
        AssertPlanIsMask(plan, fine, mask);
    }

    [Fact]
    public void VarlenHeadIndependentPatternRegroups()
    {
        Random rng = TestData.Rng(810);
        var offsets = SeqOffsets.FromLengths([1, rng.Next(2, 200), rng.Next(130, 400)]);
        IMaskMod mask = Masks.And(Masks.Causal, Masks.Or(new SlidingWindowMask(rng.Next(5, 90), 0), new PrefixLmMask(rng.Next(1, 20))));
        BlockMask fine = BlockMask.Create(mask, offsets, offsets, 2, 64, 64);
        AssertPlanIsMask(Build(fine, mask), fine, mask);
    }

    [Fact]
    public void OtherBlockSizesAreRefusedWithTheSizes()
    {
        BlockMask odd = BlockMask.Create(new CausalMask(), 100, 100, 1, 1, 48, 64);
        var e = Assert.Throws<ArgumentException>(() => FineBlockPlan.Build(odd, new CausalMask()));
        Assert.Contains("48x64", e.Message);
    }

    private static FlashBlockPlan Build(BlockMask fine, IMaskMod mask)
    {
        var builder = new Builder(fine);
        return mask.Accept<Builder, FlashBlockPlan>(ref builder);
    }

    private readonly struct Builder(BlockMask fine) : IMaskVisitor<FlashBlockPlan>
    {
        public FlashBlockPlan Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask> => FineBlockPlan.Build(fine, mask);
    }

    // Decodes the plan as flash_forward.cu does (full: every key before the end; partial: the row's word).
    private static void AssertPlanIsMask(FlashBlockPlan plan, BlockMask fine, IMaskMod mask)
    {
        const int bq = FlashBlockPlan.QueryBlock, bk = FlashBlockPlan.KeyBlock;
        Assert.Equal(fine.Heads, plan.MaskHeads);
        for (int e = 0; e < fine.Sequences; e++)
        {
            int tq = fine.QueryLength(e), tk = fine.KeyLength(e), shift = tk - tq;
            for (int h = 0; h < fine.Heads; h++)
            {
                var seen = new int[(long)tq * tk];
                for (int qb = 0; qb < plan.MaxQueryBlocks; qb++)
                {
                    int row = (e * plan.MaskHeads + h) * plan.MaxQueryBlocks + qb;
                    for (int it = plan.RowPtr[row]; it < plan.RowPtr[row + 1]; it++)
                    {
                        int kb = plan.Items[2 * it], partial = plan.Items[2 * it + 1];
                        for (int r = 0; r < bq && qb * bq + r < tq; r++)
                            for (int c = 0; c < bk && kb * bk + c < tk; c++)
                            {
                                int q = qb * bq + r, k = kb * bk + c;
                                bool visible = partial < 0 || ((plan.Bits[(long)partial * bq + r] >> c) & 1) != 0;
                                if (partial < 0) Assert.True(mask.IsVisible(e, h, q + shift, k), $"seed {TestData.RunSeed}: full block holds a masked pair ({q}, {k})");
                                if (visible) seen[(long)q * tk + k]++;
                            }
                    }
                }
                for (int q = 0; q < tq; q++)
                    for (int k = 0; k < tk; k++)
                    {
                        int expected = mask.IsVisible(e, h, q + shift, k) ? 1 : 0;
                        if (seen[(long)q * tk + k] != expected)
                            Assert.Fail($"seed {TestData.RunSeed}: entry {e} head {h} pair ({q}, {k}) visited {seen[(long)q * tk + k]} times; the mask says {expected}");
                    }
            }
        }
    }
}
