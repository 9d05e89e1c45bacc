using System.Diagnostics;
using System.Globalization;
using Attend.Linear;

namespace Attend.Cli;

/// <summary>
/// <c>attend bench linear --gated-backward</c>: forward + backward tokens/s of the gated and delta rules (GLA, Gated
/// DeltaNet, DeltaNet, KDA) with the matrix-product chunked backward against the chunk-checkpointed reverse recurrence
/// it replaced, as paired A/B runs (alternating, same inputs, same minute) because the machine is shared.
/// </summary>
internal static class BenchLinearGatedBackward
{
    private sealed record Config(string Method, LinearDecay Decay, LinearUpdate Update, bool L2);

    private static readonly Config[] Configs =
    [
        new("gla", LinearDecay.ChannelGate, LinearUpdate.Additive, false),
        new("gated-deltanet", LinearDecay.ScalarGate, LinearUpdate.GatedDelta, true),
        new("deltanet", LinearDecay.None, LinearUpdate.Delta, true),
        new("kda", LinearDecay.ChannelGate, LinearUpdate.GatedDelta, true),
    ];

    /// <summary>Runs the sweep (T = 4k and 16k, or 512 with <paramref name="quick"/>; H = 8, D = 128) and prints one line per (method, T).</summary>
    public static int Execute(bool quick, int pairs, TextWriter output)
    {
        int[] lengths = quick ? [512] : [4096, 16384];
        int h = quick ? 2 : 8, d = quick ? 32 : 128;
        output.WriteLine($"forward + backward, chunk 64, H = {h}, D = {d}, float32, {Environment.ProcessorCount} threads; " +
                         $"{pairs} A/B pairs alternating (A = reverse recurrence, B = matrix products), medians");
        output.WriteLine("method          T      A tok/s    B tok/s   B/A   A fwd+bwd ms  B fwd+bwd ms  A bwd ms  B bwd ms  bwd B/A  max rel diff B vs A");
        foreach (int t in lengths)
            foreach (Config config in Configs)
                output.WriteLine(Line(config, t, h, d, pairs));
        return 0;
    }

    private static string Line(Config config, int t, int h, int d, int pairs)
    {
        long n = (long)t * h * d;
        float[] q = GaussianData.Create(n, 71), k = GaussianData.Create(n, 72), v = GaussianData.Create(n, 73), dO = GaussianData.Create(n, 74);
        for (long i = 0; i < n; i++) q[i] *= 0.1f;
        long gateCount = config.Decay switch { LinearDecay.ChannelGate => n, LinearDecay.ScalarGate => (long)t * h, _ => 0 };
        // log α = log(u), u uniform in [0.9, 1): a chunk of 64 stays well inside the factorised range.
        float[] gate = GaussianData.Create(gateCount, 75);
        for (long i = 0; i < gateCount; i++) gate[i] = MathF.Log(0.9f + 0.1f * (0.5f + 0.5f * MathF.Tanh(gate[i])) * 0.999f);
        float[] beta = config.Update == LinearUpdate.Additive ? [] : GaussianData.Create((long)t * h, 76);
        for (int i = 0; i < beta.Length; i++) beta[i] = 0.5f + 0.5f * MathF.Tanh(beta[i]) * 0.9f;
        var options = new LinearAttentionOptions
        {
            FeatureMap = config.L2 ? FeatureMaps.L2Norm : FeatureMaps.Identity, Decay = config.Decay, Update = config.Update, ChunkSize = 64,
        };
        var shape = LinearShape.Mha(1, t, h, d);
        float[] o = new float[n], dq = new float[n], dk = new float[n], dv = new float[n], dg = new float[gateCount];
        float[] dqA = new float[n];

        (double Total, double Backward) Once(bool reverse, float[] dqInto)
        {
            var inputs = new LinearInputs { Shape = shape, Q = q, K = k, V = v, Gate = gate, Beta = beta };
            LinearAttention.GatedBackward = reverse ? GatedBackwardPath.ReverseRecurrence : GatedBackwardPath.MatrixProducts;
            try
            {
                long start = Stopwatch.GetTimestamp();
                LinearAttention.Forward(inputs, options, o, default);
                long middle = Stopwatch.GetTimestamp();
                LinearAttention.Backward(inputs, options, dO, default, new LinearGradients { Q = dqInto, K = dk, V = dv, Gate = dg });
                return (Stopwatch.GetElapsedTime(start).TotalMilliseconds, Stopwatch.GetElapsedTime(middle).TotalMilliseconds);
            }
            finally { LinearAttention.GatedBackward = GatedBackwardPath.Auto; }
        }

        Once(reverse: true, dqA); // warm-up (JIT, pages) for both paths
        Once(reverse: false, dq);
        var a = new List<double>();
        var b = new List<double>();
        var aBack = new List<double>();
        var bBack = new List<double>();
        for (int i = 0; i < pairs; i++)
        {
            (double ta, double ba) = Once(reverse: true, dqA);
            (double tb, double bb) = Once(reverse: false, dq);
            a.Add(ta); aBack.Add(ba); b.Add(tb); bBack.Add(bb);
        }
        double diff = Fidelity.MaxRelativeError<float>(dq, Array.ConvertAll(dqA, x => (double)x));
        double ma = Median(a), mb = Median(b), mab = Median(aBack), mbb = Median(bBack);
        return string.Create(CultureInfo.InvariantCulture,
            $"{config.Method,-14} {t,6} {t / (ma / 1e3),10:F0} {t / (mb / 1e3),10:F0} {ma / mb,5:F2} {ma,13:F1} {mb,13:F1} {mab,9:F1} {mbb,9:F1} {mab / mbb,8:F2}  {diff:E1} (dq)");
    }

    private static double Median(List<double> x)
    {
        x.Sort();
        int n = x.Count;
        return n % 2 == 1 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
    }
}
