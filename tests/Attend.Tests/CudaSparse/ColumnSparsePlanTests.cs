using Xunit;
using Attend.Cuda.Sparse;
using Attend.Methods.Sparse;

namespace Attend.Tests.CudaSparse;

/// <summary>
/// The host plan of the CUDA token-level kernel, checked on the CPU: decoding the items with the kernel's own rules
/// (full blocks, bitmaps with causality, gathered columns with causality) must cover every pair the
/// <see cref="VerticalSlashPlan"/> covers exactly once, and nothing else.
/// </summary>
public class ColumnSparsePlanTests
{
    [Theory]
    [InlineData(1, 2, 300, 300, 1)]
    [InlineData(2, 3, 131, 517, 2)]   // Tq < Tk: bottom-right aligned
    [InlineData(1, 2, 401, 150, 3)]   // Tq > Tk: the first rows see nothing
    [InlineData(1, 1, 1, 1, 4)]       // one token
    [InlineData(1, 2, 64, 64, 5)]     // exactly one block
    public void ItemsCoverThePlanExactlyOnce(int batch, int heads, int tq, int tk, int salt)
    {
        Random rng = TestData.Rng(700 + salt);
        VerticalSlashPlan plan = RandomPlan(rng, new VerticalSlashPlan(batch, heads, tq, tk));
        AssertExactCover(plan, ColumnSparsePlan.Build(plan));
    }

    [Fact]
    public void VarlenSequencesGetTheirOwnRows()
    {
        Random rng = TestData.Rng(710);
        var offsets = SeqOffsets.FromLengths([1, 0, rng.Next(2, 140), rng.Next(200, 400)]);
        VerticalSlashPlan plan = RandomPlan(rng, new VerticalSlashPlan(offsets, offsets, 2));
        AssertExactCover(plan, ColumnSparsePlan.Build(plan));
    }

    [Fact]
    public void ADenseBandBecomesFullBlocksAndEverythingIsCausalAttention()
    {
        const int t = 500;
        VerticalSlashPlan plan = VerticalSlashPlan.Everything(1, 1, t, t);
        ColumnSparsePlan items = ColumnSparsePlan.Build(plan);
        AssertExactCover(plan, items);
        Assert.Equal(0, items.ColumnItems);
        // Blocks strictly below the diagonal need no mask; only each row's diagonal block (and its neighbour) does.
        int masked = items.Items.Count(i => i.Y == 0), full = items.Items.Count(i => i.Y == -1);
        Assert.True(full > masked, $"full {full}, masked {masked}");
    }

    [Fact]
    public void ColumnsOutsideTheSlashBlocksAreGatheredSixtyFourAtATime()
    {
        var plan = new VerticalSlashPlan(1, 1, 1000, 1000);
        plan.SetSlash(0, 0, [0]);
        int[] vertical = Enumerable.Range(0, 150).Select(i => i * 6).ToArray();
        plan.SetVertical(0, 0, vertical);
        ColumnSparsePlan items = ColumnSparsePlan.Build(plan);
        AssertExactCover(plan, items);
        Assert.All(items.Items.Where(i => i.Y > 0), i => Assert.InRange(i.Y, 1, 64));
        Assert.True(items.ColumnItems > 0);
    }

    internal static VerticalSlashPlan RandomPlan(Random rng, VerticalSlashPlan plan)
    {
        for (int s = 0; s < plan.Sequences; s++)
        {
            int keys = plan.KeyLength(s);
            if (keys == 0) continue;
            for (int h = 0; h < plan.Heads; h++)
            {
                plan.SetVertical(s, h, Enumerable.Range(0, rng.Next(0, 30)).Select(_ => rng.Next(keys)).ToArray());
                int band = rng.Next(0, 100);
                plan.SetSlash(s, h, Enumerable.Range(0, Math.Min(band, keys)).Concat(Enumerable.Range(0, rng.Next(0, 20)).Select(_ => rng.Next(keys))).ToArray());
                for (int qb = 0; qb < plan.QueryBlocks(s); qb++)
                    if (rng.Next(3) == 0) plan.SetBlockColumns(s, h, qb, Enumerable.Range(0, rng.Next(1, 90)).Select(_ => rng.Next(keys)).ToArray());
            }
        }
        return plan;
    }

    // Decodes every item as column_sparse_forward.cu does and counts how often each pair is computed.
    internal static void AssertExactCover(VerticalSlashPlan plan, ColumnSparsePlan items)
    {
        const int bq = ColumnSparsePlan.QueryBlock, bk = ColumnSparsePlan.KeyBlock;
        for (int s = 0; s < plan.Sequences; s++)
        {
            int tq = plan.QueryLength(s), tk = plan.KeyLength(s), shift = tk - tq;
            for (int h = 0; h < plan.Heads; h++)
            {
                var count = new int[(long)tq * tk];
                for (int qb = 0; qb < items.MaxQueryBlocks; qb++)
                {
                    int row = (s * plan.Heads + h) * items.MaxQueryBlocks + qb;
                    for (int it = items.RowPtr[row]; it < items.RowPtr[row + 1]; it++)
                    {
                        Assert.True(qb * bq < tq, $"seed {TestData.RunSeed}: items on a query block past the sequence");
                        ColumnSparsePlan.Item item = items.Items[it];
                        for (int r = 0; r < bq && qb * bq + r < tq; r++)
                        {
                            int i = qb * bq + r, p = i + shift;
                            for (int c = 0; c < bk; c++)
                            {
                                int key;
                                bool visible;
                                if (item.Y > 0)
                                {
                                    if (c >= item.Y) continue;
                                    key = items.Columns[item.X + c];
                                    visible = key <= p;
                                }
                                else
                                {
                                    key = item.X * bk + c;
                                    int d = r - c + 63;
                                    bool onDiag = ((d < 64 ? item.Diag0 >> d : item.Diag1 >> (d - 64)) & 1) != 0;
                                    bool onCol = ((item.Cols >> c) & 1) != 0;
                                    visible = item.Y == -1 ? key < tk : key <= p && key < tk && (onDiag || onCol);
                                    if (item.Y == -1)
                                        Assert.True(key <= p && plan.Covers(s, h, i, key), $"seed {TestData.RunSeed}: full block {item.X} holds an uncovered pair ({i}, {key})");
                                }
                                if (visible) count[(long)i * tk + key]++;
                            }
                        }
                    }
                }
                for (int i = 0; i < tq; i++)
                    for (int k = 0; k < tk; k++)
                    {
                        int expected = plan.Covers(s, h, i, k) ? 1 : 0;
                        if (count[(long)i * tk + k] != expected)
                            Assert.Fail($"seed {TestData.RunSeed}: sequence {s} head {h} pair ({i}, {k}) computed {count[(long)i * tk + k]} times; the plan says {expected}");
                    }
            }
        }
    }
}

/// <summary>The backend scope a method runs under, and the refusals a CPU-only machine gives.</summary>
public class BackendScopeTests
{
    [Fact]
    public void ScopesNestAndOptionsWin()
    {
        Assert.Null(AttentionBackend.Current);
        using (AttentionBackend.Use("cuda"))
        {
            Assert.Equal("cuda", AttentionBackend.Resolve(null));
            Assert.Equal("cpu", AttentionBackend.Resolve(new AttentionOptions { Backend = "cpu" }));
            using (AttentionBackend.Use("cpu")) Assert.Null(AttentionBackend.Current);
            Assert.Equal("cuda", AttentionBackend.Current);
        }
        Assert.Null(AttentionBackend.Current);
    }

    [Fact]
    public void TokenLevelPathOnAnUnknownBackendNamesIt()
    {
        var plan = VerticalSlashPlan.Everything(1, 1, 8, 8);
        float[] x = new float[8 * 64], o = new float[8 * 64];
        var e = Assert.Throws<ArgumentException>(() => VerticalSlashAttention.Forward<float>(TestData.Bthd(x, 1, 8, 1, 64), TestData.Bthd(x, 1, 8, 1, 64),
            TestData.Bthd(x, 1, 8, 1, 64), plan, new AttentionOptions { Backend = "tpu" }, TestData.Bthd(o, 1, 8, 1, 64)));
        Assert.Contains("tpu", e.Message);
    }

    [Fact]
    public void Float32CudaVariantSaysWhyItCannotRun()
    {
        var kernel = new Attend.Cuda.Sparse.CudaFlashFloat32Kernel();
        Assert.False(kernel.IsSupported(new KernelProblem(AttentionPass.Forward, ElementType.BFloat16, 1, 4, 1, 128, 10, 10), out string why));
        Assert.Contains("float32", why);
        Assert.False(kernel.IsSupported(new KernelProblem(AttentionPass.Backward, ElementType.Float32, 1, 4, 1, 128, 10, 10), out why));
        Assert.Contains("forward-only", why);
        Assert.False(kernel.IsSupported(new KernelProblem(AttentionPass.Forward, ElementType.Float32, 1, 4, 1, 80, 10, 10), out why));
        Assert.Contains("head dim 80", why);
        bool gpu = Attend.Cuda.CudaBackend.IsAvailable(out string noGpu);
        Assert.Equal(gpu, kernel.IsSupported(new KernelProblem(AttentionPass.Forward, ElementType.Float32, 1, 4, 1, 128, 10, 10), out why));
        if (!gpu) Assert.Equal(noGpu, why);
    }
}
