using Attend.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>naive = chunked = recurrent, and the final states agree, across the family's options and shapes.</summary>
public class LinearFormsTests
{
    private const double Tolerance = 2e-4;

    public static TheoryData<string> Configurations =>
    [
        "identity none additive none", "elu none additive denominator", "relu fixed additive none", "relu fixed additive rms",
        "identity scalar additive none", "identity channel additive none", "l2 none delta none", "l2 scalar gated none",
        "l2 channel gated none", "l2 fixed gated rms", "taylor none additive denominator", "elu channel additive denominator",
    ];

    internal static LinearAttentionOptions Parse(string text, int heads, int chunk)
    {
        string[] p = text.Split(' ');
        FeatureMap map = p[0] switch
        {
            "elu" => FeatureMaps.EluPlusOne, "relu" => FeatureMaps.Relu, "l2" => FeatureMaps.L2Norm, "taylor" => FeatureMaps.Taylor2,
            _ => FeatureMaps.Identity,
        };
        LinearDecay decay = p[1] switch
        {
            "fixed" => LinearDecay.FixedPerHead, "scalar" => LinearDecay.ScalarGate, "channel" => LinearDecay.ChannelGate, _ => LinearDecay.None,
        };
        float[]? gamma = decay == LinearDecay.FixedPerHead ? Enumerable.Range(0, heads).Select(h => 1f - MathF.Pow(2, -5 - h)).ToArray() : null;
        return new LinearAttentionOptions
        {
            FeatureMap = map, Decay = decay, HeadDecay = gamma, ChunkSize = chunk,
            Update = p[2] switch { "delta" => LinearUpdate.Delta, "gated" => LinearUpdate.GatedDelta, _ => LinearUpdate.Additive },
            Normalization = p[3] switch { "denominator" => LinearNormalization.Denominator, "rms" => LinearNormalization.RmsNorm, _ => LinearNormalization.None },
        };
    }

    private static void AssertForms(LinearCase c, double tolerance = Tolerance)
    {
        (double[] refO, double[] refS) = c.Naive();
        (double[] recO, double[] recS) = ReferenceLinearAttention.ForwardRecurrent(c.Inputs, c.Options);
        // The two float64 oracles are independent computations of one definition.
        Assert.True(TestData.RelativeError<double>(recO, refO) < 1e-9, $"reference recurrent vs quadratic output, {c}");
        Assert.True(TestData.RelativeError<double>(recS, refS) < 1e-9, $"reference recurrent vs quadratic state, {c}");
        foreach (LinearForm form in new[] { LinearForm.Chunked, LinearForm.Recurrent, LinearForm.Naive })
        {
            (float[] o, float[] s) = c.Run(form);
            double eo = TestData.RelativeError<float>(o, refO), es = TestData.RelativeError<float>(s, refS);
            Assert.True(eo < tolerance, $"{form} output error {eo:E2}, {c}");
            Assert.True(es < tolerance, $"{form} final state error {es:E2}, {c}");
        }
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void FormsAgreeOnOddLengthsChunksAndHeadDims(string configuration)
    {
        Random rng = TestData.Rng(TestData.Salt(configuration) & 0xffff);
        bool taylor = configuration.StartsWith("taylor", StringComparison.Ordinal);
        (int t, int chunk, int dk, int dv)[] shapes = taylor
            ? [(1, 16, 4, 8), (37, 16, 6, 20), (70, 32, 5, 17)]
            : [(1, 64, 32, 32), (45, 16, 32, 48), (67, 32, 20, 17), (130, 64, 64, 64)];
        foreach ((int t, int chunk, int dk, int dv) in shapes)
        {
            var shape = new LinearShape(2, t, 4, 2, dk, dv);
            LinearCase c = LinearCase.Create(rng, shape, Parse(configuration, 4, chunk));
            AssertForms(c);
        }
    }

    [Theory]
    [InlineData("identity scalar additive none")]
    [InlineData("l2 channel gated none")]
    [InlineData("elu fixed additive denominator")]
    [InlineData("l2 none delta none")]
    public void FormsAgreeAtEdgeChunkSizesAndGroupRatios(string configuration)
    {
        Random rng = TestData.Rng(13 + configuration.Length);
        foreach ((int chunk, int h, int hkv, int threads) in new[] { (1, 8, 1, 2), (3, 4, 4, 1), (1024, 8, 2, 2), (5, 6, 3, 2) })
        {
            LinearCase c = LinearCase.Create(rng, new LinearShape(1, 29, h, hkv, 16, 16), Parse(configuration, h, chunk));
            c.Options = c.Options with { Threads = threads };
            AssertForms(c);
        }
    }

    [Theory]
    [InlineData("identity none additive none")]
    [InlineData("l2 channel gated none")]
    [InlineData("elu fixed additive denominator")]
    public void FormsAgreeAtLargeHeadDims(string configuration)
    {
        Random rng = TestData.Rng(11 + configuration.Length);
        foreach ((int t, int d) in new[] { (23, 128), (13, 256) })
        {
            LinearCase c = LinearCase.Create(rng, new LinearShape(1, t, 2, 1, d, d), Parse(configuration, 2, 8), qkScale: 1 / Math.Sqrt(d));
            AssertForms(c);
        }
    }

    [Theory]
    [InlineData("identity channel additive none", "zero")]
    [InlineData("identity channel additive none", "one")]
    [InlineData("identity scalar additive none", "zero")]
    [InlineData("identity scalar additive none", "one")]
    [InlineData("l2 channel gated none", "zero")]
    [InlineData("l2 channel gated none", "one")]
    [InlineData("l2 scalar gated none", "zero")]
    public void FormsAgreeWithGatesNearZeroAndOne(string configuration, string regime)
    {
        Random rng = TestData.Rng(17 + regime.Length);
        foreach (int chunk in new[] { 8, 64 })
        {
            LinearCase c = LinearCase.Create(rng, new LinearShape(1, 77, 2, 1, 32, 24), Parse(configuration, 2, chunk), gateRegime: regime);
            AssertForms(c);
        }
    }

    [Theory]
    [InlineData("elu none additive denominator")]
    [InlineData("l2 channel gated none")]
    [InlineData("relu fixed additive rms")]
    public void VarlenCarriesOneStatePerSequence(string configuration)
    {
        Random rng = TestData.Rng(23);
        int[] lengths = [5, 1, 0, 70, 33];
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, 0, 4, 4, 16, 16), Parse(configuration, 4, 16), lengths);
        AssertForms(c);
        // Each sequence alone (B = 1) gives the same output and state as its slice of the packed call.
        (float[] packedO, float[] packedS) = c.Run(LinearForm.Chunked);
        int start = 0, stateSize = 4 * c.Config.FeatureDim * c.Config.StateColumns;
        for (int n = 0; n < lengths.Length; n++)
        {
            int len = lengths[n];
            var single = new LinearCase
            {
                Shape = c.Shape with { Tokens = len }, Options = c.Options,
                Q = c.Q.AsSpan(start * 4 * 16, len * 4 * 16).ToArray(), K = c.K.AsSpan(start * 4 * 16, len * 4 * 16).ToArray(),
                V = c.V.AsSpan(start * 4 * 16, len * 4 * 16).ToArray(),
                Gate = c.Gate.Length == 0 ? [] : c.Gate.AsSpan(start * c.Gate.Length / c.Shape.Tokens, len * c.Gate.Length / c.Shape.Tokens).ToArray(),
                Beta = c.Beta.Length == 0 ? [] : c.Beta.AsSpan(start * 4, len * 4).ToArray(),
                State = c.State.AsSpan(n * stateSize, stateSize).ToArray(),
            };
            (float[] o, float[] s) = single.Run(LinearForm.Chunked);
            Assert.Equal(packedO.AsSpan(start * 4 * 16, len * 4 * 16).ToArray(), o);
            Assert.Equal(packedS.AsSpan(n * stateSize, stateSize).ToArray(), s);
            start += len;
        }
    }

    [Theory]
    [InlineData("identity none additive none", 16)]
    [InlineData("elu fixed additive denominator", 32)]
    [InlineData("l2 channel gated none", 16)]
    [InlineData("l2 none delta none", 64)]
    public void PrefixChunkedThenRestRecurrentEqualsWholeChunked(string configuration, int chunk)
    {
        Random rng = TestData.Rng(31 + chunk);
        const int total = 99, prefix = 58;
        LinearCase whole = LinearCase.Create(rng, new LinearShape(1, total, 2, 2, 32, 32), Parse(configuration, 2, chunk));
        (float[] wholeO, float[] wholeS) = whole.Run(LinearForm.Chunked);
        LinearCase first = Slice(whole, 0, prefix, whole.State);
        (float[] firstO, float[] firstS) = first.Run(LinearForm.Chunked);
        LinearCase rest = Slice(whole, prefix, total - prefix, firstS);
        (float[] restO, float[] restS) = rest.Run(LinearForm.Recurrent);
        double eo = TestData.RelativeError<float>([.. firstO, .. restO], Array.ConvertAll(wholeO, x => (double)x));
        double es = TestData.RelativeError<float>(restS, Array.ConvertAll(wholeS, x => (double)x));
        Assert.True(eo < Tolerance, $"output {eo:E2}, {whole}");
        Assert.True(es < Tolerance, $"state {es:E2}, {whole}");
    }

    private static LinearCase Slice(LinearCase c, int start, int len, float[] state)
    {
        int perTokenQ = c.Shape.Heads * c.Shape.KeyDim, perTokenK = c.Shape.KvHeads * c.Shape.KeyDim, perTokenV = c.Shape.KvHeads * c.Shape.ValueDim;
        int perTokenG = c.Gate.Length / Math.Max(1, c.Shape.Tokens), perTokenB = c.Beta.Length / Math.Max(1, c.Shape.Tokens);
        return new LinearCase
        {
            Shape = c.Shape with { Tokens = len }, Options = c.Options, State = state,
            Q = c.Q.AsSpan(start * perTokenQ, len * perTokenQ).ToArray(), K = c.K.AsSpan(start * perTokenK, len * perTokenK).ToArray(),
            V = c.V.AsSpan(start * perTokenV, len * perTokenV).ToArray(),
            Gate = c.Gate.AsSpan(start * perTokenG, len * perTokenG).ToArray(), Beta = c.Beta.AsSpan(start * perTokenB, len * perTokenB).ToArray(),
        };
    }
}
