namespace Attend.Kernels.Cpu;

/// <summary>
/// Runs work items on up to N threads with dynamic claiming (an atomic counter), so items of unequal cost (causal
/// rows) stay balanced; kernels list their heaviest items first.
/// </summary>
internal static class ParallelWork
{
    public static void Run<TItems>(int count, int threads, TItems items) where TItems : class, IWorkItems
    {
        if (count <= 0) return;
        int workers = Math.Min(threads, count);
        if (workers <= 1)
        {
            for (int i = 0; i < count; i++) items.Execute(i);
            return;
        }
        var next = new Counter();
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next.Value)) < count) items.Execute(i);
        });
    }

    private sealed class Counter
    {
        public int Value = -1;
    }
}
