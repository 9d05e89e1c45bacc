using Attend.Methods.Sparse.Routing;
using Attend.Methods.Sparse.Static;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>
/// <see cref="IMaskRowWords"/>: the 64-key words a mask gives the CUDA block plans must equal its
/// <see cref="IMaskMod.IsVisible"/> bit for bit: on every (batch, head, row) of small plans of the token-level routing
/// methods (the ones that left every tile partial and were too slow to flatten at 128k), their intersections with the
/// causal mask, axial attention, varlen batches, Tq ≠ Tk, and rows and key words past the sequence.
/// </summary>
public class MaskRowWordsTests
{
    public static TheoryData<string, int, int, int[]?> Plans => new()
    {
        { "landmark", 300, 300, null },
        { "retrieval", 517, 517, null },
        { "recycled", 300, 300, null },
        { "routing", 333, 333, null },
        { "routing-bidirectional", 200, 200, null },
        { "delta", 300, 300, null },
        { "retrieval", 0, 0, new[] { 130, 1, 0, 200 } },
        { "routing", 0, 0, new[] { 70, 129 } },
        { "recycled", 0, 0, new[] { 150, 1, 90 } },
    };

    [Theory]
    [MemberData(nameof(Plans))]
    public void RoutingPlanWordsEqualIsVisible(string method, int t, int tk, int[]? lens)
    {
        Random rng = TestData.Rng(4400 + method.Length * 7 + t + (lens?.Length ?? 0));
        RoutingProblem p = RoutingProblem.Random(rng, lens is null ? 2 : 1, t, 4, 2, 32, lens, lens is null ? tk : null);
        SparsePlan plan = method switch
        {
            "landmark" => LandmarkAttention.Plan(p.Input),
            "retrieval" => RetrievalAttention.Plan(p.Input),
            "recycled" => RecycledAttention.Plan(p.Input, new RecycledOptions { Stride = 37 }),
            "routing" => RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 4, Window = 20 }),
            "routing-bidirectional" => RoutingTransformer.Plan(p.Input, new RoutingTransformerOptions { Clusters = 3, Window = 9, Causal = false }),
            _ => DELTA.Plan(p.Input),
        };
        Assert.IsAssignableFrom<IMaskRowWords>(plan.Mask);
        int sequences = lens?.Length ?? p.B;
        for (int s = 0; s < sequences; s++)
        {
            int tq = lens?[s] ?? p.T, tks = lens?[s] ?? p.Tk;
            AssertWordsMatch(plan.Mask, s, p.H, tq, tks);
        }
    }

    [Theory]
    [InlineData(16, 16)]
    [InlineData(7, 37)]   // rows shorter than a word
    [InlineData(100, 130)] // rows longer than two words
    public void AxialAndCausalWordsEqualIsVisible(int rows, int columns)
    {
        var axial = new AxialMask(new TokenGrid(rows, columns));
        AssertWordsMatch(axial, 0, 1, rows * columns, rows * columns);
        AssertWordsMatch(Masks.And(Masks.Causal, axial), 0, 1, rows * columns, rows * columns);
        AssertWordsMatch(Masks.Causal, 0, 1, 200, 333);
    }

    [Fact]
    public void APartWithoutWordsIsEvaluatedOnlyWhereTheOtherAllows()
    {
        // The sliding window has no row words: the And evaluates it per bit inside the token selection's word.
        Random rng = TestData.Rng(4410);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 260, 2, 1, 32);
        var selection = new TokenSelection(p.Input, 2, 16);
        for (int h = 0; h < 2; h++)
            for (int qb = 0; qb < selection.QueryBlocks(0); qb++)
                for (int k = 0; k < 260; k++)
                    if (rng.NextDouble() < 0.3) selection.Select(0, h, qb, k);
        IMaskMod both = Masks.And(Masks.SlidingWindow(40, 0), selection.ToMask());
        AssertWordsMatch(both, 0, 2, 260, 260);
    }

    [Fact]
    public void AWordThatDoesNotStartOnA64KeyBoundaryIsRefused()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(4430), 1, 100, 1, 1, 16);
        TokenSelectionMask tokens = new TokenSelection(p.Input, 1, 1).ToMask();
        Assert.Equal("k0", Assert.Throws<ArgumentException>(() => tokens.RowWord(0, 0, 99, 10, ulong.MaxValue)).ParamName);
        Assert.Equal("k0", Assert.Throws<ArgumentException>(() => MaskRowWords.Row(Masks.Causal, null, 0, 0, 99, 32)).ParamName);
        Assert.Equal("k0", Assert.Throws<ArgumentException>(() => MaskRowWords.Row(Masks.Causal, null, 0, 0, 99, -64)).ParamName);
    }

    [Fact]
    public void VisiblePairsCountedByWordsEqualThePairByPairCount()
    {
        Random rng = TestData.Rng(4420);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 333, 4, 2, 32, tk: 400);
        SparsePlan plan = RetrievalAttention.Plan(p.Input);
        IMaskMod axial = Masks.And(Masks.Causal, new AxialMask(new TokenGrid(13, 31)));
        foreach ((IMaskMod mask, BlockMask blocks, int tq, int tk) in new[]
        {
            (plan.Mask, plan.Blocks, 333, 400),
            (axial, BlockMask.Create(axial, 403, 403, 1, 1), 403, 403),
        })
        {
            long expected = 0;
            for (int h = 0; h < blocks.Heads; h++)
                for (int i = 0; i < tq; i++)
                    for (int k = 0; k < tk; k++)
                        if (mask.IsVisible(0, h, i + tk - tq, k)) expected++;
            Assert.Equal(expected, blocks.VisiblePairs());
        }
    }

    private static void AssertWordsMatch(IMaskMod mask, int batch, int heads, int tq, int tk)
    {
        var words = (IMaskRowWords)mask;
        int shift = tk - tq;
        for (int h = 0; h < heads; h++)
            for (int i = -1; i <= tq; i++) // a row before and after the sequence too
            {
                int q = i + shift;
                for (int k0 = 0; k0 < tk + 64; k0 += 64)
                {
                    ulong expected = 0;
                    for (int j = 0; j < 64; j++)
                        if (k0 + j < tk && i >= 0 && i < tq && mask.IsVisible(batch, h, q, k0 + j)) expected |= 1UL << j;
                    ulong inside = k0 >= tk ? 0 : tk - k0 >= 64 ? ulong.MaxValue : (1UL << (tk - k0)) - 1;
                    ulong word = words.RowWord(batch, h, q, k0, ulong.MaxValue); // rows past the sequence must not throw either
                    ulong got = i >= 0 && i < tq ? word & inside : 0;
                    if (got != expected)
                        Assert.Fail($"{mask}: batch {batch} head {h} row {i} keys {k0}…{k0 + 63}: word {got:x16}, IsVisible gives {expected:x16}; seed {TestData.RunSeed}");
                }
            }
    }

    /// <summary>A mask that reads a per-key table, as user masks may: it cannot answer for keys past the end.</summary>
    private readonly struct PerKeyMask(bool[] keep) : IMaskMod<PerKeyMask>
    {
        public bool IsVisible(int batch, int head, int q, int k) => keep[k];

        public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
            BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd);

        public bool DependsOnHead => false;

        public bool DependsOnBatch => false;
    }

    [Theory]
    [InlineData(100, 64)]
    [InlineData(100, 48)]
    [InlineData(131, 128)]
    [InlineData(1, 64)]
    public void AndOfMasksWithoutWordsNeverAsksPastTheLastKey(int t, int keyBlock)
    {
        // Neither part has row words, so the And evaluates per key: only inside the caller's candidates (the block's
        // keys inside the sequence), never at k ≥ Tk where the table ends.
        Random rng = TestData.Rng(1201 + t + keyBlock);
        var keep = new bool[t];
        for (int k = 0; k < t; k++) keep[k] = rng.Next(3) != 0;
        var mask = Masks.And(new PerKeyMask(keep), new HeadBandMask());
        BlockMask plan = BlockMask.Create(mask, t, t, batch: 2, heads: 2, queryBlockSize: 64, keyBlockSize: keyBlock);
        long dense = 0;
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 2; h++)
                for (int q = 0; q < t; q++)
                    for (int k = 0; k < t; k++)
                        if (mask.IsVisible(b, h, q, k)) dense++;
        Assert.Equal(dense, plan.VisiblePairs());
        IMaskRowWords words = mask;
        ulong inSequence = MaskRowWords.Range(0, t, 0);
        for (int q = 0; q < t; q++)
        {
            ulong expected = 0;
            for (int j = 0; j < Math.Min(64, t); j++)
                if (mask.IsVisible(1, 1, q, j)) expected |= 1UL << j;
            Assert.Equal(expected, words.RowWord(1, 1, q, 0, inSequence) & inSequence);
        }
    }

    [Theory]
    [InlineData(1, 1, 90, 131)]
    [InlineData(5, 7, 131, 200)]
    [InlineData(16, 24, 200, 90)]
    [InlineData(64, 48, 300, 300)]
    [InlineData(64, 100, 257, 300)]
    [InlineData(16, 130, 140, 333)]
    public void BlockSelectionWordsEqualIsVisibleForAnyBlockSizes(int queryBlock, int keyBlock, int tq, int tk)
    {
        // Key blocks smaller than, not dividing, straddling and larger than a 64-key word; Tq ≠ Tk both ways.
        Random rng = TestData.Rng(1301 + queryBlock * 7 + keyBlock);
        var selection = new BlockSelection(2, 2, tq, tk, queryBlock, keyBlock);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 2; h++)
                for (int qb = 0; qb < (tq + queryBlock - 1) / queryBlock; qb++)
                    for (int kb = 0; kb < (tk + keyBlock - 1) / keyBlock; kb++)
                        if (rng.Next(3) == 0) selection.Select(b, h, qb, kb);
        BlockSelectionMask mask = selection.ToMask();
        IMaskRowWords words = mask;
        int shift = tk - tq;
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 2; h++)
                for (int row = 0; row < tq; row++)
                    for (int k0 = 0; k0 < tk; k0 += 64)
                    {
                        ulong candidates = MaskRowWords.Range(0, tk, k0), expected = 0;
                        for (int j = 0; j < 64 && k0 + j < tk; j++)
                            if (mask.IsVisible(b, h, row + shift, k0 + j)) expected |= 1UL << j;
                        Assert.Equal(expected, words.RowWord(b, h, row + shift, k0, candidates) & candidates);
                    }
    }
}
