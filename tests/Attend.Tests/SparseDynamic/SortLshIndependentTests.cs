using Attend.Methods.Approximation;
using Xunit;

namespace Attend.Tests.SparseDynamic;

/// <summary>
/// sortLSH recomputed in the test from the hyperplanes alone (float64 dot products, the Gray-code rank found by
/// search, not by the implementation's prefix xor): <see cref="SortLsh.SortOrder"/> must be a permutation sorted by
/// (rank, index), and the sorted-block assignment of HyperAttention/Scatterbrain must put row i in block
/// position(i) / blockSize. The methods' float64 references reuse SortOrder, so only this test can catch a wrong order.
/// </summary>
public class SortLshIndependentTests
{
    /// <summary>The bucket of one row from the hyperplanes: the position of its code in the Gray sequence g(i) = i ^ (i >> 1).</summary>
    private static int ReferenceBucket(SortLsh lsh, ReadOnlySpan<float> row)
    {
        ReadOnlySpan<float> planes = lsh.Planes;
        int code = 0;
        for (int b = 0; b < lsh.Bits; b++)
        {
            double dot = 0;
            for (int i = 0; i < lsh.Dim; i++) dot += (double)row[i] * planes[b * lsh.Dim + i];
            if (dot > 0) code |= 1 << b;
        }
        for (int rank = 0; rank < 1 << lsh.Bits; rank++)
            if ((rank ^ (rank >> 1)) == code) return rank;
        throw new InvalidOperationException("no Gray rank");
    }

    /// <summary>Resamples any row that lies within 1e-3 of a hyperplane, so float32 and float64 agree on every bit.</summary>
    private static void KeepOffThePlanes(Random rng, SortLsh lsh, float[] rows, int count, int stride, int offset)
    {
        ReadOnlySpan<float> planes = lsh.Planes;
        for (int r = 0; r < count; r++)
        {
            Span<float> row = rows.AsSpan(offset + r * stride, lsh.Dim);
            for (bool near = true; near;)
            {
                near = false;
                for (int b = 0; b < lsh.Bits && !near; b++)
                {
                    double dot = 0;
                    for (int i = 0; i < lsh.Dim; i++) dot += (double)row[i] * planes[b * lsh.Dim + i];
                    near = Math.Abs(dot) < 1e-3;
                }
                if (near) TestData.Gaussian<float>(rng, lsh.Dim).CopyTo(row);
            }
        }
    }

    /// <summary>Position of every row in the order sorted by (reference bucket, index).</summary>
    private static int[] ReferencePositions(SortLsh lsh, float[] rows, int count, int stride, int offset)
    {
        var buckets = new int[count];
        for (int r = 0; r < count; r++) buckets[r] = ReferenceBucket(lsh, rows.AsSpan(offset + r * stride, lsh.Dim));
        var position = new int[count];
        for (int r = 0; r < count; r++)
        {
            int before = 0;
            for (int s = 0; s < count; s++)
                if (buckets[s] < buckets[r] || (buckets[s] == buckets[r] && s < r)) before++;
            position[r] = before;
        }
        return position;
    }

    [Theory]
    [InlineData(1, 16, 1, 1)]
    [InlineData(3, 16, 77, 2)]
    [InlineData(8, 33, 300, 3)]
    [InlineData(12, 64, 129, 1)]
    public void SortOrderIsThePermutationSortedByTheHyperplaneCodes(int bits, int dim, int count, int heads)
    {
        Random rng = TestData.Rng(TestData.Salt("sortlsh-order") + bits * 7 + count);
        var lsh = new SortLsh(bits, dim, seed: 5 + bits);
        int stride = heads * dim;
        float[] rows = TestData.Gaussian<float>(rng, (long)count * stride);
        for (int h = 0; h < heads; h++)
        {
            KeepOffThePlanes(rng, lsh, rows, count, stride, h * dim);
            int[] order = lsh.SortOrder(rows.AsSpan(h * dim), count, stride);
            int[] position = ReferencePositions(lsh, rows, count, stride, h * dim);
            Assert.Equal(count, order.Length);
            var seen = new bool[count];
            for (int i = 0; i < count; i++)
            {
                Assert.InRange(order[i], 0, count - 1);
                Assert.False(seen[order[i]], $"row {order[i]} twice in the order; seed {TestData.RunSeed}");
                seen[order[i]] = true;
                Assert.True(position[order[i]] == i, $"head {h}: row {order[i]} is {i}-th, its code puts it {position[order[i]]}-th; seed {TestData.RunSeed}");
                Assert.Equal(ReferenceBucket(lsh, rows.AsSpan(h * dim + order[i] * stride, dim)), lsh.Bucket(rows.AsSpan(h * dim + order[i] * stride, dim)));
            }
        }
    }

    [Theory]
    [InlineData(150, 130, 2, 1, 32, 64)]
    [InlineData(200, 257, 4, 2, 16, 64)]
    [InlineData(1, 1, 1, 1, 16, 64)]
    [InlineData(300, 300, 2, 2, 48, 128)]
    public void SortedBlocksAreTheCodeRankDividedByTheBlockSize(int nq, int nk, int heads, int kvHeads, int dim, int blockSize)
    {
        Random rng = TestData.Rng(TestData.Salt("sortlsh-blocks") + nq + dim);
        var lsh = new SortLsh(3, dim, seed: 17);
        float[] q = TestData.Gaussian<float>(rng, (long)nq * heads * dim);
        float[] k = TestData.Gaussian<float>(rng, (long)nk * kvHeads * dim);
        float[] v = TestData.Gaussian<float>(rng, (long)nk * kvHeads * dim);
        for (int h = 0; h < heads; h++) KeepOffThePlanes(rng, lsh, q, nq, heads * dim, h * dim);
        for (int hk = 0; hk < kvHeads; hk++) KeepOffThePlanes(rng, lsh, k, nk, kvHeads * dim, hk * dim);
        (_, _, int[][] qBlock, int[][] kBlock) = SortedBlockAttention.Run(q, k, v, nq, nk, heads, kvHeads, lsh, blockSize, 1f / MathF.Sqrt(dim), threads: 1);
        for (int h = 0; h < heads; h++)
        {
            int[] position = ReferencePositions(lsh, q, nq, heads * dim, h * dim);
            for (int i = 0; i < nq; i++)
                Assert.True(qBlock[h][i] == position[i] / blockSize, $"query {i} head {h}: block {qBlock[h][i]}, expected {position[i] / blockSize}; seed {TestData.RunSeed}");
        }
        for (int hk = 0; hk < kvHeads; hk++)
        {
            int[] position = ReferencePositions(lsh, k, nk, kvHeads * dim, hk * dim);
            for (int j = 0; j < nk; j++)
                Assert.True(kBlock[hk][j] == position[j] / blockSize, $"key {j} kv head {hk}: block {kBlock[hk][j]}, expected {position[j] / blockSize}; seed {TestData.RunSeed}");
        }
    }
}
