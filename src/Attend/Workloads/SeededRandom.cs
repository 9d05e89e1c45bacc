namespace Attend.Workloads;

/// <summary>
/// A small deterministic generator (SplitMix64), so that a workload depends only on its options and seed, never on
/// the runtime's <see cref="Random"/> implementation, and independent streams can be filled in parallel.
/// </summary>
internal struct SeededRandom
{
    private ulong _state;
    private double _spare;
    private bool _hasSpare;

    /// <summary>A stream for <paramref name="seed"/> and the stream labels <paramref name="a"/>, <paramref name="b"/>, <paramref name="c"/>.</summary>
    public SeededRandom(int seed, int a = 0, int b = 0, int c = 0)
    {
        _state = Mix((ulong)(uint)seed * 0x9E3779B97F4A7C15UL ^ Mix((ulong)(uint)a + 1) ^ Mix(((ulong)(uint)b + 1) << 21) ^ Mix(((ulong)(uint)c + 1) << 42));
        _spare = 0;
        _hasSpare = false;
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        _state += 0x9E3779B97F4A7C15UL;
        return Mix(_state);
    }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [<paramref name="min"/>, <paramref name="max"/>).</summary>
    public int Next(int min, int max) => min + (int)(NextUInt64() % (ulong)(max - min));

    /// <summary>Standard normal (Box–Muller, two values per pair of uniforms).</summary>
    public double NextGaussian()
    {
        if (_hasSpare)
        {
            _hasSpare = false;
            return _spare;
        }
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        double r = Math.Sqrt(-2 * Math.Log(u1)), a = 2 * Math.PI * u2;
        _spare = r * Math.Sin(a);
        _hasSpare = true;
        return r * Math.Cos(a);
    }
}
