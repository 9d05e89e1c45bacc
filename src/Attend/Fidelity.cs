using System.Runtime.CompilerServices;

namespace Attend;

/// <summary>
/// How close a result is to the exact one: the measures the tests, <c>attend bench</c> and docs/METHODS.md report,
/// so a figure means the same everywhere.
/// </summary>
public static class Fidelity
{
    /// <summary>
    /// max |actual − expected| / max(max |expected|, <paramref name="floor"/>) over the whole tensor: the error in units
    /// of the result's own scale. A NaN anywhere in <paramref name="actual"/> gives +∞; two all-zero tensors give 0,
    /// and a non-zero result against an all-zero expectation (with no floor) gives +∞.
    /// </summary>
    /// <param name="actual">The computed values (float, Half, BFloat16 or double).</param>
    /// <param name="expected">The exact values (float64).</param>
    /// <param name="floor">
    /// Smallest scale to divide by, for results whose exact value cancels to zero (then the measure is absolute error
    /// over the floor); 0 for the plain relative error.
    /// </param>
    /// <exception cref="ArgumentException">Tensors of different lengths.</exception>
    public static double MaxRelativeError<T>(ReadOnlySpan<T> actual, ReadOnlySpan<double> expected, double floor = 0) where T : unmanaged
    {
        if (actual.Length != expected.Length)
            throw new ArgumentException($"actual has {actual.Length} values; expected has {expected.Length}.", nameof(actual));
        double maxErr = 0, maxRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double a = typeof(T) == typeof(double) ? Unsafe.As<T, double>(ref Unsafe.AsRef(in actual[i])) : ElementConvert.ToSingle(actual[i]);
            if (double.IsNaN(a)) return double.PositiveInfinity;
            maxErr = Math.Max(maxErr, Math.Abs(a - expected[i]));
            maxRef = Math.Max(maxRef, Math.Abs(expected[i]));
        }
        double scale = Math.Max(maxRef, floor);
        return scale == 0 ? (maxErr == 0 ? 0 : double.PositiveInfinity) : maxErr / scale;
    }
}
