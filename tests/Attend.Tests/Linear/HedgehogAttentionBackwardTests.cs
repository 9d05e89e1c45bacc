using Attend.Linear;
using Attend.Methods.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>Hedgehog's end-to-end backward: dq, dk, dv against the float64 reference, dW and db against its finite differences.</summary>
public class HedgehogAttentionBackwardTests
{
    [Theory]
    [InlineData(LinearForm.Chunked)]
    [InlineData(LinearForm.Recurrent)]
    public void LargeInputsStayFiniteAndEqualTheReference(LinearForm form)
    {
        // Projections in the hundreds: e^y overflowed float32 and the rows turned NaN before the query scale and key clip.
        Random rng = TestData.Rng(673);
        const int h = 2, hkv = 1, dk = 8, f = 4, dv = 6;
        var weights = new HedgehogWeights(h, f, dk, TestData.Gaussian<float>(rng, h * f * dk, 1.0), TestData.Gaussian<float>(rng, h * f, 0.5));
        LinearAttentionOptions options = HedgehogAttention.Options(weights, new LinearAttentionOptions { ChunkSize = 4 });
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, 23, h, hkv, dk, dv), options, qkScale: 20);
        (float[] o, float[] state) = c.Run(form);
        (double[] eo, double[] es) = c.Naive();
        foreach (float x in o) Assert.True(float.IsFinite(x), $"non-finite output; {c}");
        foreach (float x in state) Assert.True(float.IsFinite(x), $"non-finite state; {c}");
        double e = TestData.RelativeError<float>(o, eo);
        Assert.True(e < 1e-3, $"output error {e:E2} vs the float64 reference; {c}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MapWeightGradientsMatchFiniteDifferencesAndInputGradientsTheReference(bool varlen)
    {
        Random rng = TestData.Rng(671);
        const int h = 4, hkv = 2, dk = 4, f = 3, dv = 5;
        int[]? lengths = varlen ? [6, 1, 9] : null;
        var w = TestData.Gaussian<float>(rng, h * f * dk, 0.4);
        var b = TestData.Gaussian<float>(rng, h * f, 0.2);
        var weights = new HedgehogWeights(h, f, dk, w, b);
        LinearAttentionOptions options = HedgehogAttention.Options(weights, new LinearAttentionOptions { ChunkSize = 4 });
        LinearCase c = LinearCase.Create(rng, new LinearShape(2, 11, h, hkv, dk, dv), options, lengths, qkScale: 0.6);
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength), dST = TestData.Gaussian<float>(rng, c.Config.StateLength, 0.3);

        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, options, dO, dST);
        float[] dq = TestData.Poisoned<float>(c.Q.Length), dkk = TestData.Poisoned<float>(c.K.Length), dvv = TestData.Poisoned<float>(c.V.Length);
        float[] ds = TestData.Poisoned<float>(c.State.Length);
        var dW = new double[weights.W.Length];
        var dB = new double[weights.B.Length];
        Array.Fill(dW, double.NaN);
        Array.Fill(dB, double.NaN);
        HedgehogAttention.Backward(c.Inputs, weights, options, dO, dST, new LinearGradients { Q = dq, K = dkk, V = dvv, InitialState = ds }, dW, dB);
        foreach ((string name, float[] actual, double[] expected) in new[] { ("dq", dq, r.Q), ("dk", dkk, r.K), ("dv", dvv, r.V), ("dS0", ds, r.InitialState) })
        {
            double e = TestData.RelativeError<float>(actual, expected);
            Assert.True(e < 1e-4, $"{name} error {e:E2}, {c}");
        }

        double Loss()
        {
            (double[] o, double[] st) = ReferenceLinearAttention.Forward(c.Inputs, options);
            double l = 0;
            for (int i = 0; i < o.Length; i++) l += o[i] * dO[i];
            for (int i = 0; i < st.Length; i++) l += st[i] * dST[i];
            return l;
        }
        foreach ((string name, double[] p, double[] g) in new[] { ("W", weights.W, dW), ("b", weights.B, dB) })
        {
            double scale = 1e-3, worst = 0;
            foreach (double x in g) scale = Math.Max(scale, Math.Abs(x));
            for (int i = 0; i < p.Length; i++)
            {
                double keep = p[i];
                const double step = 1e-5;
                p[i] = keep + step; double up = Loss();
                p[i] = keep - step; double down = Loss();
                p[i] = keep;
                worst = Math.Max(worst, Math.Abs((up - down) / (2 * step) - g[i]) / scale);
            }
            Assert.True(worst < 1e-4, $"d{name} vs finite differences {worst:E2}, {c}");
        }
    }

    [Fact]
    public void MisSizedWeightGradientsAreRejectedByName()
    {
        Random rng = TestData.Rng(673);
        var weights = new HedgehogWeights(2, 4, 4);
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, 5, 2, 2, 4, 4), HedgehogAttention.Options(weights), initialState: false);
        float[] dO = new float[c.OutputLength];
        var ex = Assert.Throws<ArgumentException>(() => HedgehogAttention.Backward(c.Inputs, weights, null, dO, [], default, new double[3], null));
        Assert.Equal("weightGradient", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => HedgehogAttention.Backward(c.Inputs, new HedgehogWeights(3, 4, 4), null, dO, [], default, null, null));
        Assert.Equal("weights", ex.ParamName);
    }
}
