using System.Runtime.InteropServices;
using Attend.Methods.Sparse;

namespace Attend.Cuda.Sparse;

/// <summary>
/// The host half of <c>column_sparse_forward.cu</c>: a <see cref="VerticalSlashPlan"/> turned into per-CTA item lists
/// (one CTA per (sequence, query head, 64-row query block), the plan's own block size). For each query block:
/// <list type="bullet">
/// <item>the 64-key blocks its slash diagonals touch, ascending; a block is <em>full</em> (no mask) when every pair in
/// it is visible, otherwise it carries its mask as bitmaps: which of the 127 diagonals crossing the block are slash
/// offsets, and which of its 64 keys are vertical or block columns (those columns are computed here, not gathered);</item>
/// <item>the remaining vertical and block columns at or before the block's last position, gathered 64 per item.</item>
/// </list>
/// Every (row, key) pair the plan covers is thus computed exactly once, and nothing else.
/// </summary>
internal sealed class ColumnSparsePlan
{
    /// <summary>Query rows per CTA: the plan's query block.</summary>
    public const int QueryBlock = VerticalSlashPlan.QueryBlockSize;

    /// <summary>Keys per block or gathered tile.</summary>
    public const int KeyBlock = 64;

    /// <summary>One unit of a CTA's work, laid out as the kernel's <c>SparseItem</c> (32 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Item
    {
        /// <summary>Key block (Y ≤ 0) or first index into <see cref="Columns"/> (Y &gt; 0).</summary>
        public int X;

        /// <summary>−1: full block; 0: masked block; &gt; 0: number of gathered columns.</summary>
        public int Y;

        /// <summary>Diagonal bits 0..63: bit r − c + 63 set when row r and key c lie on a slash offset.</summary>
        public ulong Diag0;

        /// <summary>Diagonal bits 64..126.</summary>
        public ulong Diag1;

        /// <summary>Bit c set when key c of the block is a vertical or block column.</summary>
        public ulong Cols;
    }

    private ColumnSparsePlan(int[] rowPtr, Item[] items, int[] columns, int maxQueryBlocks, int heads)
    {
        RowPtr = rowPtr;
        Items = items;
        Columns = columns;
        MaxQueryBlocks = maxQueryBlocks;
        Heads = heads;
    }

    /// <summary>Item starts per row (one more than rows), row = (sequence · heads + head) · MaxQueryBlocks + queryBlock.</summary>
    public int[] RowPtr { get; }

    /// <summary>The items of every row.</summary>
    public Item[] Items { get; }

    /// <summary>Gathered key indices (relative to their sequence).</summary>
    public int[] Columns { get; }

    /// <summary>Query blocks of the longest sequence (the grid's second dimension).</summary>
    public int MaxQueryBlocks { get; }

    /// <summary>Query heads.</summary>
    public int Heads { get; }

    /// <summary>Key blocks computed (full and masked) over all rows.</summary>
    public long BlockItems { get; private init; }

    /// <summary>Gathered tiles over all rows.</summary>
    public long ColumnItems { get; private init; }

    /// <summary>Builds the item lists of <paramref name="plan"/> ((sequence, head) units in parallel).</summary>
    public static ColumnSparsePlan Build(VerticalSlashPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        int sequences = plan.Sequences, heads = plan.Heads;
        int maxQb = 0;
        for (int s = 0; s < sequences; s++) maxQb = Math.Max(maxQb, plan.QueryBlocks(s));
        int units = sequences * heads;
        var unitItems = new List<Item>[units];
        var unitColumns = new List<int>[units];
        var unitRows = new int[units][];
        Parallel.For(0, units, u =>
        {
            int s = u / heads, h = u % heads;
            var items = new List<Item>();
            var columns = new List<int>();
            var rows = new int[maxQb + 1];
            BuildUnit(plan, s, h, maxQb, items, columns, rows);
            unitItems[u] = items;
            unitColumns[u] = columns;
            unitRows[u] = rows;
        });
        int totalItems = 0, totalColumns = 0;
        for (int u = 0; u < units; u++)
        {
            totalItems += unitItems[u].Count;
            totalColumns += unitColumns[u].Count;
        }
        var rowPtr = new int[units * maxQb + 1];
        var all = new Item[totalItems];
        var cols = new int[totalColumns];
        int itemAt = 0, colAt = 0, row = 0;
        long blockItems = 0, columnItems = 0;
        for (int u = 0; u < units; u++)
        {
            for (int qb = 0; qb < maxQb; qb++) rowPtr[row++] = itemAt + unitRows[u][qb];
            foreach (Item it in unitItems[u])
            {
                Item moved = it;
                if (it.Y > 0)
                {
                    moved.X += colAt;
                    columnItems++;
                }
                else blockItems++;
                all[itemAt++] = moved;
            }
            unitColumns[u].CopyTo(cols, colAt);
            colAt += unitColumns[u].Count;
        }
        rowPtr[row] = itemAt;
        return new ColumnSparsePlan(rowPtr, all, cols, maxQb, heads) { BlockItems = blockItems, ColumnItems = columnItems };
    }

    // The rows of one (sequence, head): per query block, the slash blocks, then the gathered columns.
    private static void BuildUnit(VerticalSlashPlan plan, int s, int h, int maxQb, List<Item> items, List<int> columns, int[] rows)
    {
        int tq = plan.QueryLength(s), tk = plan.KeyLength(s), shift = tk - tq;
        ReadOnlySpan<int> slash = plan.Slash(s, h), vertical = plan.Vertical(s, h);
        int keyBlocks = (tk + KeyBlock - 1) / KeyBlock;
        var touched = new bool[Math.Max(keyBlocks, 1)];
        var merged = new List<int>();
        var ranges = new int[2 * slash.Length];
        for (int qb = 0; qb < maxQb; qb++)
        {
            rows[qb] = items.Count;
            if (qb >= plan.QueryBlocks(s)) continue;
            int i0 = qb * QueryBlock, i1 = Math.Min(tq, i0 + QueryBlock);
            int p0 = i0 + shift, p1 = i1 - 1 + shift;
            if (p1 < 0) continue; // every row sits before the first key: nothing is visible
            // Blocks the diagonals touch: diagonal o covers keys [max(p0 − o, 0), p1 − o].
            int lastBlock = p1 / KeyBlock;
            Array.Clear(touched, 0, lastBlock + 1);
            bool blocks = plan.Coverage == SlashCoverage.Blocks;
            int rangeCount = 0;
            if (blocks)
            {
                // MInference's covering ranges: their keys become column bits of the blocks they touch.
                rangeCount = plan.SlashRanges(s, h, qb, ranges);
                for (int r = 0; r < rangeCount; r++)
                    for (int kb = ranges[2 * r] / KeyBlock; kb <= (ranges[2 * r + 1] - 1) / KeyBlock; kb++) touched[kb] = true;
            }
            else
            {
                foreach (int o in slash)
                {
                    if (o > p1) break;
                    int lo = Math.Max(p0 - o, 0) / KeyBlock, hi = (p1 - o) / KeyBlock;
                    for (int kb = lo; kb <= hi; kb++) touched[kb] = true;
                }
            }
            // This block's columns: verticals and its own, at or before its last position, ascending and distinct.
            merged.Clear();
            ReadOnlySpan<int> own = plan.BlockColumns(s, h, qb);
            int a = 0, b = 0;
            while (a < vertical.Length || b < own.Length)
            {
                int next = b >= own.Length || (a < vertical.Length && vertical[a] <= own[b]) ? vertical[a] : own[b];
                if (a < vertical.Length && vertical[a] == next) a++;
                if (b < own.Length && own[b] == next) b++;
                if (next > p1) break;
                merged.Add(next);
            }
            int rangeAt = 0;
            for (int kb = 0; kb <= lastBlock; kb++)
            {
                if (!touched[kb]) continue;
                int k0 = kb * KeyBlock;
                var item = new Item { X = kb };
                // Diagonal d = p − k of row r, key c is p0 − k0 + r − c; bit d − (p0 − k0 − 63) = r − c + 63.
                int dBase = p0 - k0 - 63;
                int from = blocks ? slash.Length : LowerBound(slash, Math.Max(dBase, 0));
                while (rangeAt < rangeCount && ranges[2 * rangeAt + 1] <= k0) rangeAt++; // key blocks ascend, so do the ranges
                for (int r = rangeAt; r < rangeCount && ranges[2 * r] < k0 + KeyBlock; r++)
                {
                    int lo = Math.Max(ranges[2 * r], k0), hi = Math.Min(ranges[2 * r + 1], k0 + KeyBlock);
                    if (lo < hi) item.Cols |= (hi - lo == 64 ? ulong.MaxValue : ((1UL << (hi - lo)) - 1)) << (lo - k0);
                }
                for (int i = from; i < slash.Length && slash[i] <= dBase + 126; i++)
                {
                    int bit = slash[i] - dBase;
                    if (bit < 64) item.Diag0 |= 1UL << bit;
                    else item.Diag1 |= 1UL << (bit - 64);
                }
                int c0 = LowerBound(merged, k0);
                for (int i = c0; i < merged.Count && merged[i] < k0 + KeyBlock; i++) item.Cols |= 1UL << (merged[i] - k0);
                // Full: every row sees every key causally, and every pair is on a diagonal or a column.
                bool causalFull = k0 + KeyBlock - 1 <= p0;
                bool allDiagonals = item.Diag0 == ulong.MaxValue && item.Diag1 == (1UL << 63) - 1;
                item.Y = causalFull && (item.Cols == ulong.MaxValue || allDiagonals) ? -1 : 0;
                items.Add(item);
            }
            // Gathered tiles: the columns outside every slash block.
            int start = columns.Count;
            foreach (int k in merged)
                if (!touched[k / KeyBlock]) columns.Add(k);
            for (int at = start; at < columns.Count; at += KeyBlock)
                items.Add(new Item { X = at, Y = Math.Min(KeyBlock, columns.Count - at) });
        }
        rows[maxQb] = items.Count;
    }

    private static int LowerBound(ReadOnlySpan<int> sorted, int value)
    {
        int lo = 0, hi = sorted.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (sorted[mid] < value) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    private static int LowerBound(List<int> sorted, int value) => LowerBound(CollectionsMarshal.AsSpan(sorted), value);
}
