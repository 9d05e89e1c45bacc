using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>The float64 reference itself: against an independent naive implementation, and its backward by finite differences.</summary>
public class ReferenceTests(ITestOutputHelper output)
{
    [Fact]
    public void ForwardMatchesAnIndependentNaiveImplementation()
    {
        var rng = TestData.Rng(500);
        for (int n = 0; n < 30; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 3_000_000, varlen: n % 3 == 2);
            var x = AttnInputs<float>.Gaussian(c, rng);
            ReferenceForwardResult r = Harness.Reference(c, x);
            double err = TestData.RelativeError(Harness.Naive(c, x, v => v), r.Output);
            Assert.True(err <= 1e-12, $"seed {TestData.RunSeed} case {n} {c}: reference vs naive {err:E2}");
        }
    }

    [Fact]
    public void HandComputedSmallCase()
    {
        // One query, two keys, D = 1, scale 1: softmax([1·2, 1·(−1)]) = [e²,e⁻¹]/(e²+e⁻¹).
        float[] q = [1f], k = [2f, -1f], v = [10f, -4f];
        var r = ReferenceAttention.Forward<float>(TestData.Bthd(q, 1, 1, 1, 1), TestData.Bthd(k, 1, 2, 1, 1), TestData.Bthd(v, 1, 2, 1, 1),
            new AttentionOptions { Scale = 1f });
        double z = Math.Exp(2) + Math.Exp(-1);
        Assert.Equal((10 * Math.Exp(2) - 4 * Math.Exp(-1)) / z, r.Output[0], 12);
        Assert.Equal(Math.Log(z), r.Lse[0], 12);
        // Causal with Tq = 2 > Tk = 1: row 0 (position −1) sees nothing, row 1 sees key 0.
        float[] q2 = [1f, 1f];
        var c = ReferenceAttention.Forward<float>(TestData.Bthd(q2, 1, 2, 1, 1), TestData.Bthd(k[..1], 1, 1, 1, 1), TestData.Bthd(v[..1], 1, 1, 1, 1),
            new AttentionOptions { Mask = Masks.Causal });
        Assert.Equal(0.0, c.Output[0]);
        Assert.Equal(double.NegativeInfinity, c.Lse[0]);
        Assert.Equal(10.0, c.Output[1], 12);
    }

    [Fact]
    public void FullyMaskedRowsHaveZeroOutputNegativeInfinityLseAndZeroGradients()
    {
        var rng = TestData.Rng(501);
        var c = new AttnCase { Tq = 12, Tk = 5, H = 2, Hkv = 1, D = 8, Mask = Masks.Causal, ScoreMod = AlibiScoreMod.Standard(2), Softcap = 5 };
        var x = AttnInputs<float>.Gaussian(c, rng);
        var r = Harness.Reference(c, x);
        var g = Harness.ReferenceBackward(c, x);
        for (int h = 0; h < 2; h++)
            for (int t = 0; t < 12; t++)
            {
                bool empty = t < 7;
                Assert.Equal(empty, double.IsNegativeInfinity(r.Lse[h * 12 + t]));
                for (int e = 0; e < 8; e++)
                {
                    long i = (t * 2 + h) * 8 + e;
                    if (empty) { Assert.Equal(0.0, r.Output[i]); Assert.Equal(0.0, g.DQ[i]); }
                    Assert.False(double.IsNaN(g.DQ[i]));
                }
            }
        Assert.DoesNotContain(g.DK, double.IsNaN);
        Assert.DoesNotContain(g.DV, double.IsNaN);
    }

    /// <summary>Σ dO ⊙ O with O from the float64 reference.</summary>
    private static double Loss(AttnCase c, AttnInputs<float> x)
    {
        double[] o = Harness.Reference(c, x).Output;
        double s = 0;
        for (int i = 0; i < o.Length; i++) s += x.DO[i] * o[i];
        return s;
    }

    /// <summary>Central difference of the loss in one float input element; the step is the float difference actually taken.</summary>
    private static double Derivative(AttnCase c, AttnInputs<float> x, float[] a, int i, double h)
    {
        float keep = a[i];
        float up = (float)(keep + h), down = (float)(keep - h);
        a[i] = up;
        double lu = Loss(c, x);
        a[i] = down;
        double ld = Loss(c, x);
        a[i] = keep;
        return (lu - ld) / ((double)up - down);
    }

    public static TheoryData<string> FiniteDifferenceCases() => new() { "none", "causal", "window", "alibi", "softcap", "relative", "gqa2", "varlen", "everything" };

    [Theory]
    [MemberData(nameof(FiniteDifferenceCases))]
    public void BackwardMatchesFiniteDifferences(string name)
    {
        var rng = TestData.Rng(502 + name.Length * 7 + name[0]);
        var c = new AttnCase { Tq = 5, Tk = 7, H = 2, Hkv = 2, D = 4 };
        switch (name)
        {
            case "causal": c.Mask = Masks.Causal; break;
            case "window": c.Mask = Masks.SlidingWindow(2, 1); break;
            case "alibi": c.ScoreMod = AlibiScoreMod.Standard(2); c.Mask = Masks.Causal; break;
            case "softcap": c.Softcap = 1.5f; break;
            case "relative": c.ScoreMod = Harness.RelativeBias(rng, 2); break;
            case "gqa2": c.H = 4; c.Hkv = 2; c.Mask = Masks.Causal; break;
            case "varlen": c.SetVarlen([3, 0, 4], [5, 2, 3]); c.Mask = Masks.Causal; c.H = 4; c.Hkv = 2; break;
            case "everything":
                c.H = 4; c.Hkv = 2; c.Mask = Masks.And(Masks.SlidingWindow(3, 0), Masks.PrefixLm(1));
                c.ScoreMod = new ComposedScoreMod<AlibiScoreMod, RelativePositionBias>(AlibiScoreMod.Standard(4), Harness.RelativeBias(rng, 4));
                c.Softcap = 2f; c.Scale = 0.8f;
                break;
        }
        // Inputs of scale 1.5 so the softmax is neither flat nor one-hot; softcap at 1.5 then bends the scores strongly.
        var x = AttnInputs<float>.Gaussian(c, rng, 1.5);
        ReferenceBackwardResult g = Harness.ReferenceBackward(c, x);
        const double h = 1e-3;
        foreach ((string tensor, float[] a, double[] analytic) in new[] { ("dQ", x.Q, g.DQ), ("dK", x.K, g.DK), ("dV", x.V, g.DV) })
        {
            var numeric = new double[a.Length];
            for (int i = 0; i < a.Length; i++) numeric[i] = Derivative(c, x, a, i, h);
            double err = TestData.RelativeError(analytic, numeric);
            output.WriteLine($"{name} {tensor}: relative error {err:E2} (max |grad| {numeric.Max(Math.Abs):E2})");
            // O(h²) truncation with h = 1e-3 on O(1) curvature: ~1e-6; 1e-4 leaves room and still catches any wrong term.
            Assert.True(err <= 1e-4, $"seed {TestData.RunSeed} {name} {c}: {tensor} analytic vs finite differences {err:E2}");
        }
    }
}
