using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Attend.Cli;

/// <summary>The machine's measured ceilings: float32 FMA peak on all cores and copy bandwidth.</summary>
/// <param name="FmaGflops">Best-of-3 float32 FMA throughput, GFLOP/s (an FMA counts 2 FLOPs).</param>
/// <param name="CopyGbps">Best-of-3 copy bandwidth, GB/s (10⁹ bytes), counting bytes read plus bytes written (STREAM convention).</param>
/// <param name="FmaIsa">The vector width the FMA loop used.</param>
/// <param name="Threads">Threads used (one per core).</param>
/// <param name="CopyBytes">Size of the copied buffer.</param>
/// <param name="ReadGbps">Read-only streaming bandwidth over the same buffer size (what decode, which only reads, can reach).</param>
internal sealed record Ceilings(double FmaGflops, double CopyGbps, string FmaIsa, int Threads, long CopyBytes, double ReadGbps)
{
    /// <summary>Independent accumulator chains per thread: enough to cover FMA latency × issue width.</summary>
    public const int Chains = 16;

    /// <summary>Measures both ceilings; <paramref name="seconds"/> is the target length of one FMA run.</summary>
    /// <summary>
    /// The higher of two measurements of each ceiling. The machine is shared: one measurement can land while a
    /// neighbour holds a core, and a ceiling that is too low would flatter every fraction of it.
    /// </summary>
    public static Ceilings Max(Ceilings a, Ceilings b) =>
        a with { FmaGflops = Math.Max(a.FmaGflops, b.FmaGflops), CopyGbps = Math.Max(a.CopyGbps, b.CopyGbps), ReadGbps = Math.Max(a.ReadGbps, b.ReadGbps) };

    public static Ceilings Measure(double seconds, long copyBytes)
    {
        int threads = Environment.ProcessorCount;
        (double fma, string isa) = MeasureFma(threads, seconds);
        double copy = MeasureCopy(threads, copyBytes);
        double read = MeasureRead(threads, copyBytes);
        return new Ceilings(fma, copy, isa, threads, copyBytes, read);
    }

    private static (double Gflops, string Isa) MeasureFma(int threads, double seconds)
    {
        bool wide = Vector512.IsHardwareAccelerated;
        int lanes = wide ? Vector512<float>.Count : Vector256<float>.Count;
        Func<long, float> loop = wide ? FmaLoop512 : FmaLoop256;
        // Calibrate iterations on one thread so that one run lasts about `seconds`.
        long iterations = 1 << 16;
        while (true)
        {
            var sw = Stopwatch.StartNew();
            loop(iterations);
            if (sw.Elapsed.TotalSeconds > 0.02) { iterations = (long)(iterations * seconds / sw.Elapsed.TotalSeconds); break; }
            iterations *= 4;
        }
        double best = 0;
        for (int run = 0; run < 3; run++)
        {
            double s = OnAllCores(threads, _ => loop(iterations));
            double flops = (double)threads * iterations * Chains * lanes * 2;
            best = Math.Max(best, flops / s / 1e9);
        }
        return (best, wide ? "Vector512" : "Vector256");
    }

    private static unsafe double MeasureCopy(int threads, long bytes)
    {
        byte* src = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        byte* dst = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        try
        {
            // Touch every page (and give the source non-zero content) before timing.
            new Span<byte>(dst, (int)Math.Min(bytes, int.MaxValue)).Clear();
            for (long i = 0; i < bytes; i += 64) src[i] = (byte)i;
            long chunk = (bytes / threads + 63) / 64 * 64;
            double best = 0;
            for (int run = 0; run < 4; run++) // the first run warms up
            {
                double s = OnAllCores(threads, t =>
                {
                    long start = t * chunk, len = Math.Min(chunk, bytes - start);
                    if (len > 0) Buffer.MemoryCopy(src + start, dst + start, len, len);
                    return 0;
                });
                if (run > 0) best = Math.Max(best, 2.0 * bytes / s / 1e9);
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }
    }

    private static unsafe double MeasureRead(int threads, long bytes)
    {
        float* data = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        try
        {
            long floats = bytes / sizeof(float);
            new Span<float>(data, (int)Math.Min(floats, int.MaxValue)).Fill(1f);
            long chunk = (floats / threads + 63) / 64 * 64;
            double best = 0;
            for (int run = 0; run < 4; run++) // the first run warms up
            {
                double s = OnAllCores(threads, t => SumRange(data + t * chunk, Math.Max(0, Math.Min(chunk, floats - t * chunk))));
                if (run > 0) best = Math.Max(best, bytes / s / 1e9);
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(data);
        }
    }

    // Two independent accumulators per step so the loop is bound by loads, not by add latency.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static unsafe float SumRange(float* p, long count)
    {
        Vector256<float> a = Vector256<float>.Zero, b = Vector256<float>.Zero;
        long i = 0;
        for (; i + 16 <= count; i += 16)
        {
            a += Vector256.Load(p + i);
            b += Vector256.Load(p + i + 8);
        }
        return Vector256.Sum(a + b);
    }

    private static volatile float s_sink;

    /// <summary>Runs <paramref name="work"/> on <paramref name="threads"/> dedicated threads started together; returns the wall time in seconds.</summary>
    private static double OnAllCores(int threads, Func<int, float> work)
    {
        using var ready = new CountdownEvent(threads);
        using var go = new ManualResetEventSlim(false);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            workers[t] = new Thread(() =>
            {
                ready.Signal();
                go.Wait();
                s_sink += work(id);
            }) { IsBackground = true };
            workers[t].Start();
        }
        ready.Wait();
        var sw = Stopwatch.StartNew();
        go.Set();
        foreach (Thread w in workers) w.Join();
        return sw.Elapsed.TotalSeconds;
    }

    // a ← a·m + c converges to c / (1 − m): no overflow, no denormals, and the result is used.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float FmaLoop512(long iterations)
    {
        Vector512<float> m = Vector512.Create(0.999f), c = Vector512.Create(1e-3f);
        Vector512<float> a0 = Vector512.Create(0.1f), a1 = Vector512.Create(0.2f), a2 = Vector512.Create(0.3f), a3 = Vector512.Create(0.4f);
        Vector512<float> a4 = Vector512.Create(0.5f), a5 = Vector512.Create(0.6f), a6 = Vector512.Create(0.7f), a7 = Vector512.Create(0.8f);
        Vector512<float> a8 = Vector512.Create(0.9f), a9 = Vector512.Create(1.0f), a10 = Vector512.Create(1.1f), a11 = Vector512.Create(1.2f);
        Vector512<float> a12 = Vector512.Create(1.3f), a13 = Vector512.Create(1.4f), a14 = Vector512.Create(1.5f), a15 = Vector512.Create(1.6f);
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, c); a1 = Vector512.FusedMultiplyAdd(a1, m, c);
            a2 = Vector512.FusedMultiplyAdd(a2, m, c); a3 = Vector512.FusedMultiplyAdd(a3, m, c);
            a4 = Vector512.FusedMultiplyAdd(a4, m, c); a5 = Vector512.FusedMultiplyAdd(a5, m, c);
            a6 = Vector512.FusedMultiplyAdd(a6, m, c); a7 = Vector512.FusedMultiplyAdd(a7, m, c);
            a8 = Vector512.FusedMultiplyAdd(a8, m, c); a9 = Vector512.FusedMultiplyAdd(a9, m, c);
            a10 = Vector512.FusedMultiplyAdd(a10, m, c); a11 = Vector512.FusedMultiplyAdd(a11, m, c);
            a12 = Vector512.FusedMultiplyAdd(a12, m, c); a13 = Vector512.FusedMultiplyAdd(a13, m, c);
            a14 = Vector512.FusedMultiplyAdd(a14, m, c); a15 = Vector512.FusedMultiplyAdd(a15, m, c);
        }
        Vector512<float> sum = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11)) + ((a12 + a13) + (a14 + a15));
        return Vector512.Sum(sum);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float FmaLoop256(long iterations)
    {
        Vector256<float> m = Vector256.Create(0.999f), c = Vector256.Create(1e-3f);
        Vector256<float> a0 = Vector256.Create(0.1f), a1 = Vector256.Create(0.2f), a2 = Vector256.Create(0.3f), a3 = Vector256.Create(0.4f);
        Vector256<float> a4 = Vector256.Create(0.5f), a5 = Vector256.Create(0.6f), a6 = Vector256.Create(0.7f), a7 = Vector256.Create(0.8f);
        Vector256<float> a8 = Vector256.Create(0.9f), a9 = Vector256.Create(1.0f), a10 = Vector256.Create(1.1f), a11 = Vector256.Create(1.2f);
        Vector256<float> a12 = Vector256.Create(1.3f), a13 = Vector256.Create(1.4f), a14 = Vector256.Create(1.5f), a15 = Vector256.Create(1.6f);
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, c); a1 = Vector256.FusedMultiplyAdd(a1, m, c);
            a2 = Vector256.FusedMultiplyAdd(a2, m, c); a3 = Vector256.FusedMultiplyAdd(a3, m, c);
            a4 = Vector256.FusedMultiplyAdd(a4, m, c); a5 = Vector256.FusedMultiplyAdd(a5, m, c);
            a6 = Vector256.FusedMultiplyAdd(a6, m, c); a7 = Vector256.FusedMultiplyAdd(a7, m, c);
            a8 = Vector256.FusedMultiplyAdd(a8, m, c); a9 = Vector256.FusedMultiplyAdd(a9, m, c);
            a10 = Vector256.FusedMultiplyAdd(a10, m, c); a11 = Vector256.FusedMultiplyAdd(a11, m, c);
            a12 = Vector256.FusedMultiplyAdd(a12, m, c); a13 = Vector256.FusedMultiplyAdd(a13, m, c);
            a14 = Vector256.FusedMultiplyAdd(a14, m, c); a15 = Vector256.FusedMultiplyAdd(a15, m, c);
        }
        Vector256<float> sum = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11)) + ((a12 + a13) + (a14 + a15));
        return Vector256.Sum(sum);
    }
}
