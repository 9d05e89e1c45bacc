namespace Attend.Methods.Sparse.Static;

/// <summary>
/// MaxViT's multi-axis attention (Tu et al., "MaxViT: Multi-Axis Vision Transformer", 2022) on a 2D token grid:
/// <em>block</em> attention within non-overlapping P×P windows, and <em>grid</em> attention among the tokens spaced
/// ⌈H/G⌉ rows and ⌈W/G⌉ columns apart (a sparse, dilated global mixing over a G×G grid).
/// </summary>
/// <remarks>
/// Deviations: MaxViT runs block and grid attention as consecutive layers; <c>mode=both</c> (the default) is their
/// union as one layer's pattern, <c>block</c> or <c>grid</c> one of them. Grids need not divide evenly: edge windows
/// are smaller and the last grid groups have fewer members (MaxViT pads instead). No relative position bias (compose a
/// score mod).
/// </remarks>
public readonly struct MaxVitMask : IMaskMod<MaxVitMask>, ISegmentTest
{
    /// <summary>Block windows of <paramref name="window"/> and a <paramref name="gridSize"/>×<paramref name="gridSize"/> grid on a 2D <paramref name="grid"/>.</summary>
    /// <exception cref="ArgumentException">A grid without 2 axes, a window or grid size below 1, or neither part enabled.</exception>
    public MaxVitMask(TokenGrid grid, int window, int gridSize, bool block, bool gridAttention)
    {
        if (grid.Axes != 2) throw new ArgumentException($"MaxViT needs a 2D grid; got {grid}.", nameof(grid));
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(gridSize, 1);
        if (!block && !gridAttention) throw new ArgumentException("Enable block attention, grid attention or both.", nameof(block));
        Grid = grid;
        Window = window;
        GridSize = gridSize;
        Block = block;
        GridAttention = gridAttention;
        RowStride = (grid.E0 + gridSize - 1) / gridSize;
        ColStride = (grid.E1 + gridSize - 1) / gridSize;
    }

    /// <summary>The token grid.</summary>
    public TokenGrid Grid { get; }

    /// <summary>Block attention window P (P×P).</summary>
    public int Window { get; }

    /// <summary>Grid attention grid G (G×G groups).</summary>
    public int GridSize { get; }

    /// <summary>Block attention on.</summary>
    public bool Block { get; }

    /// <summary>Grid attention on.</summary>
    public bool GridAttention { get; }

    private int RowStride { get; }

    private int ColStride { get; }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        if ((uint)q >= (uint)Grid.Size || (uint)k >= (uint)Grid.Size) return false;
        int w = Grid.E1, rq = q / w, cq = q % w, rk = k / w, ck = k % w;
        return (Block && rq / Window == rk / Window && cq / Window == ck / Window)
            || (GridAttention && rq % RowStride == rk % RowStride && cq % ColStride == ck % ColStride);
    }

    /// <inheritdoc/>
    public bool MayMeet(int queryRow, int queryCol0, int queryCol1, int keyRow, int keyCol0, int keyCol1) =>
        (Block && queryRow / Window == keyRow / Window && queryCol0 / Window <= (keyCol1 - 1) / Window && keyCol0 / Window <= (queryCol1 - 1) / Window)
        || (GridAttention && queryRow % RowStride == keyRow % RowStride && GridBlocks.ResiduesMeet(queryCol0, queryCol1, keyCol0, keyCol1, ColStride));

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        GridBlocks.Classify(this, this, Grid.E1, Grid.Size, batch, head, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"maxvit({Grid}, {(Block ? $"block {Window}" : "")}{(Block && GridAttention ? " + " : "")}{(GridAttention ? $"grid {GridSize}" : "")})";
}

/// <summary>The <c>maxvit</c> method: <see cref="MaxVitMask"/> on the exact kernel.</summary>
public sealed class MaxVitMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("maxvit", "sparse", "static",
        "MaxViT: Multi-Axis Vision Transformer (Tu et al., 2022)", ["cpu", "cuda"], "implemented",
        "block (P×P windows) + grid (G×G dilated) attention on a 2D token grid")
    {
        Parameters =
        [
            new("grid", "RxC", "near-square factorisation of T", "token grid (size = T)"), new("window", "int", "8", "block window P"),
            new("gridsize", "int", "8", "grid attention G"), new("mode", "block|grid|both", "both", "which attention(s)"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal)
    {
        TokenGrid grid = arguments.Has("grid") ? TokenGrid.Parse(arguments, keyLength, minAxes: 2) : AxialAttentionMethod.SquareGrid(keyLength);
        int window = arguments.GetInt("window", 8, 1), gridSize = arguments.GetInt("gridsize", 8, 1);
        string mode = arguments.GetChoice("mode", "both", "block", "grid", "both");
        return new MaxVitMask(grid, window, gridSize, mode != "grid", mode != "block");
    }
}
