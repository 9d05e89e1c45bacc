namespace Attend.Methods.Sparse.Static;

/// <summary>
/// Axial attention (Ho et al., "Axial Attention in Multidimensional Transformers", 2019): on a 2D grid a query sees the
/// keys of its own row and its own column — one mask for what the paper computes as a row layer and a column layer.
/// </summary>
/// <remarks>
/// Deviations: the paper applies row and column attention in consecutive layers (the second seeing the first's output);
/// here both axes form one layer's pattern (the union). 2D grids only. With causal=true the flat causal mask is
/// intersected (the paper's causal variant masks each axis; on a row-major grid the two agree for the row, and for the
/// column the flat order keeps earlier rows).
/// </remarks>
public readonly struct AxialMask : IMaskMod<AxialMask>, ISegmentTest, IMaskRowWords
{
    /// <summary>Axial attention on <paramref name="grid"/> (2 axes).</summary>
    /// <exception cref="ArgumentException">A grid without exactly 2 axes.</exception>
    public AxialMask(TokenGrid grid)
    {
        if (grid.Axes != 2) throw new ArgumentException($"Axial attention needs a 2D grid; got {grid}.", nameof(grid));
        Grid = grid;
    }

    /// <summary>The token grid (rows × columns).</summary>
    public TokenGrid Grid { get; }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        if ((uint)q >= (uint)Grid.Size || (uint)k >= (uint)Grid.Size) return false;
        int w = Grid.E1;
        return q / w == k / w || q % w == k % w;
    }

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates)
    {
        int size = Grid.Size, w = Grid.E1;
        if ((uint)q >= (uint)size || k0 < 0 || k0 >= size) return 0;
        int rowStart = q / w * w;
        ulong word = MaskRowWords.Range(rowStart, rowStart + w, k0);
        // The query's column: keys k ≡ q (mod w) from the first at or after k0.
        for (long k = k0 + ((q % w - k0 % w) % w + w) % w; k < k0 + 64; k += w) word |= 1UL << (int)(k - k0);
        return word & MaskRowWords.Range(0, size, k0);
    }

    /// <inheritdoc/>
    public bool MayMeet(int queryRow, int queryCol0, int queryCol1, int keyRow, int keyCol0, int keyCol1) =>
        queryRow == keyRow || (queryCol0 < keyCol1 && keyCol0 < queryCol1);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        GridBlocks.Classify(this, this, Grid.E1, Grid.Size, batch, head, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"axial({Grid})";
}

/// <summary>The <c>axial</c> method: <see cref="AxialMask"/> on the exact kernel.</summary>
public sealed class AxialAttentionMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("axial", "sparse", "static",
        "Axial Attention in Multidimensional Transformers (Ho, Kalchbrenner, Weissenborn, Salimans, 2019)", ["cpu", "cuda"], "implemented",
        "row + column attention on a 2D token grid (one layer's union)")
    {
        Parameters = [new("grid", "RxC", "near-square factorisation of T", "token grid rows x columns (size = T)"), CausalParameter],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new AxialMask(arguments.Has("grid") ? TokenGrid.Parse(arguments, keyLength, minAxes: 2) : SquareGrid(keyLength));

    /// <summary>The 2D grid rows × columns with rows the largest divisor of <paramref name="length"/> not above its square root.</summary>
    public static TokenGrid SquareGrid(int length)
    {
        length = Math.Max(1, length);
        int rows = (int)Math.Sqrt(length);
        while (length % rows != 0) rows--;
        return new TokenGrid(rows, length / rows);
    }
}
