namespace Attend.Cuda.Sparse;

/// <summary>
/// Flattens a <see cref="BlockMask"/> built at the CPU kernel's 64-row query blocks (the tile every sparse method's
/// plan uses) into the flash kernel's <see cref="FlashBlockPlan"/> of <see cref="FlashBlockPlan.QueryBlock"/>-row
/// blocks, exactly: a key block is full for a kernel block when it is full for each of its 64-row blocks, skipped when
/// it is empty for all of them, otherwise partial, and then the mask words of each 64-row part come from its own kind
/// (all ones, zero, or the mask evaluated on that part alone). (Sequence, head) units are built in parallel, so a
/// 128k-token plan with many heads costs little host time.
/// </summary>
internal static class FineBlockPlan
{
    /// <summary>The kernel plan of <paramref name="blocks"/> (any query block size that divides the kernel's; key blocks of 64).</summary>
    /// <exception cref="ArgumentException">Block sizes the kernel cannot regroup.</exception>
    public static FlashBlockPlan Build<TMask>(BlockMask blocks, TMask mask) where TMask : struct, IMaskMod<TMask>
    {
        ArgumentNullException.ThrowIfNull(blocks);
        const int bq = FlashBlockPlan.QueryBlock, bk = FlashBlockPlan.KeyBlock;
        int fine = blocks.QueryBlockSize;
        if (fine == bq && blocks.KeyBlockSize == bk) return FlashBlockPlan.Build(blocks, mask);
        if (blocks.KeyBlockSize != bk || bq % fine != 0)
            throw new ArgumentException($"The CUDA flash kernel runs {bq}x{bk} blocks and can regroup query blocks that divide {bq} with {bk}-key blocks; the block mask has {blocks.QueryBlockSize}x{blocks.KeyBlockSize}.", nameof(blocks));
        int factor = bq / fine;
        int entries = blocks.Sequences, heads = blocks.Heads;
        int maxQb = 0, maxKb = 0;
        for (int e = 0; e < entries; e++)
        {
            maxQb = Math.Max(maxQb, (blocks.QueryLength(e) + bq - 1) / bq);
            maxKb = Math.Max(maxKb, blocks.KeyBlocks(e));
        }
        var unitItems = new List<int>[entries * heads];
        var unitBits = new List<ulong>[entries * heads];
        var unitRows = new int[entries * heads][];
        IMaskRowWords? words = mask as IMaskRowWords; // boxed once: a word per row instead of 64 IsVisible calls
        Parallel.For(0, entries * heads, u =>
        {
            int e = u / heads, h = u % heads;
            int tq = blocks.QueryLength(e), tk = blocks.KeyLength(e), shift = tk - tq, fineRows = blocks.QueryBlocks(e);
            var items = new List<int>();
            var bits = new List<ulong>();
            var rows = new int[maxQb];
            var keys = new List<int>();
            var kinds = new int[factor]; // per 64-row part of the current key block: 2 full, 1 partial, 0 empty
            for (int qb = 0; qb < maxQb; qb++)
            {
                rows[qb] = items.Count / 2;
                int f0 = qb * factor, f1 = Math.Min(f0 + factor, fineRows);
                if (f0 >= f1) continue;
                keys.Clear();
                for (int f = f0; f < f1; f++)
                {
                    foreach (int kb in blocks.FullKeyBlocks(e, h, f)) keys.Add(kb);
                    foreach (int kb in blocks.PartialKeyBlocks(e, h, f)) keys.Add(kb);
                }
                keys.Sort();
                int last = -1;
                foreach (int kb in keys)
                {
                    if (kb == last) continue;
                    last = kb;
                    bool full = true;
                    for (int f = f0; f < f1 && full; f++) full = blocks.FullKeyBlocks(e, h, f).BinarySearch(kb) >= 0;
                    items.Add(kb);
                    if (full)
                    {
                        items.Add(-1);
                        continue;
                    }
                    items.Add(bits.Count / bq);
                    int k0 = kb * bk, k1 = Math.Min(k0 + bk, tk);
                    ulong inSequence = MaskRowWords.Range(k0, k1, k0);
                    for (int f = f0; f < f1; f++)
                        kinds[f - f0] = blocks.FullKeyBlocks(e, h, f).BinarySearch(kb) >= 0 ? 2 : blocks.PartialKeyBlocks(e, h, f).BinarySearch(kb) >= 0 ? 1 : 0;
                    for (int r = 0; r < bq; r++)
                    {
                        int q = qb * bq + r;
                        ulong word = 0;
                        if (q < tq)
                        {
                            int kind = kinds[q / fine - f0];
                            if (kind == 2) word = ~0UL;
                            else if (kind == 1) word = MaskRowWords.Row(mask, words, e, h, q + shift, k0, inSequence);
                        }
                        bits.Add(word);
                    }
                }
            }
            unitItems[u] = items;
            unitBits[u] = bits;
            unitRows[u] = rows;
        });
        long totalItems = 0, totalBits = 0;
        for (int u = 0; u < unitItems.Length; u++)
        {
            totalItems += unitItems[u].Count;
            totalBits += unitBits[u].Count;
        }
        // A plan partial almost everywhere at 128k with many heads can pass 2³¹ entries: say so instead of failing on a
        // negative array size.
        if (totalItems > Array.MaxLength || totalBits > Array.MaxLength)
            throw new ArgumentException($"The mask's block plan needs {totalItems} block entries and {totalBits} mask words, more than one array holds " +
                "(a mask that is partial on nearly every block at this length and head count); use fewer heads per call or a block-aligned mask.", nameof(mask));
        var rowPtr = new int[entries * heads * maxQb + 1];
        var allItems = new int[totalItems];
        var allBits = new ulong[totalBits];
        int itemAt = 0, bitAt = 0, row = 0;
        for (int u = 0; u < unitItems.Length; u++)
        {
            for (int qb = 0; qb < maxQb; qb++) rowPtr[row++] = itemAt / 2 + unitRows[u][qb];
            List<int> items = unitItems[u];
            int partialBase = bitAt / bq;
            for (int i = 0; i < items.Count; i += 2)
            {
                allItems[itemAt + i] = items[i];
                allItems[itemAt + i + 1] = items[i + 1] < 0 ? -1 : items[i + 1] + partialBase;
            }
            itemAt += items.Count;
            unitBits[u].CopyTo(allBits, bitAt);
            bitAt += unitBits[u].Count;
        }
        rowPtr[row] = itemAt / 2;
        return new FlashBlockPlan(rowPtr, allItems, allBits, maxQb, blocks.PerSequence, heads, maxKb);
    }
}
