using System.Numerics.Tensors;

namespace Attend.Cli;

/// <summary>Runs bench cases: builds seeded Gaussian inputs, times the engine, counts FLOPs and bytes, checks against the reference.</summary>
internal sealed class BenchRunner(Ceilings ceilings, double minSeconds, int checkRows = 32)
{
    /// <summary>Largest accepted max relative error of float32 forward and decode against float64.</summary>
    public const double ForwardTolerance = 1e-4;

    /// <summary>Largest accepted max relative error of float32 gradients against float64.</summary>
    public const double BackwardTolerance = 1e-3;

    /// <summary>Length of the backward check problem.</summary>
    public const int BackwardCheckLength = 256;

    private (BenchCase Key, float[] Q, float[] K, float[] V)? _inputs;

    public BenchResult Run(BenchCase c)
    {
        double tolerance = c.Pass == BenchPass.Backward ? BackwardTolerance : ForwardTolerance;
        try
        {
            return c.Pass switch
            {
                BenchPass.Backward => RunBackward(c, tolerance),
                _ => RunForward(c, tolerance),
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new BenchResult(c, "", false, null, null, 0, null, null, null, double.NaN, tolerance, $"{e.GetType().Name}: {e.Message}");
        }
    }

    private (float[] Q, float[] K, float[] V) Inputs(BenchCase c)
    {
        BenchCase key = c with { Pass = BenchPass.Forward, Mask = "" };
        if (_inputs is { } cached && cached.Key == key) return (cached.Q, cached.K, cached.V);
        _inputs = null; // let the previous set go before allocating the next
        int seed = HashCode.Combine(c.B, c.H, c.Hkv, c.Tq, c.Tk, c.D) & 0x3fffffff;
        float[] q = GaussianData.Create((long)c.B * c.Tq * c.H * c.D, seed);
        float[] k = GaussianData.Create((long)c.B * c.Tk * c.Hkv * c.D, seed + 1);
        float[] v = GaussianData.Create((long)c.B * c.Tk * c.Hkv * c.D, seed + 2);
        _inputs = (key, q, k, v);
        return (q, k, v);
    }

    private TensorSpan<float> Q(BenchCase c, float[] a) => AttentionLayout.Bthd<float>(a, c.B, c.Tq, c.H, c.D);

    private TensorSpan<float> KV(BenchCase c, float[] a) => AttentionLayout.Bthd<float>(a, c.B, c.Tk, c.Hkv, c.D);

    private BenchResult RunForward(BenchCase c, double tolerance)
    {
        (float[] q, float[] k, float[] v) = Inputs(c);
        var options = new AttentionOptions { Mask = BenchMasks.Create(c.Mask, c.Tk), Variant = c.Variant, Deterministic = c.Deterministic };
        var o = new float[q.Length];
        string variant = "";
        Timing timing = BenchTimer.Measure(() => variant = Attention.Forward<float>(Q(c, q), KV(c, k), KV(c, v), options, Q(c, o)).Name, minSeconds);
        double err = ReferenceCheck.SampledForward(q, k, v, o, c, options, checkRows, seed: c.GetHashCode());
        bool ok = err <= tolerance;
        if (!ok) return Failed(c, variant, timing, err, tolerance);
        double seconds = timing.MedianMs / 1e3;
        double gflops = Flops(c, options.Mask) / seconds / 1e9;
        if (c.Pass == BenchPass.Decode)
        {
            double bytes = 2.0 * c.B * c.Tk * c.Hkv * c.D * sizeof(float);
            double gbps = bytes / seconds / 1e9;
            return new BenchResult(c, variant, true, timing.MedianMs, timing.SpreadMs, timing.Runs, gflops, gbps, gbps / ceilings.CopyGbps, err, tolerance, null);
        }
        return new BenchResult(c, variant, true, timing.MedianMs, timing.SpreadMs, timing.Runs, gflops, null, gflops / ceilings.FmaGflops, err, tolerance, null);
    }

    private BenchResult RunBackward(BenchCase c, double tolerance)
    {
        (float[] q, float[] k, float[] v) = Inputs(c);
        var options = new AttentionOptions { Mask = BenchMasks.Create(c.Mask, c.Tk), Variant = c.Variant, Deterministic = c.Deterministic };
        var o = new float[q.Length];
        var lse = new float[c.B * c.H * c.Tq];
        Attention.Forward<float>(Q(c, q), KV(c, k), KV(c, v), options, Q(c, o), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        float[] dO = GaussianData.Create(q.LongLength, c.GetHashCode() & 0xffff);
        var dq = new float[q.Length];
        var dk = new float[k.Length];
        var dv = new float[v.Length];
        string variant = "";
        Timing timing = BenchTimer.Measure(() => variant = Attention.Backward<float>(Q(c, q), KV(c, k), KV(c, v), Q(c, o), Q(c, dO),
            AttentionLayout.Lse(lse, c.B, c.H, c.Tq), options, Q(c, dq), KV(c, dk), KV(c, dv)).Name, minSeconds);

        BenchCase small = c.WithLength(Math.Min(BackwardCheckLength, c.Tq));
        var smallOptions = new AttentionOptions { Mask = BenchMasks.Create(small.Mask, small.Tk), Variant = variant, Deterministic = c.Deterministic };
        double err = ReferenceCheck.Backward(small, smallOptions, seed: 12345);
        if (!(err <= tolerance)) return Failed(c, variant, timing, err, tolerance);
        double gflops = 2.5 * Flops(c, options.Mask) / (timing.MedianMs / 1e3) / 1e9;
        return new BenchResult(c, variant, true, timing.MedianMs, timing.SpreadMs, timing.Runs, gflops, null, gflops / ceilings.FmaGflops, err, tolerance, null);
    }

    private static BenchResult Failed(BenchCase c, string variant, Timing timing, double err, double tolerance) =>
        new(c, variant, false, null, null, timing.Runs, null, null, null, err, tolerance,
            $"max relative error {err:G3} exceeds {tolerance:G3}");

    /// <summary>
    /// Forward FLOPs = 4·D·(visible pairs over all batch entries and heads). <see cref="BlockMask.VisiblePairs"/> counts
    /// pairs over the sequences and heads it stores (one of each when the mask depends on neither), so it is scaled up.
    /// </summary>
    public static double Flops(BenchCase c, IMaskMod? mask)
    {
        BlockMask blocks = BlockMask.Create(mask ?? new FullMask(), c.Tq, c.Tk, c.B, c.H);
        double pairs = blocks.VisiblePairs();
        if (!blocks.PerSequence) pairs *= c.B;
        pairs *= (double)c.H / blocks.Heads;
        return 4.0 * c.D * pairs;
    }
}
