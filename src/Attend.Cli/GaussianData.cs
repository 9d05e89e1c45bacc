namespace Attend.Cli;

/// <summary>Seeded standard-normal inputs for the bench (never zeros), generated in parallel chunks.</summary>
internal static class GaussianData
{
    private const int Chunk = 1 << 20;

    public static float[] Create(long count, int seed)
    {
        var data = new float[count];
        long chunks = (count + Chunk - 1) / Chunk;
        Parallel.For(0L, chunks, c =>
        {
            var rng = new Random(unchecked(seed * 7919 + (int)c));
            long start = c * Chunk, end = Math.Min(start + Chunk, count);
            for (long i = start; i < end; i += 2)
            {
                // Box–Muller: two normals per pair of uniforms.
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                double r = Math.Sqrt(-2 * Math.Log(u1)), a = 2 * Math.PI * u2;
                data[i] = (float)(r * Math.Cos(a));
                if (i + 1 < end) data[i + 1] = (float)(r * Math.Sin(a));
            }
        });
        return data;
    }
}
