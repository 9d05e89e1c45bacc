using Attend.Kernels.Cpu;

namespace Attend.Cuda;

/// <summary>
/// The host half of the flash kernel's plan: a <see cref="BlockMask"/> flattened into the arrays the kernel walks.
/// Per (mask entry, mask head, query block) a row of items in ascending key-block order (the order every CPU kernel
/// uses): (key block, −1) for a full block, (key block, p) for the p-th partial block, whose mask is
/// <see cref="QueryBlock"/> 64-bit words, one per query row, bit c set when key c of the block is visible. The bits
/// are evaluated here from the caller's <see cref="IMaskMod"/>, so every mask the CPU accepts runs on the GPU; empty
/// blocks appear nowhere and are never visited.
/// </summary>
internal sealed class FlashBlockPlan
{
    /// <summary>Query rows per block (the CTA's rows).</summary>
    public const int QueryBlock = 128;

    /// <summary>Keys per block (≤ 64: one mask word per row).</summary>
    public const int KeyBlock = 64;

    internal FlashBlockPlan(int[] rowPtr, int[] items, ulong[] bits, int maxQueryBlocks, bool perSequence, int maskHeads, int maxKeyBlocks)
    {
        MaxKeyBlocks = maxKeyBlocks;
        (ColumnPtr, ColumnItems) = Transpose(rowPtr, items, maxQueryBlocks, maskHeads, rowPtr.Length == 0 ? 0 : (rowPtr.Length - 1) / Math.Max(1, maskHeads * maxQueryBlocks), maxKeyBlocks);
        RowPtr = rowPtr;
        Items = items;
        Bits = bits;
        MaxQueryBlocks = maxQueryBlocks;
        PerSequence = perSequence;
        MaskHeads = maskHeads;
    }

    /// <summary>Row starts (one more than rows): row = (entry · MaskHeads + head) · MaxQueryBlocks + queryBlock.</summary>
    public int[] RowPtr { get; }

    /// <summary>Pairs (key block, partial index or −1).</summary>
    public int[] Items { get; }

    /// <summary>Mask words of the partial blocks.</summary>
    public ulong[] Bits { get; }

    /// <summary>Query blocks of the longest sequence (the kernel grid's second dimension).</summary>
    public int MaxQueryBlocks { get; }

    /// <summary>True when the block mask holds one structure per sequence.</summary>
    public bool PerSequence { get; }

    /// <summary>Heads the block mask stores (1 when the mask does not depend on the head).</summary>
    public int MaskHeads { get; }

    /// <summary>Key blocks of the longest sequence (the backward's dK/dV grid).</summary>
    public int MaxKeyBlocks { get; }

    /// <summary>
    /// The transposed lists for the backward pass: column starts, column = (entry · MaskHeads + head) · MaxKeyBlocks +
    /// keyBlock, one more than columns.
    /// </summary>
    public int[] ColumnPtr { get; }

    /// <summary>Pairs (query block, partial index or −1) per column, in ascending query-block order; partial indices point into <see cref="Bits"/>.</summary>
    public int[] ColumnItems { get; }

    private static (int[] Ptr, int[] Items) Transpose(int[] rowPtr, int[] items, int maxQb, int heads, int entries, int maxKb)
    {
        int columns = entries * heads * maxKb;
        var count = new int[columns + 1];
        for (int e = 0; e < entries; e++)
            for (int h = 0; h < heads; h++)
                for (int qb = 0; qb < maxQb; qb++)
                {
                    int row = (e * heads + h) * maxQb + qb;
                    for (int it = rowPtr[row]; it < rowPtr[row + 1]; it++) count[(e * heads + h) * maxKb + items[2 * it] + 1]++;
                }
        for (int c = 0; c < columns; c++) count[c + 1] += count[c];
        var next = (int[])count.Clone();
        var result = new int[2 * count[columns]];
        for (int e = 0; e < entries; e++)
            for (int h = 0; h < heads; h++)
                for (int qb = 0; qb < maxQb; qb++) // ascending query blocks within every column
                {
                    int row = (e * heads + h) * maxQb + qb;
                    for (int it = rowPtr[row]; it < rowPtr[row + 1]; it++)
                    {
                        int at = next[(e * heads + h) * maxKb + items[2 * it]]++;
                        result[2 * at] = qb;
                        result[2 * at + 1] = items[2 * it + 1];
                    }
                }
        return (count, result);
    }

    /// <summary>Number of items (visited blocks).</summary>
    public int ItemCount => Items.Length / 2;

    /// <summary>Number of partial items (visited blocks that carry mask words).</summary>
    public int PartialCount => Bits.Length / QueryBlock;

    /// <summary>
    /// True when at least 1/8 of the visited blocks are partial (sliding windows, short causal calls): the forward then
    /// uses its partial-block specialisation (cheaper mask tests; warps skip blocks their rows cannot see), which
    /// measured faster there and slower on plans made almost only of full blocks.
    /// </summary>
    public bool PartialHeavy => PartialCount > 0 && PartialCount * 8L >= ItemCount;

    /// <summary>Flattens <paramref name="blocks"/>, evaluating <paramref name="mask"/> on its partial blocks.</summary>
    /// <exception cref="ArgumentException">A block mask of another block size.</exception>
    public static FlashBlockPlan Build<TMask>(BlockMask blocks, TMask mask) where TMask : struct, IMaskMod<TMask>
    {
        ArgumentNullException.ThrowIfNull(blocks);
        if (blocks.QueryBlockSize != QueryBlock || blocks.KeyBlockSize != KeyBlock)
            throw new ArgumentException($"The CUDA flash kernel needs blocks of {QueryBlock}x{KeyBlock}; the block mask has {blocks.QueryBlockSize}x{blocks.KeyBlockSize}.", nameof(blocks));
        int entries = blocks.Sequences, heads = blocks.Heads;
        int maxQb = 0, maxKb = 0;
        for (int e = 0; e < entries; e++)
        {
            maxQb = Math.Max(maxQb, blocks.QueryBlocks(e));
            maxKb = Math.Max(maxKb, blocks.KeyBlocks(e));
        }
        var rowPtr = new int[entries * heads * maxQb + 1];
        var items = new List<int>();
        var bits = new List<ulong>();
        int row = 0;
        IMaskRowWords? words = mask as IMaskRowWords; // boxed once: a word per row instead of 64 IsVisible calls
        for (int e = 0; e < entries; e++)
        {
            int tq = blocks.QueryLength(e), tk = blocks.KeyLength(e), shift = tk - tq;
            for (int h = 0; h < heads; h++)
            {
                for (int qb = 0; qb < maxQb; qb++)
                {
                    rowPtr[row++] = items.Count / 2;
                    if (qb >= blocks.QueryBlocks(e)) continue;
                    var merged = new MergedBlocks(blocks.FullKeyBlocks(e, h, qb), blocks.PartialKeyBlocks(e, h, qb));
                    while (merged.Next(out int kb, out bool partial))
                    {
                        items.Add(kb);
                        if (!partial)
                        {
                            items.Add(-1);
                            continue;
                        }
                        items.Add(bits.Count / QueryBlock);
                        for (int r = 0; r < QueryBlock; r++)
                        {
                            int q = qb * QueryBlock + r;
                            ulong word = 0;
                            if (q < tq)
                            {
                                int k0 = kb * KeyBlock, k1 = Math.Min(k0 + KeyBlock, tk);
                                word = MaskRowWords.Row(mask, words, e, h, q + shift, k0, MaskRowWords.Range(k0, k1, k0));
                            }
                            bits.Add(word);
                        }
                    }
                }
            }
        }
        rowPtr[row] = items.Count / 2;
        return new FlashBlockPlan(rowPtr, [.. items], [.. bits], maxQb, blocks.PerSequence, heads, maxKb);
    }
}
