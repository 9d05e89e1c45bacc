namespace Attend.Methods.Sparse.Static;

/// <summary>
/// The A-shape head pattern of MInference 1.0 (Jiang et al., "MInference 1.0: Accelerating Pre-filling for Long-Context
/// LLMs via Dynamic Sparse Attention", 2024): on blocks of <see cref="BlockSize"/> tokens, a query block sees the first
/// <see cref="SinkBlocks"/> blocks and the <see cref="LocalBlocks"/> nearest blocks (its own included) — the "Λ" of
/// sinks plus a local band, at block granularity so the kernel never evaluates a mask inside it.
/// </summary>
/// <remarks>
/// Deviation: MInference picks A-shape per head by an offline search and uses 64-token blocks with init/local sizes in
/// tokens; here the pattern applies to every head, with sizes in blocks. Non-causal use is symmetric (|i − j|).
/// </remarks>
public readonly struct AShapeMask : IMaskMod<AShapeMask>, ICellPattern
{
    /// <summary>An A-shape on blocks of <paramref name="blockSize"/> ≥ 1 tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A block size or local window below 1, or negative sink blocks.</exception>
    public AShapeMask(int blockSize, int sinkBlocks, int localBlocks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(sinkBlocks);
        ArgumentOutOfRangeException.ThrowIfLessThan(localBlocks, 1);
        BlockSize = blockSize;
        SinkBlocks = sinkBlocks;
        LocalBlocks = localBlocks;
    }

    /// <summary>Tokens per block.</summary>
    public int BlockSize { get; }

    /// <summary>Sink blocks at the start.</summary>
    public int SinkBlocks { get; }

    /// <summary>Local blocks (own block included).</summary>
    public int LocalBlocks { get; }

    /// <inheritdoc/>
    public bool CellVisible(int head, int queryBlock, int keyBlock) =>
        (keyBlock >= 0 && keyBlock < SinkBlocks) || Math.Abs((long)queryBlock - keyBlock) < LocalBlocks;

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
    public override string ToString() => $"a-shape(block {BlockSize}, sinks {SinkBlocks}, local {LocalBlocks})";
}

/// <summary>The <c>a-shape</c> method: <see cref="AShapeMask"/> on the exact kernel.</summary>
public sealed class AShapeMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("a-shape", "sparse", "static",
        "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention (Jiang et al., 2024)", ["cpu", "cuda"], "implemented",
        "MInference's A-shape: sink blocks plus a local band of blocks")
    {
        Parameters =
        [
            new("block", "int", "64", "tokens per block"), new("sinks", "int", "1", "sink blocks"),
            new("local", "int", "16", "local blocks (own block included)"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new AShapeMask(arguments.GetInt("block", 64, 1), arguments.GetInt("sinks", 1, 0), arguments.GetInt("local", 16, 1));
}
