namespace Attend.Methods.Sparse.Static;

/// <summary>
/// Neighborhood attention in 1D, 2D or 3D with dilation and causal variants (NA: Hassani et al., "Neighborhood
/// Attention Transformer", 2023; DiNAT's dilation; GNA: "Generalized Neighborhood Attention", 2025). Tokens lie on a
/// <see cref="TokenGrid"/>; along each axis a query sees the <c>kernel</c> keys of its own residue class mod
/// <c>dilation</c> nearest to it — the window is centred and shifted inward at the borders, so every query sees
/// exactly kernel keys per axis (NA's defining difference from a clipped sliding window). Causal: along each axis the
/// query's own position and the kernel − 1 before it (GNA's causal NA).
/// </summary>
/// <remarks>
/// Deviation: GNA's stride (groups of queries sharing one window) is not implemented (stride 1). Positions off the
/// grid (when there are more queries than keys) see nothing.
/// </remarks>
public readonly struct NeighborhoodMask : IMaskMod<NeighborhoodMask>
{
    private readonly int _k0, _k1, _k2, _d0, _d1, _d2;

    /// <summary>Neighborhoods of <paramref name="kernel"/> keys per axis with <paramref name="dilation"/> per axis (one entry per grid axis).</summary>
    /// <exception cref="ArgumentException">A count that differs from the grid's axes, or a kernel or dilation below 1.</exception>
    public NeighborhoodMask(TokenGrid grid, int[] kernel, int[] dilation, bool causal)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(dilation);
        if (kernel.Length != grid.Axes) throw new ArgumentException($"kernel needs {grid.Axes} entries (one per grid axis); got {kernel.Length}.", nameof(kernel));
        if (dilation.Length != grid.Axes) throw new ArgumentException($"dilation needs {grid.Axes} entries (one per grid axis); got {dilation.Length}.", nameof(dilation));
        foreach (int k in kernel) ArgumentOutOfRangeException.ThrowIfLessThan(k, 1, nameof(kernel));
        foreach (int d in dilation) ArgumentOutOfRangeException.ThrowIfLessThan(d, 1, nameof(dilation));
        Grid = grid;
        Causal = causal;
        _k0 = kernel[0];
        _k1 = grid.Axes > 1 ? kernel[1] : 1;
        _k2 = grid.Axes > 2 ? kernel[2] : 1;
        _d0 = dilation[0];
        _d1 = grid.Axes > 1 ? dilation[1] : 1;
        _d2 = grid.Axes > 2 ? dilation[2] : 1;
    }

    /// <summary>The token grid.</summary>
    public TokenGrid Grid { get; }

    /// <summary>Causal neighborhoods (own position and the ones before, per axis).</summary>
    public bool Causal { get; }

    private bool AxisVisible(int x, int y, int extent, int kernel, int dilation)
    {
        if (dilation == 1)
        {
            if (Causal) return y <= x && y > x - kernel;
            int begin = Start(x, extent, kernel);
            return y >= begin && y < begin + kernel;
        }
        if ((x - y) % dilation != 0) return false;
        int r = x % dilation, i = x / dilation, j = y / dilation;
        if (Causal) return j <= i && j > i - kernel;
        int m = (extent - r + dilation - 1) / dilation; // positions of residue r on this axis
        int start = Math.Clamp(i - kernel / 2, 0, Math.Max(0, m - kernel));
        return j >= start && j < start + kernel;
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        if ((uint)q >= (uint)Grid.Size || (uint)k >= (uint)Grid.Size) return false;
        TokenGrid g = Grid;
        if (!AxisVisible(g.Coordinate(q, 0), g.Coordinate(k, 0), g.E0, _k0, _d0)) return false;
        if (g.Axes > 1 && !AxisVisible(g.Coordinate(q, 1), g.Coordinate(k, 1), g.E1, _k1, _d1)) return false;
        return g.Axes < 3 || AxisVisible(g.Coordinate(q, 2), g.Coordinate(k, 2), g.E2, _k2, _d2);
    }

    // First key of the (non-causal, undilated) window of coordinate x: centred, shifted inward at the borders.
    private static int Start(int x, int extent, int kernel) => Math.Clamp(x - kernel / 2, 0, Math.Max(0, extent - kernel));

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int q0 = Math.Max(qStart, 0), q1 = Math.Min(qEnd, Grid.Size);
        if (q1 <= q0) return BlockKind.Empty;
        if (Grid.Axes == 1)
        {
            // 1D: each query's window is an interval whose ends never decrease with the query, so the block's union is
            // [lo(first), hi(last)] and its intersection [lo(last), hi(first)] (closed form, like a sliding window).
            // With dilation the band is the same but only one residue class is visible: partial, evaluated by the kernel.
            int n = Grid.E0, k0 = Math.Max(0, kStart), k1 = Math.Min(kEnd, n) - 1;
            if (k1 < k0) return BlockKind.Empty;
            long span = (long)(_k0 - 1) * _d0;
            long loFirst, hiLast, loLast, hiFirst;
            if (Causal)
            {
                (loFirst, hiFirst) = (q0 - span, q0);
                (loLast, hiLast) = (q1 - 1 - span, q1 - 1);
            }
            else if (_d0 == 1)
            {
                loFirst = Start(q0, n, _k0);
                hiFirst = loFirst + _k0 - 1;
                loLast = Start(q1 - 1, n, _k0);
                hiLast = loLast + _k0 - 1;
            }
            else
            {
                (loFirst, hiFirst) = (q0 - span, q0 + span);
                (loLast, hiLast) = (q1 - 1 - span, q1 - 1 + span);
            }
            if (k1 < loFirst || k0 > hiLast) return BlockKind.Empty;
            bool allRowsOnGrid = qStart >= 0 && qEnd <= n, allKeysOnGrid = kStart >= 0 && kEnd <= n;
            if (_d0 == 1 && allRowsOnGrid && allKeysOnGrid && k0 >= loLast && k1 <= hiFirst) return BlockKind.Full;
            return BlockKind.Partial;
        }
        // Along the slowest axis a visible key lies within kernel·dilation rows of the query's row (the shifted
        // border window included); that bounds the flat positions, and blocks inside the bound are evaluated.
        int stride = Grid.Stride(0), reach = _k0 * _d0;
        long rowLo = Grid.Coordinate(q0, 0) - (long)reach + 1, rowHi = Grid.Coordinate(q1 - 1, 0) + (Causal ? 0L : reach - 1);
        return PatternBlocks.BoundedEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd, rowLo * stride, (rowHi + 1) * stride - 1);
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() =>
        $"na(grid {Grid}, kernel {string.Join("x", new[] { _k0, _k1, _k2 }.Take(Grid.Axes))}, dilation {string.Join("x", new[] { _d0, _d1, _d2 }.Take(Grid.Axes))}{(Causal ? ", causal" : "")})";
}

/// <summary>The <c>neighborhood</c> method: <see cref="NeighborhoodMask"/> on the exact kernel.</summary>
public sealed class NeighborhoodAttentionMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("neighborhood", "sparse", "static",
        "Neighborhood Attention Transformer (Hassani et al., 2023); Generalized Neighborhood Attention (Hassani et al., 2025)", ["cpu", "cuda"], "implemented",
        "1D/2D/3D neighborhood attention with dilation; causal = per-axis causal (GNA)")
    {
        Parameters =
        [
            new("grid", "extents", "T (1D)", "token grid, e.g. 128x128 or 16x32x32 (row-major, size = T)"),
            new("kernel", "int|per-axis", "7 (1D: 1023)", "neighbors per axis, e.g. 7 or 7x5"),
            new("dilation", "int|per-axis", "1", "dilation per axis"),
            new("causal", "bool", "true", "per-axis causal neighborhoods (implies flat causal)"),
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal)
    {
        TokenGrid grid = TokenGrid.Parse(arguments, keyLength);
        int[] kernel = grid.PerAxis(arguments, "kernel", grid.Axes == 1 ? 1023 : 7, 1);
        int[] dilation = grid.PerAxis(arguments, "dilation", 1, 1);
        return new NeighborhoodMask(grid, kernel, dilation, causal);
    }
}
