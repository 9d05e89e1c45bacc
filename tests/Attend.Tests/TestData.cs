using System.Numerics.Tensors;

namespace Attend.Tests;

/// <summary>Random inputs, NaN-poisoned outputs and error measures shared by the tests.</summary>
internal static class TestData
{
    /// <summary>A seed per run (printed by the tests on failure) unless ATTEND_TEST_SEED fixes it.</summary>
    public static int RunSeed { get; } = int.TryParse(Environment.GetEnvironmentVariable("ATTEND_TEST_SEED"), out int s) ? s : Random.Shared.Next();

    public static Random Rng(int salt) => new(unchecked(RunSeed * 31 + salt));

    /// <summary>
    /// A salt from a name that is the same in every process (FNV-1a of its characters). string.GetHashCode is randomised
    /// per process, so a salt made from it would make a failing ATTEND_TEST_SEED impossible to reproduce.
    /// </summary>
    public static int Salt(string name)
    {
        uint h = 2166136261;
        foreach (char c in name) h = unchecked((h ^ c) * 16777619);
        return (int)(h & 0x7fffffff);
    }

    /// <summary>Gaussian values scaled by <paramref name="scale"/>, as <typeparamref name="T"/>.</summary>
    public static T[] Gaussian<T>(Random rng, long count, double scale = 1.0) where T : unmanaged
    {
        var data = new T[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            double g = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
            data[i] = ElementConvert.FromSingle<T>((float)(g * scale));
        }
        return data;
    }

    public static T[] Poisoned<T>(long count) where T : unmanaged
    {
        var data = new T[count];
        Array.Fill(data, ElementConvert.FromSingle<T>(float.NaN));
        return data;
    }

    public static TensorSpan<T> Bthd<T>(T[] data, int b, int t, int h, int d) => AttentionLayout.Bthd<T>(data, b, t, h, d);

    /// <summary>The project's error measure (<see cref="Fidelity.MaxRelativeError{T}"/>); a length mismatch counts as +∞.</summary>
    public static double RelativeError<T>(ReadOnlySpan<T> actual, ReadOnlySpan<double> expected) where T : unmanaged =>
        actual.Length != expected.Length ? double.PositiveInfinity : Fidelity.MaxRelativeError(actual, expected);

    /// <summary>Rounds each value to bf16 in place (so a float64 reference sees exactly what a bf16 kernel sees).</summary>
    public static void RoundToBf16(float[] x)
    {
        for (int i = 0; i < x.Length; i++) x[i] = (float)(BFloat16)x[i];
    }

    /// <summary>Relative L2 error ‖a − e‖ / ‖e‖; any non-finite value in <paramref name="actual"/> (unwritten, NaN) gives +∞.</summary>
    public static double RelativeL2(float[] actual, float[] expected)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (!float.IsFinite(actual[i])) return double.PositiveInfinity;
            diff += (actual[i] - (double)expected[i]) * (actual[i] - (double)expected[i]);
            norm += (double)expected[i] * expected[i];
        }
        return Math.Sqrt(diff / Math.Max(norm, double.Epsilon));
    }

    /// <summary>Checks LSE values: −∞ exactly where the reference is −∞, else close in absolute terms relative to magnitude.</summary>
    public static double LseError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]))
            {
                if (!float.IsNegativeInfinity(actual[i])) return double.PositiveInfinity;
                continue;
            }
            if (!float.IsFinite(actual[i])) return double.PositiveInfinity;
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / Math.Max(1, Math.Abs(expected[i])));
        }
        return worst;
    }
}
