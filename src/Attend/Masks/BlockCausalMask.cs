namespace Attend;

/// <summary>
/// Chunked (block-causal) attention: positions are grouped in chunks of <see cref="ChunkSize"/>; a query sees every
/// key of its own chunk and of all earlier chunks: ⌊k / C⌋ ≤ ⌊q / C⌋.
/// </summary>
public readonly struct BlockCausalMask : IMaskMod<BlockCausalMask>
{
    /// <summary>Creates a block-causal mask.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A chunk size below 1.</exception>
    public BlockCausalMask(int chunkSize)
    {
        if (chunkSize < 1) throw new ArgumentOutOfRangeException(nameof(chunkSize), chunkSize, "The chunk size must be ≥ 1.");
        ChunkSize = chunkSize;
    }

    /// <summary>Tokens per chunk.</summary>
    public int ChunkSize { get; }

    // Floor division: positions can be negative when Tq > Tk.
    private int Chunk(int position)
    {
        int size = ChunkSize > 0 ? ChunkSize : throw new InvalidOperationException("default(BlockCausalMask) has no chunk size; create it with new BlockCausalMask(chunkSize).");
        return position >= 0 ? position / size : -((-position + size - 1) / size);
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => Chunk(k) <= Chunk(q);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        if (Chunk(kStart) > Chunk(qEnd - 1)) return BlockKind.Empty;
        if (Chunk(kEnd - 1) <= Chunk(qStart)) return BlockKind.Full;
        return BlockKind.Partial;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"block-causal({ChunkSize})";
}
