using Attend.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// Gradients: the float32 backward agrees with the float64 reference's, and the reference's agree with central finite
/// differences of the reference forward (so neither can be wrong in the same way).
/// </summary>
public class LinearGradientTests
{
    public static TheoryData<string> Configurations =>
    [
        "identity none additive none", "elu none additive denominator", "relu fixed additive rms", "identity scalar additive none",
        "identity channel additive none", "l2 none delta none", "l2 scalar gated none", "l2 channel gated none", "taylor none additive denominator",
    ];

    private static LinearCase Small(string configuration, int salt, int t = 13, int dk = 6, int dv = 5)
    {
        Random rng = TestData.Rng(salt);
        bool taylor = configuration.StartsWith("taylor", StringComparison.Ordinal);
        return LinearCase.Create(rng, new LinearShape(1, t, 2, 1, taylor ? 3 : dk, dv), LinearFormsTests.Parse(configuration, 2, 4), qkScale: 0.7);
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void BackwardMatchesReference(string configuration)
    {
        LinearCase c = Small(configuration, 41, t: 29, dk: 16, dv: 12);
        Random rng = TestData.Rng(43);
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength);
        float[] dST = TestData.Gaussian<float>(rng, c.Config.StateLength);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, dO, dST);

        foreach (LinearForm form in new[] { LinearForm.Chunked, LinearForm.Recurrent })
        {
            float[] dq = TestData.Poisoned<float>(c.Q.Length), dk = TestData.Poisoned<float>(c.K.Length), dv = TestData.Poisoned<float>(c.V.Length);
            float[] dg = TestData.Poisoned<float>(c.Gate.Length), db = TestData.Poisoned<float>(c.Beta.Length), ds = TestData.Poisoned<float>(c.State.Length);
            LinearAttention.Backward(c.Inputs, c.Options with { Form = form }, dO, dST, new LinearGradients { Q = dq, K = dk, V = dv, Gate = dg, Beta = db, InitialState = ds });
            foreach ((string name, float[] actual, double[] expected) in new[]
                     { ("dq", dq, r.Q), ("dk", dk, r.K), ("dv", dv, r.V), ("dgate", dg, r.Gate), ("dbeta", db, r.Beta), ("dS0", ds, r.InitialState) })
            {
                double e = TestData.RelativeError<float>(actual, expected);
                Assert.True(e < 1e-4, $"{form} {name} error {e:E2}, {c}");
            }
        }
    }

    [Theory]
    [InlineData("identity none additive none", 16)]
    [InlineData("identity fixed additive none", 1)]
    [InlineData("relu none additive none", 5)]
    [InlineData("elu fixed additive denominator", 64)]
    [InlineData("relu fixed additive rms", 32)]
    [InlineData("identity channel additive none", 16)]
    public void BackwardMatchesReferenceOnLongerGroupedRuns(string configuration, int chunk)
    {
        Random rng = TestData.Rng(59 + chunk);
        LinearCase c = LinearCase.Create(rng, new LinearShape(2, 141, 4, 2, 32, 24), LinearFormsTests.Parse(configuration, 4, chunk), qkScale: 0.4);
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength);
        float[] dST = TestData.Gaussian<float>(rng, c.Config.StateLength);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, dO, dST);
        float[] dq = TestData.Poisoned<float>(c.Q.Length), dk = TestData.Poisoned<float>(c.K.Length), dv = TestData.Poisoned<float>(c.V.Length);
        float[] dg = TestData.Poisoned<float>(c.Gate.Length), ds = TestData.Poisoned<float>(c.State.Length);
        LinearAttention.Backward(c.Inputs, c.Options, dO, dST, new LinearGradients { Q = dq, K = dk, V = dv, Gate = dg, InitialState = ds });
        foreach ((string name, float[] actual, double[] expected) in new[] { ("dq", dq, r.Q), ("dk", dk, r.K), ("dv", dv, r.V), ("dgate", dg, r.Gate), ("dS0", ds, r.InitialState) })
        {
            double e = TestData.RelativeError<float>(actual, expected);
            Assert.True(e < 2e-4, $"{name} error {e:E2}, {c}");
        }
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void ReferenceGradientsMatchFiniteDifferences(string configuration)
    {
        LinearCase c = Small(configuration, 47, t: 7, dk: 4, dv: 3);
        // An RMS norm of a near-zero row (ReLU features can vanish) is steep at ε = 1e-6: finite differences need a
        // smooth function, so give the norm a larger ε here (the formula under test is the same).
        if (c.Options.Normalization == LinearNormalization.RmsNorm) c.Options = c.Options with { Epsilon = 1e-2f };
        Random rng = TestData.Rng(53);
        double[] dO = Array.ConvertAll(TestData.Gaussian<float>(rng, c.OutputLength), x => (double)x);
        double[] dST = Array.ConvertAll(TestData.Gaussian<float>(rng, c.Config.StateLength), x => (double)x);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options,
            Array.ConvertAll(dO, x => (float)x), Array.ConvertAll(dST, x => (float)x));

        double Loss()
        {
            (double[] o, double[] s) = ReferenceLinearAttention.Forward(c.Inputs, c.Options);
            double l = 0;
            for (int i = 0; i < o.Length; i++) l += o[i] * dO[i];
            for (int i = 0; i < s.Length; i++) l += s[i] * dST[i];
            return l;
        }

        foreach ((string name, float[] x, double[] g) in new[]
                 { ("q", c.Q, r.Q), ("k", c.K, r.K), ("v", c.V, r.V), ("gate", c.Gate, r.Gate), ("beta", c.Beta, r.Beta), ("S0", c.State, r.InitialState) })
        {
            double worst = 0, scale = 1e-3;
            foreach (double gi in g) scale = Math.Max(scale, Math.Abs(gi));
            for (int i = 0; i < x.Length; i += Math.Max(1, x.Length / 12))
            {
                float keep = x[i];
                // Inputs are float32: a step of 1e-3 relative keeps the difference well above float rounding.
                float step = 1e-3f * Math.Max(1f, Math.Abs(keep));
                if (name == "gate") step = Math.Min(step, Math.Max(1e-5f, -keep / 4));
                // ReLU and elu+1 have a kink (or a jump in the second derivative) at 0: a difference across it measures nothing.
                if (name is "q" or "k" && Math.Abs(keep) < 2 * step) continue;
                x[i] = keep + step; double up = Loss(); float hi = x[i];
                x[i] = keep - step; double down = Loss(); float lo = x[i];
                x[i] = keep;
                double fd = (up - down) / (hi - lo);
                worst = Math.Max(worst, Math.Abs(fd - g[i]) / scale);
            }
            Assert.True(worst < 2e-3, $"d{name} vs finite differences {worst:E2}, {c}");
        }
    }
}
