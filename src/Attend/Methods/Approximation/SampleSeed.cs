namespace Attend.Methods.Approximation;

/// <summary>
/// Seeds of the approximations' random draws (samples, features) from the user's seed and where the draw happens.
/// Deterministic across processes (SplitMix64 steps), unlike <see cref="HashCode.Combine{T1, T2}(T1, T2)"/>, which .NET
/// randomises per process: a user's <c>seed</c> must reproduce the same samples, and so the same error, on every run.
/// </summary>
internal static class SampleSeed
{
    /// <summary>A seed for <see cref="Random"/> from the user's seed and a node's coordinates.</summary>
    public static int Of(int seed, int batch, long queryStart, long keyStart, int node)
    {
        ulong h = Mix((ulong)(uint)seed);
        h = Mix(h ^ (ulong)(uint)batch);
        h = Mix(h ^ (ulong)queryStart);
        h = Mix(h ^ (ulong)keyStart);
        h = Mix(h ^ (ulong)(uint)node);
        return (int)(h & 0x7fffffff);
    }

    // SplitMix64's finaliser: every input bit reaches every output bit.
    private static ulong Mix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }
}
