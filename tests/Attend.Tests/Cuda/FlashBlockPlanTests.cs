using Xunit;
using Attend.Cuda;

namespace Attend.Tests.Cuda;

/// <summary>
/// The plan the CUDA kernel walks, checked on the CPU: replaying its items and mask words must give exactly the mask's
/// visible pairs, every listed block must hold a visible pair, and items of a row ascend.
/// </summary>
public class FlashBlockPlanTests
{
    private const int Bq = FlashBlockPlan.QueryBlock, Bk = FlashBlockPlan.KeyBlock;

    public static TheoryData<string, int, int> Masks() => new()
    {
        { "causal", 300, 300 },
        { "window:40,3", 517, 517 },
        { "prefix:77", 200, 200 },
        { "blockcausal:50", 257, 257 },
        { "causal+doc:0,1,90,300", 300, 300 },
        { "causal", 1, 333 },
        { "causal", 260, 100 },
        { "full", 129, 65 },
    };

    [Theory]
    [MemberData(nameof(Masks))]
    public void ReplayingThePlanGivesTheMask(string spec, int tq, int tk)
    {
        IMaskMod mask = MaskSpec.Parse(spec, tk) ?? new FullMask();
        BlockMask blocks = BlockMask.Create(mask, tq, tk, 1, 1, Bq, Bk);
        FlashBlockPlan plan = Build(blocks, mask);
        int shift = tk - tq;
        var seen = new bool[tq, tk];
        for (int qb = 0; qb < plan.MaxQueryBlocks; qb++)
        {
            int previous = -1;
            for (int it = plan.RowPtr[qb]; it < plan.RowPtr[qb + 1]; it++)
            {
                int kb = plan.Items[2 * it], partial = plan.Items[2 * it + 1];
                Assert.True(kb > previous, $"row {qb}: items must ascend");
                previous = kb;
                bool any = false;
                for (int q = qb * Bq; q < Math.Min(tq, (qb + 1) * Bq); q++)
                    for (int k = kb * Bk; k < Math.Min(tk, (kb + 1) * Bk); k++)
                    {
                        bool visible = partial < 0 || ((plan.Bits[partial * Bq + (q - qb * Bq)] >> (k - kb * Bk)) & 1) != 0;
                        seen[q, k] = visible;
                        any |= visible;
                    }
                Assert.True(any, $"block ({qb}, {kb}) is listed but has no visible pair");
            }
        }
        for (int q = 0; q < tq; q++)
            for (int k = 0; k < tk; k++)
                Assert.True(seen[q, k] == mask.IsVisible(0, 0, q + shift, k), $"{spec}: pair ({q}, {k}) replays as {seen[q, k]}");
    }

    [Fact]
    public void RowsPastTheQueriesAndBitsPastTheKeysAreZero()
    {
        const int t = 130; // query block 1 holds rows 128 and 129 only; key block 2 holds keys 128 and 129 only
        FlashBlockPlan plan = Build(BlockMask.Create(new CausalMask(), t, t, 1, 1, Bq, Bk), new CausalMask());
        Assert.Equal(2, plan.MaxQueryBlocks);
        for (int qb = 0; qb < 2; qb++)
            for (int it = plan.RowPtr[qb]; it < plan.RowPtr[qb + 1]; it++)
            {
                int kb = plan.Items[2 * it], partial = plan.Items[2 * it + 1];
                if (partial < 0) continue;
                int keys = Math.Min(Bk, t - kb * Bk);
                for (int r = 0; r < Bq; r++)
                {
                    ulong word = plan.Bits[partial * Bq + r];
                    if (qb * Bq + r >= t) Assert.Equal(0UL, word);
                    if (keys < 64) Assert.Equal(0UL, word >> keys);
                }
            }
    }

    [Fact]
    public void PerHeadMasksKeepOneStructurePerHead()
    {
        var mask = new HeadWindow();
        BlockMask blocks = BlockMask.Create(mask, 200, 200, 1, 3, Bq, Bk);
        FlashBlockPlan plan = FlashBlockPlan.Build(blocks, mask);
        Assert.Equal(3, plan.MaskHeads);
        Assert.Equal(3 * plan.MaxQueryBlocks + 1, plan.RowPtr.Length);
    }

    [Fact]
    public void OtherBlockSizesAreRefusedWithTheReason()
    {
        BlockMask blocks = BlockMask.Create(new CausalMask(), 100, 100);
        var e = Assert.Throws<ArgumentException>(() => FlashBlockPlan.Build(blocks, new CausalMask()));
        Assert.Contains("128x64", e.Message);
    }

    [Theory]
    [InlineData("window:1024,0", 4096, true)]   // 18 blocks per query block, 4 of them partial
    [InlineData("causal", 4096, false)]          // 2 partial blocks per query block of up to 64
    [InlineData("causal", 300, true)]            // short: mostly diagonal blocks
    [InlineData("full", 4096, false)]            // no partial block at all
    public void PartialHeavyFollowsTheShareOfPartialBlocks(string spec, int t, bool heavy)
    {
        IMaskMod mask = MaskSpec.Parse(spec, t) ?? new FullMask();
        FlashBlockPlan plan = Build(BlockMask.Create(mask, t, t, 1, 1, Bq, Bk), mask);
        int partial = 0;
        for (int it = 0; it < plan.ItemCount; it++) if (plan.Items[2 * it + 1] >= 0) partial++;
        Assert.Equal(partial, plan.PartialCount);
        Assert.Equal(heavy, plan.PartialHeavy);
        Assert.Equal(partial > 0 && 8 * partial >= plan.ItemCount, plan.PartialHeavy);
    }

    private static FlashBlockPlan Build(BlockMask blocks, IMaskMod mask)
    {
        var visitor = new Builder(blocks);
        return mask.Accept<Builder, FlashBlockPlan>(ref visitor);
    }

    private readonly struct Builder(BlockMask blocks) : IMaskVisitor<FlashBlockPlan>
    {
        public FlashBlockPlan Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask> => FlashBlockPlan.Build(blocks, mask);
    }

    /// <summary>A mask that differs per head: head h sees keys within 10·(h+1) to its left.</summary>
    private readonly struct HeadWindow : IMaskMod<HeadWindow>
    {
        public bool IsVisible(int batch, int head, int q, int k) => k <= q && q - k <= 10 * (head + 1);
        public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
            BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd);
        public bool DependsOnHead => true;
        public bool DependsOnBatch => false;
    }
}
