using Attend.Linear;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>Long sequences stay finite at extreme decays and gates; bad parameters get clear exceptions.</summary>
public class LinearValidationTests
{
    [Theory]
    [InlineData("identity channel additive none", "zero")]
    [InlineData("identity channel additive none", "one")]
    [InlineData("l2 channel gated none", "zero")]
    [InlineData("l2 scalar gated none", "one")]
    [InlineData("elu fixed additive denominator", "mid")]
    [InlineData("l2 none delta none", "mid")]
    public void SixtyFourThousandTokensStayFinite(string configuration, string regime)
    {
        const int t = 65536;
        Random rng = TestData.Rng(61);
        LinearAttentionOptions options = LinearFormsTests.Parse(configuration, 1, 64);
        if (options.Decay == LinearDecay.FixedPerHead) options = options with { HeadDecay = [1f] };
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, t, 1, 1, 16, 16), options, gateRegime: regime, qkScale: 3);
        foreach (LinearForm form in new[] { LinearForm.Chunked, LinearForm.Recurrent })
        {
            (float[] o, float[] s) = c.Run(form);
            Assert.True(Array.TrueForAll(o, float.IsFinite), $"{form} output not finite, {c}");
            Assert.True(Array.TrueForAll(s, float.IsFinite), $"{form} state not finite, {c}");
        }
        // The last tokens of both forms agree with each other (the float64 naive form is too slow at this length).
        (float[] oc, float[] sc) = c.Run(LinearForm.Chunked);
        (float[] or, float[] sr) = c.Run(LinearForm.Recurrent);
        int tail = 256 * 16;
        double e = TestData.RelativeError<float>(oc.AsSpan(oc.Length - tail), Array.ConvertAll(or[^tail..], x => (double)x));
        Assert.True(e < 1e-3, $"chunked vs recurrent tail error {e:E2}, {c}");
    }

    private static LinearInputs Inputs(float[] q, float[] k, float[] v, float[]? gate = null, float[]? state = null, int t = 4, int dk = 8) => new()
    {
        Shape = new LinearShape(1, t, 2, 2, dk, 8), Q = q, K = k, V = v, Gate = gate ?? [], InitialState = state ?? [],
    };

    private static float[] Ones(int n) => Enumerable.Repeat(0.5f, n).ToArray();

    [Fact]
    public void NegativeOrZeroDecayIsRejected()
    {
        float[] q = Ones(64), k = Ones(64), v = Ones(64), o = new float[64];
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { HeadDecay = [0.9f, -0.5f] }, o, default));
        Assert.Contains("HeadDecay[1]", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { HeadDecay = [0f, 0.5f] }, o, default));
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { HeadDecay = [1.5f, 0.5f] }, o, default));
        float[] gate = Ones(8); // log α = +0.5: a "decay" above 1
        var g = Assert.Throws<ArgumentOutOfRangeException>(() =>
            LinearAttention.Forward(Inputs(q, k, v, gate), new LinearAttentionOptions { Decay = LinearDecay.ScalarGate }, o, default));
        Assert.Contains("gate", g.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BetaOutsideZeroToTwoOrNaNIsRejectedByName()
    {
        float[] q = Ones(64), k = Ones(64), v = Ones(64), o = new float[64];
        var delta = new LinearAttentionOptions { FeatureMap = FeatureMaps.L2Norm, Update = LinearUpdate.Delta };
        foreach (float bad in new[] { -0.1f, 2.01f, float.NaN, float.PositiveInfinity })
        {
            float[] beta = Ones(8);
            beta[6] = bad;
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => LinearAttention.Forward(Inputs(q, k, v) with { Beta = beta }, delta, o, default));
            Assert.Equal("beta", e.ParamName);
            Assert.Contains("beta[6]", e.Message, StringComparison.Ordinal);
        }
        // The ends of the range are accepted (β = 2 reflects along k, β = 0 leaves the state alone).
        float[] ends = [0f, 2f, 0f, 2f, 1f, 0f, 2f, 0.5f];
        float[] state = new float[2 * 8 * 8];
        LinearAttention.Forward(Inputs(q, k, v) with { Beta = ends }, delta, o, state);
        Assert.True(Array.TrueForAll(o, float.IsFinite) && Array.TrueForAll(state, float.IsFinite));
    }

    [Fact]
    public void FeatureWidthMismatchingTheStateIsRejected()
    {
        float[] q = Ones(64), k = Ones(64), v = Ones(64), o = new float[64];
        // Taylor2 widens Dk = 8 to 73 features: an initial state sized for Dk rows is the wrong width.
        var e = Assert.Throws<ArgumentException>(() =>
            LinearAttention.Forward(Inputs(q, k, v, state: new float[2 * 8 * 8]), new LinearAttentionOptions { FeatureMap = FeatureMaps.Taylor2 }, o, default));
        Assert.Contains("Df = 73", e.Message, StringComparison.Ordinal);
        // A channel gate must have the feature width, too.
        var g = Assert.Throws<ArgumentException>(() =>
            LinearAttention.Forward(Inputs(q, k, v, gate: new float[4 * 2 * 8]), new LinearAttentionOptions { FeatureMap = FeatureMaps.Taylor2, Decay = LinearDecay.ChannelGate }, o, default));
        Assert.Contains("Df = 73", g.Message, StringComparison.Ordinal);
        // The final state buffer likewise.
        Assert.Throws<ArgumentException>(() =>
            LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { Normalization = LinearNormalization.Denominator }, o, new float[2 * 8 * 8]));
    }

    [Fact]
    public void InconsistentOptionsAreRejected()
    {
        float[] q = Ones(64), k = Ones(64), v = Ones(64), o = new float[64];
        Assert.Throws<ArgumentException>(() => LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { Update = LinearUpdate.GatedDelta }, o, default));
        Assert.Throws<ArgumentException>(() => LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { Update = LinearUpdate.Delta, Normalization = LinearNormalization.Denominator }, o, default));
        Assert.Throws<ArgumentException>(() => LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { Decay = LinearDecay.FixedPerHead }, o, default));
        Assert.Throws<ArgumentOutOfRangeException>(() => LinearAttention.Forward(Inputs(q, k, v), new LinearAttentionOptions { ChunkSize = 0 }, o, default));
        var e = Assert.Throws<ArgumentException>(() => LinearAttention.Forward(Inputs(q, k, Ones(60)), null, o, default));
        Assert.Contains("'v'", e.Message, StringComparison.Ordinal);
        var h = Assert.Throws<ArgumentException>(() => LinearAttention.Forward(new LinearInputs
        {
            Shape = new LinearShape(1, 4, 2, 3, 8, 8), Q = q, K = k, V = v,
        }, null, o, default));
        Assert.Contains("Hkv = 3", h.Message, StringComparison.Ordinal);
    }
}
