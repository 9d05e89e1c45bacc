using System.Collections.Concurrent;
using System.Numerics;

namespace Attend.Kernels.Cpu;

/// <summary>
/// An iterative radix-2 complex FFT over split real/imaginary float64 arrays, for lengths that are powers of two.
/// Any length is reached by zero padding: the only user, the Toeplitz products of kernelized attention with relative
/// positions, needs a linear convolution, for which a power-of-two circulant of length ≥ 2T − 1 is exact, so no
/// Bluestein step is needed. Twiddles and the bit-reversal permutation are computed once per length (in float64, then
/// cached. Float64 because a Toeplitz product by FFT has an absolute error of ε·max|y|, and the
/// positive-feature sums it computes span many orders of magnitude: float32 would lose the small ones.
/// </summary>
internal sealed class Fft
{
    private static readonly ConcurrentDictionary<int, Fft> s_plans = new();

    private readonly int[] _bitReverse;
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
        _cos = new double[length / 2];
        _sin = new double[length / 2];
        for (int i = 0; i < length / 2; i++)
        {
            double angle = -2 * Math.PI * i / length;
            _cos[i] = Math.Cos(angle);
            _sin[i] = Math.Sin(angle);
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
        for (int size = 2; size <= n; size <<= 1)
        {
            int half = size >> 1, step = n / size;
            for (int start = 0; start < n; start += size)
            {
                for (int j = 0, t = 0; j < half; j++, t += step)
                {
                    double wr = _cos[t], wi = sign * _sin[t];
                    int a = start + j, b = a + half;
                    double xr = re[b] * wr - im[b] * wi;
                    double xi = re[b] * wi + im[b] * wr;
                    re[b] = re[a] - xr;
                    im[b] = im[a] - xi;
                    re[a] += xr;
                    im[a] += xi;
                }
            }
        }
    }
}
