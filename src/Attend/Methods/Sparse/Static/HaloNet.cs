namespace Attend.Methods.Sparse.Static;

/// <summary>
/// HaloNet's blocked local self-attention (Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual
/// Backbones", 2021): the 2D token grid is cut into b×b query blocks, and every query of a block sees the block grown by
/// a halo of h tokens on each side ((b + 2h)² keys, clipped at the image border).
/// </summary>
/// <remarks>
/// Deviations: HaloNet pads the border with zeros (padded keys take part in the softmax with score 0 in some
/// implementations); here keys outside the grid simply do not exist. No relative position embedding (compose a score mod).
/// </remarks>
public readonly struct HaloMask : IMaskMod<HaloMask>, ISegmentTest
{
    /// <summary>Query blocks of <paramref name="block"/> ≥ 1 with a halo of <paramref name="halo"/> ≥ 0 on a 2D <paramref name="grid"/>.</summary>
    /// <exception cref="ArgumentException">A grid without 2 axes, a block below 1 or a negative halo.</exception>
    public HaloMask(TokenGrid grid, int block, int halo)
    {
        if (grid.Axes != 2) throw new ArgumentException($"HaloNet needs a 2D grid; got {grid}.", nameof(grid));
        ArgumentOutOfRangeException.ThrowIfLessThan(block, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(halo);
        Grid = grid;
        Block = block;
        Halo = halo;
    }

    /// <summary>The token grid.</summary>
    public TokenGrid Grid { get; }

    /// <summary>Query block side b.</summary>
    public int Block { get; }

    /// <summary>Halo h around each block.</summary>
    public int Halo { get; }

    private bool Near(int queryCoord, int keyCoord)
    {
        int start = queryCoord / Block * Block;
        return keyCoord >= start - Halo && keyCoord < start + Block + Halo;
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        if ((uint)q >= (uint)Grid.Size || (uint)k >= (uint)Grid.Size) return false;
        int w = Grid.E1;
        return Near(q / w, k / w) && Near(q % w, k % w);
    }

    /// <inheritdoc/>
    public bool MayMeet(int queryRow, int queryCol0, int queryCol1, int keyRow, int keyCol0, int keyCol1)
    {
        if (!Near(queryRow, keyRow)) return false;
        // The columns the segment's queries see: from the first query's block start − h to the last one's block end + h.
        int lo = queryCol0 / Block * Block - Halo, hi = ((queryCol1 - 1) / Block + 1) * Block + Halo;
        return keyCol0 < hi && keyCol1 > lo;
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        GridBlocks.Classify(this, this, Grid.E1, Grid.Size, batch, head, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"halo({Grid}, block {Block}, halo {Halo})";
}

/// <summary>The <c>halonet</c> method: <see cref="HaloMask"/> on the exact kernel.</summary>
public sealed class HaloNetMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("halonet", "sparse", "static",
        "Scaling Local Self-Attention for Parameter Efficient Visual Backbones (Vaswani et al., 2021)", ["cpu", "cuda"], "implemented",
        "blocked local attention: b×b query blocks see the block plus a halo on a 2D token grid")
    {
        Parameters =
        [
            new("grid", "RxC", "near-square factorisation of T", "token grid (size = T)"), new("block", "int", "8", "query block side b"),
            new("halo", "int", "3", "halo h"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal)
    {
        TokenGrid grid = arguments.Has("grid") ? TokenGrid.Parse(arguments, keyLength, minAxes: 2) : AxialAttentionMethod.SquareGrid(keyLength);
        return new HaloMask(grid, arguments.GetInt("block", 8, 1), arguments.GetInt("halo", 3, 0));
    }
}
