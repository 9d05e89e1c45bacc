namespace Attend.Methods.Sparse.Static;

/// <summary>
/// PowerAttention (Chen et al., "PowerAttention: Exponentially Scaling of Receptive Fields for Effective Sparse
/// Attention", 2025): on blocks of <see cref="BlockSize"/> tokens, query block i sees key block j when
/// |i − j| &lt; <see cref="LocalBlocks"/> or |i − j| is a power of two (1, 2, 4, …), plus the first
/// <see cref="SinkBlocks"/> blocks; stacking d layers gives every token a complete receptive field of 2^d blocks at
/// about a sliding window's cost (O(log T) blocks per row).
/// </summary>
/// <remarks>
/// Deviation: the abstract does not give the exact layout; this follows our reading of the paper (power-of-two block
/// distances on top of a small local window and sink). Distances are counted in blocks, not tokens.
/// </remarks>
public readonly struct PowerAttentionMask : IMaskMod<PowerAttentionMask>, ICellPattern
{
    /// <summary>A pattern on blocks of <paramref name="blockSize"/> ≥ 1 tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A block size or local window below 1, or negative sink blocks.</exception>
    public PowerAttentionMask(int blockSize, int localBlocks, int sinkBlocks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(localBlocks, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(sinkBlocks);
        BlockSize = blockSize;
        LocalBlocks = localBlocks;
        SinkBlocks = sinkBlocks;
    }

    /// <summary>Tokens per block.</summary>
    public int BlockSize { get; }

    /// <summary>Blocks of the local window (the own block included).</summary>
    public int LocalBlocks { get; }

    /// <summary>Sink blocks at the start.</summary>
    public int SinkBlocks { get; }

    /// <inheritdoc/>
    public bool CellVisible(int head, int queryBlock, int keyBlock)
    {
        if (keyBlock >= 0 && keyBlock < SinkBlocks) return true;
        long distance = Math.Abs((long)queryBlock - keyBlock);
        return distance < LocalBlocks || (distance & (distance - 1)) == 0;
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) =>
        CellVisible(head, PatternBlocks.FloorDiv(q, BlockSize), PatternBlocks.FloorDiv(k, BlockSize));

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        PatternBlocks.ByCells(this, head, BlockSize, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"power(block {BlockSize}, local {LocalBlocks}, sinks {SinkBlocks})";
}

/// <summary>The <c>power-attention</c> method: <see cref="PowerAttentionMask"/> on the exact kernel.</summary>
public sealed class PowerAttentionMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("power-attention", "sparse", "static",
        "PowerAttention: Exponentially Scaling of Receptive Fields for Effective Sparse Attention (Chen et al., 2025)", ["cpu", "cuda"], "implemented",
        "blocks at power-of-two distances plus a local window and a sink block")
    {
        Parameters =
        [
            new("block", "int", "64", "tokens per block"), new("local", "int", "2", "local blocks (own block included)"),
            new("sinks", "int", "1", "sink blocks"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new PowerAttentionMask(arguments.GetInt("block", 64, 1), arguments.GetInt("local", 2, 1), arguments.GetInt("sinks", 1, 0));
}
