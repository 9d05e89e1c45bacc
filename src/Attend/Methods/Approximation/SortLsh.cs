namespace Attend.Methods.Approximation;

/// <summary>
/// Sort-based angular LSH (HyperAttention's sortLSH): <c>r</c> random hyperplanes give each vector an r-bit code, the
/// codes are ranked along a Gray-code order (neighbouring buckets differ in one bit, so nearby directions stay
/// nearby), and rows are sorted by bucket. Equal-sized blocks of the sorted order then hold similar queries and keys.
/// </summary>
public sealed class SortLsh
{
    private readonly float[] _planes; // [bits][dim]

    /// <summary>Hyperplanes for vectors of <paramref name="dim"/> from a seeded generator.</summary>
    /// <exception cref="ArgumentOutOfRangeException">bits outside [1, 20] or dim below 1.</exception>
    public SortLsh(int bits, int dim, int seed)
    {
        if (bits < 1 || bits > 20) throw new ArgumentOutOfRangeException(nameof(bits), bits, "The number of hyperplanes must be in [1, 20].");
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        Bits = bits;
        Dim = dim;
        var rng = new Random(seed);
        _planes = new float[bits * dim];
        for (int i = 0; i < _planes.Length; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            _planes[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
    }

    /// <summary>Hyperplanes (bits of the code).</summary>
    public int Bits { get; }

    /// <summary>Vector length.</summary>
    public int Dim { get; }

    /// <summary>The hyperplanes, [bits][dim] row-major (for tests that recompute the codes on their own).</summary>
    internal ReadOnlySpan<float> Planes => _planes;

    /// <summary>The bucket (rank of the code along the Gray-code order) of one vector.</summary>
    public int Bucket(ReadOnlySpan<float> x)
    {
        int code = 0;
        for (int b = 0; b < Bits; b++)
            if (System.Numerics.Tensors.TensorPrimitives.Dot(x, _planes.AsSpan(b * Dim, Dim)) > 0) code |= 1 << b;
        // Inverse Gray code: the position of `code` in the sequence g(i) = i ^ (i >> 1).
        int rank = code;
        for (int shift = 1; shift < Bits; shift <<= 1) rank ^= rank >> shift;
        return rank;
    }

    /// <summary>
    /// The order that sorts <paramref name="count"/> rows by bucket (ties by index): row <c>order[i]</c> comes i-th.
    /// Row r is <c>rows[r·stride .. r·stride + Dim)</c>.
    /// </summary>
    public int[] SortOrder(ReadOnlySpan<float> rows, int count, int stride)
    {
        var keys = new long[count];
        var order = new int[count];
        for (int r = 0; r < count; r++)
        {
            keys[r] = ((long)Bucket(rows.Slice(r * stride, Dim)) << 32) | (uint)r;
            order[r] = r;
        }
        Array.Sort(keys, order);
        return order;
    }
}
