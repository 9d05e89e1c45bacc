using Attend.Linear;
using Attend.Methods.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>Hedgehog's end-to-end backward: dq, dk, dv against the float64 reference, dW and db against its finite differences.</summary>
public class HedgehogAttentionBackwardTests
{
    [Theory]
    [InlineData(LinearForm.Chunked, 0.3)]
    [InlineData(LinearForm.Recurrent, 0.3)]
    [InlineData(LinearForm.Recurrent, 3.0)]
    [InlineData(LinearForm.Chunked, 6.0)] // identity map, projections up to ~25: below both guards; a query scale there
    [InlineData(LinearForm.Recurrent, 6.0)] // would blow the denominator's ε up by e^25 (the first version of the guard did)
    public void BelowTheGuardsTheMapIsThePapersPlainExponential(LinearForm form, double qkScale)
    {
        // An independent float64 computation with the plain φ = [e^y, e^−y] and the engine's ε = 1e-6: the guards
        // (query scale above 40, key clip at 30) must not move a result the plain map computes finitely.
        Random rng = TestData.Rng(674);
        const int t = 16, dk = 4, f = 3, dv = 5;
        float[] identity = new float[f * dk];
        for (int i = 0; i < f; i++) identity[i * dk + i] = 1;
        var weights = qkScale > 5
            ? new HedgehogWeights(1, f, dk, identity, new float[f])
            : new HedgehogWeights(1, f, dk, TestData.Gaussian<float>(rng, f * dk, 1.0), TestData.Gaussian<float>(rng, f, 0.5));
        float[] q = TestData.Gaussian<float>(rng, t * dk, qkScale), k = TestData.Gaussian<float>(rng, t * dk, qkScale), v = TestData.Gaussian<float>(rng, t * dv);
        // Below the guards by construction: shrink the draw until every key projection is under 30 and every query's under 40
        // (a rare 4σ draw would otherwise meet the key clip, which is meant to change the result there).
        double Largest(float[] x)
        {
            double top = 0;
            for (int row = 0; row < t; row++)
                for (int i = 0; i < f; i++)
                {
                    double y = weights.B[i];
                    for (int j = 0; j < dk; j++) y += weights.W[i * dk + j] * x[row * dk + j];
                    top = Math.Max(top, Math.Abs(y));
                }
            return top;
        }
        while (Largest(k) >= 0.9 * HedgehogFeatureMap.KeyExponentLimit || Largest(q) >= 0.9 * HedgehogFeatureMap.QueryExponentLimit)
            for (int i = 0; i < q.Length; i++) { q[i] *= 0.9f; k[i] *= 0.9f; }
        if (qkScale > 5)
        {
            // Row 0 sees one key, anti-aligned with it: φ(q)·φ(k) = 2F exactly, small against e^25 — where a query scale
            // of e^−25 would make the ε = 1e-6 weigh 10^4 times the denominator.
            Array.Clear(q, 0, dk);
            Array.Clear(k, 0, dk);
            q[0] = 25;
            k[0] = -25;
        }
        var o = TestData.Poisoned<float>(t * dv);
        LinearAttention.Forward(new LinearInputs { Shape = new LinearShape(1, t, 1, 1, dk, dv), Q = q, K = k, V = v },
            HedgehogAttention.Options(weights, new LinearAttentionOptions { ChunkSize = 4, Form = form }), o, default);
        double[] Phi(float[] x, int row)
        {
            var phi = new double[2 * f];
            for (int i = 0; i < f; i++)
            {
                double y = weights.B[i];
                for (int j = 0; j < dk; j++) y += weights.W[i * dk + j] * x[row * dk + j];
                phi[i] = Math.Exp(y);
                phi[f + i] = Math.Exp(-y);
            }
            return phi;
        }
        var expected = new double[t * dv];
        for (int row = 0; row < t; row++)
        {
            double[] pq = Phi(q, row);
            double den = 0;
            var num = new double[dv];
            for (int s = 0; s <= row; s++)
            {
                double[] pk = Phi(k, s);
                double w = 0;
                for (int a = 0; a < 2 * f; a++) w += pq[a] * pk[a];
                den += w;
                for (int x = 0; x < dv; x++) num[x] += w * v[s * dv + x];
            }
            for (int x = 0; x < dv; x++) expected[row * dv + x] = num[x] / (den + 1e-6);
        }
        double e = TestData.RelativeError<float>(o, expected);
        Assert.True(e < 1e-4, $"form {form}, scale {qkScale}: error {e:E2} against the plain map; seed {TestData.RunSeed}");
    }

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
