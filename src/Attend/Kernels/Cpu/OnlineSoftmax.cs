using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The online softmax step (Milakov &amp; Gimelshein 2018) over a tile of score rows, shared by the CPU forward and
/// decode kernels. Row statistics (running max m, running sum l) live in arrays padded to whole vectors, so the
/// per-row rescale factors are computed with vector exps rather than one scalar exp per row.
/// </summary>
internal static unsafe class OnlineSoftmax
{
    /// <summary>
    /// Folds a block of scores into the rows' running statistics. <paramref name="s"/> holds
    /// <paramref name="rows"/> rows of <paramref name="count"/> scores (masked scores −∞) and is overwritten with
    /// P = exp(S − new max); <paramref name="rowMax"/> holds each row's block maximum. On return
    /// <paramref name="alpha"/>[r] = exp(old max − new max), the factor the row's accumulated output must be scaled by
    /// (0 while the row has seen nothing). <paramref name="max"/>, <paramref name="sum"/>, <paramref name="rowMax"/>
    /// and <paramref name="alpha"/> must have room for <paramref name="rows"/> rounded up to a whole vector.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Update<TIsa, TVec>(float* s, int rows, int count, float* rowMax, float* max, float* sum, float* alpha)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        NewMaxima<TIsa, TVec>(rows, rowMax, max, alpha);
        for (int r = 0; r < rows; r++)
        {
            float* row = s + (long)r * count;
            TVec vs = TIsa.Splat(rowMax[r]);
            TVec acc = TIsa.Zero;
            for (int c = 0; c < count; c += w)
            {
                TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(row + c), vs));
                TIsa.Store(e, row + c);
                acc = TIsa.Add(acc, e);
            }
            sum[r] = sum[r] * alpha[r] + TIsa.Sum(acc);
        }
    }

    /// <summary>
    /// <see cref="Update{TIsa,TVec}(float*,int,int,float*,float*,float*,float*)"/> for a tile whose rows, in groups of
    /// <paramref name="groupRows"/>, hold finite scores only in columns [<paramref name="columnLo"/>[g],
    /// <paramref name="columnHi"/>[g]) (whole vectors; empty when lo ≥ hi): the exps are taken in that range alone and
    /// the columns outside it are left as they are (their P would be exactly 0, so a caller that multiplies P by V over
    /// the same range gets the same result, and the row sums are bitwise those of the full pass, whose extra terms are
    /// +0). The row statistics are updated for every row, as in the full pass.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Update<TIsa, TVec>(float* s, int rows, int count, float* rowMax, float* max, float* sum, float* alpha,
        ReadOnlySpan<int> columnLo, ReadOnlySpan<int> columnHi, int groupRows)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        NewMaxima<TIsa, TVec>(rows, rowMax, max, alpha);
        for (int r = 0; r < rows; r++)
        {
            int g = r / groupRows;
            int lo = columnLo[g], hi = Math.Min(count, columnHi[g]);
            float* row = s + (long)r * count;
            TVec vs = TIsa.Splat(rowMax[r]);
            TVec acc = TIsa.Zero;
            for (int c = lo; c < hi; c += w)
            {
                TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(row + c), vs));
                TIsa.Store(e, row + c);
                acc = TIsa.Add(acc, e);
            }
            sum[r] = sum[r] * alpha[r] + TIsa.Sum(acc);
        }
    }

    // The statistics half of the row forms: new max per row, alpha = exp(old max − new max), and the per-row shift the
    // exps subtract left in rowMax. Rows that have seen nothing keep max −∞; they subtract 0 instead, so
    // exp(−∞ − 0) = 0 rather than NaN.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void NewMaxima<TIsa, TVec>(int rows, float* rowMax, float* max, float* alpha)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        TVec negInf = TIsa.Splat(float.NegativeInfinity);
        for (int r = 0; r < rows; r += TIsa.Width)
        {
            TVec old = TIsa.Load(max + r);
            TVec newMax = TIsa.Max(old, TIsa.Load(rowMax + r));
            TVec shift = TIsa.Select(TIsa.Equal(newMax, negInf), TIsa.Zero, newMax);
            TIsa.Store(TIsa.Exp(TIsa.Sub(old, shift)), alpha + r);
            TIsa.Store(newMax, max + r);
            TIsa.Store(shift, rowMax + r);
        }
    }

    /// <summary>
    /// <see cref="Update{TIsa,TVec}(float*,int,int,float*,float*,float*,float*)"/> for a transposed tile:
    /// <paramref name="sT"/> holds <paramref name="columns"/> columns of <paramref name="rows"/> scores each (column c's
    /// score of row r at sT[c·rows + r]; rows a multiple of the vector width), so the exps and the row sums are whole
    /// vectors over rows. Overwritten with P = exp(S − new max); the statistics are updated as in the row form.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void UpdateColumns<TIsa, TVec>(float* sT, int columns, int rows, float* rowMax, float* max, float* sum, float* alpha)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        TVec negInf = TIsa.Splat(float.NegativeInfinity);
        for (int r = 0; r < rows; r += w)
        {
            TVec old = TIsa.Load(max + r);
            TVec newMax = TIsa.Max(old, TIsa.Load(rowMax + r));
            TVec shift = TIsa.Select(TIsa.Equal(newMax, negInf), TIsa.Zero, newMax);
            TVec a = TIsa.Exp(TIsa.Sub(old, shift));
            TIsa.Store(a, alpha + r);
            TIsa.Store(newMax, max + r);
            TVec acc = TIsa.Zero;
            for (int c = 0; c < columns; c++)
            {
                float* x = sT + (long)c * rows + r;
                TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(x), shift));
                TIsa.Store(e, x);
                acc = TIsa.Add(acc, e);
            }
            TIsa.Store(TIsa.Add(TIsa.Mul(TIsa.Load(sum + r), a), acc), sum + r);
        }
    }
}
