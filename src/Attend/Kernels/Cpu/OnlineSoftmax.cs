using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>The online softmax step (Milakov &amp; Gimelshein 2018) shared by the CPU forward and decode kernels.</summary>
internal static unsafe class OnlineSoftmax
{
    /// <summary>
    /// Updates one row with a new block of <paramref name="count"/> scores (a multiple of the vector width; masked
    /// scores are −∞): new running max, P = exp(S − max) written in place, running sum. Returns the factor the row's
    /// accumulated output must be scaled by: exp(old max − new max), or 0 while the row has seen nothing.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Update<TIsa, TVec>(float* row, int count, float* max, float* sum)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        TVec mv = TIsa.Load(row);
        for (int c = w; c < count; c += w) mv = TIsa.Max(mv, TIsa.Load(row + c));
        float newMax = MathF.Max(*max, TIsa.MaxAcross(mv));
        // A row that has seen nothing keeps max −∞; subtract 0 instead so exp(−∞ − 0) = 0 rather than NaN.
        float shift = float.IsNegativeInfinity(newMax) ? 0f : newMax;
        TVec vs = TIsa.Splat(shift);
        TVec acc = TIsa.Zero;
        for (int c = 0; c < count; c += w)
        {
            TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(row + c), vs));
            TIsa.Store(e, row + c);
            acc = TIsa.Add(acc, e);
        }
        float alpha = float.IsNegativeInfinity(*max) ? 0f : MathF.Exp(*max - shift);
        *sum = *sum * alpha + TIsa.Sum(acc);
        *max = newMax;
        return alpha;
    }
}
