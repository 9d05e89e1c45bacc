using System.Collections.Concurrent;
using System.Numerics;
using System.Runtime.Intrinsics;

namespace Attend.Kernels.Cpu;

/// <summary>
/// An iterative radix-2 complex FFT over split real/imaginary float64 arrays, for lengths that are powers of two.
/// Any length is reached by zero padding: the only user, the Toeplitz products of kernelized attention with relative
/// positions, needs a linear convolution, for which a power-of-two circulant of length ≥ 2T − 1 is exact, so no
/// Bluestein step is needed. Twiddles and the bit-reversal permutation are computed once per length (in float64, then
/// cached. Float64 because a Toeplitz product by FFT has an absolute error of ε·max|y|, and the
/// positive-feature sums it computes span many orders of magnitude: float32 would lose the small ones.
/// </summary>
internal sealed unsafe class Fft
{
    private static readonly ConcurrentDictionary<int, Fft> s_plans = new();

    private readonly int[] _bitReverse;
    // Twiddles stage by stage, contiguous: the stage of butterfly span `size` keeps e^(−2πi·j/size), j < size/2, at
    // [size/2 − 1, size − 1), so the inner loop reads them with unit stride (and in vectors).
    private readonly double[] _cos, _sin;

    private Fft(int length)
    {
        Length = length;
        int bits = BitOperations.Log2((uint)length);
        _bitReverse = new int[length];
        for (int i = 0; i < length; i++)
        {
            int r = 0;
            for (int b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
            _bitReverse[i] = r;
        }
        _cos = new double[Math.Max(1, length - 1)];
        _sin = new double[Math.Max(1, length - 1)];
        for (int size = 2; size <= length; size <<= 1)
        {
            for (int j = 0; j < size / 2; j++)
            {
                double angle = -2 * Math.PI * j / size;
                _cos[size / 2 - 1 + j] = Math.Cos(angle);
                _sin[size / 2 - 1 + j] = Math.Sin(angle);
            }
        }
    }

    /// <summary>The transform length (a power of two).</summary>
    public int Length { get; }

    /// <summary>The cached plan for <paramref name="length"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a power of two ≥ 1.</exception>
    public static Fft For(int length)
    {
        if (length < 1 || !BitOperations.IsPow2(length))
            throw new ArgumentOutOfRangeException(nameof(length), length, "FFT length must be a power of two ≥ 1.");
        return s_plans.GetOrAdd(length, n => new Fft(n));
    }

    /// <summary>The smallest power of two ≥ <paramref name="n"/>.</summary>
    public static int PaddedLength(int n) => n <= 1 ? 1 : (int)BitOperations.RoundUpToPowerOf2((uint)n);

    /// <summary>In-place forward transform X_k = Σ x_j e^(−2πi·jk/L).</summary>
    public void Forward(Span<double> re, Span<double> im) => Transform(re, im, inverse: false);

    /// <summary>In-place inverse transform x_j = (1/L) Σ X_k e^(+2πi·jk/L) (scaled, so Inverse(Forward(x)) = x).</summary>
    public void Inverse(Span<double> re, Span<double> im)
    {
        Transform(re, im, inverse: true);
        double s = 1.0 / Length;
        System.Numerics.Tensors.TensorPrimitives.Multiply(re, s, re);
        System.Numerics.Tensors.TensorPrimitives.Multiply(im, s, im);
    }

    private void Transform(Span<double> re, Span<double> im, bool inverse)
    {
        int n = Length;
        if (re.Length < n || im.Length < n) throw new ArgumentException($"FFT of length {n} needs spans of at least {n} values.", nameof(re));
        for (int i = 0; i < n; i++)
        {
            int j = _bitReverse[i];
            if (j > i)
            {
                (re[i], re[j]) = (re[j], re[i]);
                (im[i], im[j]) = (im[j], im[i]);
            }
        }
        double sign = inverse ? -1 : 1;
        fixed (double* pr = re, pi = im, pc = _cos, ps = _sin)
        {
            for (int size = 2; size <= n; size <<= 1)
            {
                int half = size >> 1;
                double* wc = pc + half - 1, ws = ps + half - 1;
                for (int start = 0; start < n; start += size)
                {
                    double* ar = pr + start, ai = pi + start, br = ar + half, bi = ai + half;
                    int j = 0;
                    if (Vector256.IsHardwareAccelerated && half >= 4)
                    {
                        Vector256<double> sg = Vector256.Create(sign);
                        for (; j < half; j += 4)
                        {
                            Vector256<double> wr = Vector256.Load(wc + j), wi = sg * Vector256.Load(ws + j);
                            Vector256<double> xr0 = Vector256.Load(br + j), xi0 = Vector256.Load(bi + j);
                            Vector256<double> xr = xr0 * wr - xi0 * wi, xi = xr0 * wi + xi0 * wr;
                            Vector256<double> yr = Vector256.Load(ar + j), yi = Vector256.Load(ai + j);
                            (yr - xr).Store(br + j);
                            (yi - xi).Store(bi + j);
                            (yr + xr).Store(ar + j);
                            (yi + xi).Store(ai + j);
                        }
                    }
                    for (; j < half; j++)
                    {
                        double wr = wc[j], wi = sign * ws[j];
                        double xr = br[j] * wr - bi[j] * wi;
                        double xi = br[j] * wi + bi[j] * wr;
                        br[j] = ar[j] - xr;
                        bi[j] = ai[j] - xi;
                        ar[j] += xr;
                        ai[j] += xi;
                    }
                }
            }
        }
    }
}
