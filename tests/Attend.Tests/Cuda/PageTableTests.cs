using Xunit;
using Attend.Cuda;

namespace Attend.Tests.Cuda;

/// <summary>The page table of the paged decode (FlashInfer's CSR form): lengths, lookups and every validation.</summary>
public class PageTableTests
{
    [Fact]
    public void LengthsAndLocationsFollowTheTable()
    {
        // Sequence 0: pages 5, 2 (last holds 3 tokens) → 7 tokens; sequence 1: no pages; sequence 2: page 0 full.
        var table = new PageTable([0, 2, 2, 3], [5, 2, 0], [3, 0, 4], pageSize: 4, pageCount: 6);
        Assert.Equal(3, table.Sequences);
        Assert.Equal(7, table.Length(0));
        Assert.Equal(0, table.Length(1));
        Assert.Equal(4, table.Length(2));
        Assert.Equal(7, table.MaxLength);
        Assert.Equal((5, 0), table.Locate(0, 0));
        Assert.Equal((5, 3), table.Locate(0, 3));
        Assert.Equal((2, 2), table.Locate(0, 6));
        Assert.Equal((0, 3), table.Locate(2, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Locate(0, 7));
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Locate(1, 0));
    }

    [Fact]
    public void EveryLocationOfARandomTableIsAValidPageSlot()
    {
        Random rng = TestData.Rng(77);
        int pageSize = rng.Next(1, 20), sequences = rng.Next(1, 6);
        var lengths = Enumerable.Range(0, sequences).Select(_ => rng.Next(0, 200)).ToArray();
        int pages = lengths.Sum(l => (l + pageSize - 1) / pageSize);
        int[] order = Enumerable.Range(0, pages).OrderBy(_ => rng.Next()).ToArray();
        var indptr = new int[sequences + 1];
        var last = new int[sequences];
        for (int b = 0; b < sequences; b++)
        {
            int n = (lengths[b] + pageSize - 1) / pageSize;
            indptr[b + 1] = indptr[b] + n;
            last[b] = n == 0 ? 0 : lengths[b] - (n - 1) * pageSize;
        }
        var table = new PageTable(indptr, order, last, pageSize, pages);
        var used = new HashSet<(int, int)>();
        for (int b = 0; b < sequences; b++)
        {
            Assert.Equal(lengths[b], table.Length(b));
            for (int t = 0; t < lengths[b]; t++)
            {
                (int page, int slot) = table.Locate(b, t);
                Assert.InRange(page, 0, pages - 1);
                Assert.InRange(slot, 0, pageSize - 1);
                Assert.True(used.Add((page, slot)), $"seed {TestData.RunSeed}: ({page}, {slot}) used twice");
            }
        }
    }

    [Fact]
    public void InconsistentTablesAreRefusedNamingTheArgument()
    {
        Assert.Equal("pageIndptr", Assert.Throws<ArgumentException>(() => new PageTable([1, 2], [0], [1], 4, 2)).ParamName);
        Assert.Equal("pageIndptr", Assert.Throws<ArgumentException>(() => new PageTable([0, 2, 1], [0, 1], [1, 0], 4, 2)).ParamName);
        Assert.Equal("pageIndices", Assert.Throws<ArgumentException>(() => new PageTable([0, 2], [0], [1], 4, 2)).ParamName);
        Assert.Equal("pageIndices", Assert.Throws<ArgumentException>(() => new PageTable([0, 1], [2], [1], 4, 2)).ParamName);
        Assert.Equal("lastPageLength", Assert.Throws<ArgumentException>(() => new PageTable([0, 1], [0], [5], 4, 2)).ParamName);
        Assert.Equal("lastPageLength", Assert.Throws<ArgumentException>(() => new PageTable([0, 1], [0], [0], 4, 2)).ParamName);
        Assert.Equal("lastPageLength", Assert.Throws<ArgumentException>(() => new PageTable([0, 0], [], [1], 4, 2)).ParamName);
        Assert.Equal("lastPageLength", Assert.Throws<ArgumentException>(() => new PageTable([0, 1], [0], [1, 1], 4, 2)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PageTable([0], [], [], 0, 2));
    }

    [Theory]
    [InlineData(8, 2, 96, "head dims 64 and 128")]
    [InlineData(32, 2, 128, "at most 8 query heads per KV head")]
    [InlineData(8, 3, 128, "must divide")]
    public void UnsupportedDecodeProblemsSayWhy(int heads, int kvHeads, int dim, string reason) =>
        Assert.Contains(reason, CudaDecode.Unsupported(heads, kvHeads, dim, 16));

    [Theory]
    [InlineData(131072, 8, 8)]
    [InlineData(4096, 8, 8)]
    [InlineData(1, 1, 1)]
    [InlineData(100000, 64, 8)]
    public void SplitsCoverTheCacheInWholeChunks(int maxLength, int sequences, int kvHeads)
    {
        int keys = CudaDecode.SplitKeys(maxLength, sequences, kvHeads, multiprocessors: 132);
        Assert.True(keys >= 256 && keys % 256 == 0, $"{keys}");
        long splits = (maxLength + keys - 1) / keys;
        Assert.True(splits * keys >= maxLength);
        Assert.True((long)sequences * kvHeads * splits <= 16 * 132 + (long)sequences * kvHeads, $"{splits} splits: more CTAs than eight waves need");
    }

    [Fact]
    public void SupportedDecodeProblemsHaveNoReason() => Assert.Null(CudaDecode.Unsupported(32, 8, 128, 16));
}
