using System.Diagnostics;

namespace Attend.Cli;

/// <summary>Median and spread (max − min) of repeated runs, in milliseconds.</summary>
internal readonly record struct Timing(double MedianMs, double SpreadMs, int Runs);

/// <summary>Times an action: one warm-up run, then repeats until <c>minSeconds</c> have passed and at least <c>minRuns</c> ran.</summary>
internal static class BenchTimer
{
    public static Timing Measure(Action action, double minSeconds, int minRuns = 3, int maxRuns = 1000)
    {
        // Warm-up: at least 3 runs and 0.2 s, so page faults, the thread pool and tiered JIT compilation (which
        // promotes hot methods after about 30 calls) are behind us before timing starts.
        var warm = Stopwatch.StartNew();
        for (int i = 0; i < 3 || (warm.Elapsed.TotalSeconds < 0.2 && i < 50); i++) action();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < minRuns || (total.Elapsed.TotalSeconds < minSeconds && times.Count < maxRuns))
        {
            long start = Stopwatch.GetTimestamp();
            action();
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        times.Sort();
        int n = times.Count;
        double median = n % 2 == 1 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
        return new Timing(median, times[^1] - times[0], n);
    }
}
