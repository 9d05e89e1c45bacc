namespace Attend.Methods.Sparse.Static;

/// <summary>
/// Tokens laid out row-major on a 1D, 2D or 3D grid (the last axis fastest), as vision and video models flatten
/// images and clips: position p has coordinates (p / (E1·E2), (p / E2) mod E1, p mod E2).
/// </summary>
public readonly record struct TokenGrid
{
    /// <summary>A grid with the given extents (1 to 3 axes, each ≥ 1).</summary>
    /// <exception cref="ArgumentException">No extents, more than 3, or one below 1 (parameter <c>grid</c>).</exception>
    public TokenGrid(params int[] extents)
    {
        ArgumentNullException.ThrowIfNull(extents);
        if (extents.Length is < 1 or > 3) throw new ArgumentException($"A grid has 1 to 3 axes; got {extents.Length}.", "grid");
        foreach (int e in extents)
            if (e < 1) throw new ArgumentException($"Grid extents must be ≥ 1; got {string.Join("x", extents)}.", "grid");
        Axes = extents.Length;
        E0 = extents[0];
        E1 = extents.Length > 1 ? extents[1] : 1;
        E2 = extents.Length > 2 ? extents[2] : 1;
        Size = checked(E0 * E1 * E2);
    }

    /// <summary>Number of axes (1, 2 or 3).</summary>
    public int Axes { get; }

    /// <summary>Extent of axis 0 (slowest).</summary>
    public int E0 { get; }

    /// <summary>Extent of axis 1 (1 when absent).</summary>
    public int E1 { get; }

    /// <summary>Extent of axis 2 (1 when absent).</summary>
    public int E2 { get; }

    /// <summary>Tokens on the grid.</summary>
    public int Size { get; }

    /// <summary>Extent of axis <paramref name="axis"/>.</summary>
    public int Extent(int axis) => axis switch { 0 => E0, 1 => E1, _ => E2 };

    /// <summary>Positions between neighbours along axis <paramref name="axis"/>.</summary>
    public int Stride(int axis) => axis switch { 0 => E1 * E2, 1 => E2, _ => 1 };

    /// <summary>Coordinate of position <paramref name="p"/> on axis <paramref name="axis"/> (0 ≤ p &lt; Size).</summary>
    public int Coordinate(int p, int axis) => axis switch { 0 => p / (E1 * E2), 1 => p / E2 % E1, _ => p % E2 };

    /// <summary>The grid from parameter <c>grid</c> (e.g. <c>64x64</c>), or 1D over <paramref name="keyLength"/> tokens; its size must equal the length.</summary>
    /// <exception cref="ArgumentException">A malformed grid or one whose size differs from the length (parameter <c>grid</c>).</exception>
    public static TokenGrid Parse(MethodArguments arguments, int keyLength, int minAxes = 1)
    {
        string text = arguments.GetString("grid", "");
        TokenGrid grid;
        if (text.Length == 0)
        {
            if (minAxes > 1) throw new ArgumentException($"Parameter 'grid' is required (e.g. grid=64x64 for {keyLength} tokens).", "grid");
            grid = new TokenGrid(Math.Max(1, keyLength));
        }
        else
        {
            string[] parts = text.Split('x', 'X', ',');
            var e = new int[parts.Length];
            for (int i = 0; i < parts.Length; i++)
                if (!int.TryParse(parts[i].Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out e[i]))
                    throw new ArgumentException($"Parameter 'grid' must be extents joined by 'x', e.g. 64x64; got '{text}'.", "grid");
            grid = new TokenGrid(e);
        }
        if (grid.Axes < minAxes) throw new ArgumentException($"Parameter 'grid' needs at least {minAxes} axes; got '{text}'.", "grid");
        if (grid.Size != keyLength && keyLength > 0)
            throw new ArgumentException($"Parameter 'grid' {text} holds {grid.Size} tokens but the sequence has {keyLength}.", "grid");
        return grid;
    }

    /// <summary>A per-axis integer parameter: one value for every axis, or one per axis (e.g. <c>7</c> or <c>7x5</c>).</summary>
    /// <exception cref="ArgumentException">Malformed, below <paramref name="min"/>, or a count that is neither 1 nor the axis count.</exception>
    public int[] PerAxis(MethodArguments arguments, string name, int fallback, int min)
    {
        string text = arguments.GetString(name, "");
        var values = new int[Axes];
        if (text.Length == 0)
        {
            Array.Fill(values, fallback);
            return values;
        }
        string[] parts = text.Split('x', 'X', ',');
        if (parts.Length != 1 && parts.Length != Axes)
            throw new ArgumentException($"Parameter '{name}' needs 1 or {Axes} values (one per grid axis); got '{text}'.", name);
        for (int i = 0; i < Axes; i++)
        {
            string p = parts[parts.Length == 1 ? 0 : i].Trim();
            if (!int.TryParse(p, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out values[i]) || values[i] < min)
                throw new ArgumentException($"Parameter '{name}' must be integers ≥ {min}; got '{text}'.", name);
        }
        return values;
    }

    /// <inheritdoc/>
    public override string ToString() => Axes switch { 1 => $"{E0}", 2 => $"{E0}x{E1}", _ => $"{E0}x{E1}x{E2}" };
}

/// <summary>A 2D pattern's test on two row segments (row, [c0, c1)) of a query range and a key range.</summary>
internal interface ISegmentTest
{
    /// <summary>False only when no query of the first segment sees any key of the second.</summary>
    bool MayMeet(int queryRow, int queryCol0, int queryCol1, int keyRow, int keyCol0, int keyCol1);
}

/// <summary>Block classification of 2D patterns by the row segments a flat range covers.</summary>
internal static class GridBlocks
{
    /// <summary>
    /// Empty when no pair of row segments (of the query range × the key range, on a grid <paramref name="width"/> wide)
    /// may meet; otherwise Partial (or Full when the block is small enough to evaluate, and it is).
    /// </summary>
    public static BlockKind Classify<TMask, TTest>(in TMask mask, in TTest test, int width, int size, int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
        where TMask : struct, IMaskMod
        where TTest : struct, ISegmentTest
    {
        qStart = Math.Max(qStart, 0);
        qEnd = Math.Min(qEnd, size);
        kStart = Math.Max(kStart, 0);
        kEnd = Math.Min(kEnd, size);
        if (qEnd <= qStart || kEnd <= kStart) return BlockKind.Empty;
        bool may = false;
        for (int qa = qStart; qa < qEnd && !may;)
        {
            int qRow = qa / width, qb = Math.Min(qEnd, (qRow + 1) * width);
            for (int ka = kStart; ka < kEnd && !may;)
            {
                int kRow = ka / width, kb = Math.Min(kEnd, (kRow + 1) * width);
                may = test.MayMeet(qRow, qa - qRow * width, qb - qRow * width, kRow, ka - kRow * width, kb - kRow * width);
                ka = kb;
            }
            qa = qb;
        }
        return may ? BlockKind.Partial : BlockKind.Empty;
    }

    /// <summary>True when the residues mod <paramref name="m"/> of [a0, a1) and [b0, b1) share a value.</summary>
    public static bool ResiduesMeet(int a0, int a1, int b0, int b1, int m)
    {
        if (a1 - a0 >= m || b1 - b0 >= m) return a1 > a0 && b1 > b0;
        for (int x = a0; x < a1; x++)
        {
            int r = x % m;
            int first = b0 + ((r - b0 % m) % m + m) % m; // first y ≥ b0 with y ≡ r
            if (first < b1) return true;
        }
        return false;
    }
}
