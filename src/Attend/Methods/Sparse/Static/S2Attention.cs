namespace Attend.Methods.Sparse.Static;

/// <summary>
/// S2-Attention (Lin et al., "S2-Attention: Hardware-Aware Context Sharding Among Attention Heads", 2024): the context
/// is cut into blocks of <see cref="BlockSize"/> tokens and head h sees only its own strided shard — the key blocks j
/// with j ≡ h (mod <see cref="Shards"/>) — plus a dense local window of <see cref="LocalBlocks"/> blocks; the shards of
/// the heads together cover the whole context.
/// </summary>
/// <remarks>
/// Deviations: the paper tunes shard layouts per layer and uses a union of heads within a KV group for KV savings;
/// here head h takes shard h mod shards in every layer, and K/V are not compacted (the kernel skips the unseen blocks).
/// </remarks>
public readonly struct S2AttentionMask : IMaskMod<S2AttentionMask>, ICellPattern
{
    /// <summary>A sharding into <paramref name="shards"/> ≥ 1 strided shards of blocks of <paramref name="blockSize"/> ≥ 1 tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size below 1 or negative local blocks.</exception>
    public S2AttentionMask(int blockSize, int shards, int localBlocks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(shards, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(localBlocks);
        BlockSize = blockSize;
        Shards = shards;
        LocalBlocks = localBlocks;
    }

    /// <summary>Tokens per block.</summary>
    public int BlockSize { get; }

    /// <summary>Number of strided shards.</summary>
    public int Shards { get; }

    /// <summary>Dense local blocks (own block included); 0: none.</summary>
    public int LocalBlocks { get; }

    /// <inheritdoc/>
    public bool CellVisible(int head, int queryBlock, int keyBlock) =>
        Math.Abs((long)queryBlock - keyBlock) < LocalBlocks || ((keyBlock % Shards) + Shards) % Shards == head % Shards;

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) =>
        CellVisible(head, PatternBlocks.FloorDiv(q, BlockSize), PatternBlocks.FloorDiv(k, BlockSize));

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        PatternBlocks.ByCells(this, head, BlockSize, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public bool DependsOnHead => Shards > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"s2(block {BlockSize}, shards {Shards}, local {LocalBlocks})";
}

/// <summary>The <c>s2-attention</c> method: <see cref="S2AttentionMask"/> on the exact kernel.</summary>
public sealed class S2AttentionMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("s2-attention", "sparse", "static",
        "S2-Attention: Hardware-Aware Context Sharding Among Attention Heads (Lin et al., 2024)", ["cpu", "cuda"], "implemented",
        "each head sees its own strided shard of blocks plus a local window")
    {
        Parameters =
        [
            new("block", "int", "64", "tokens per block"), new("shards", "int", "8", "strided shards (head h takes shard h mod shards)"),
            new("local", "int", "4", "dense local blocks"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new S2AttentionMask(arguments.GetInt("block", 64, 1), arguments.GetInt("shards", 8, 1), arguments.GetInt("local", 4, 0));
}
