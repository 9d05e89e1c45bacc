using Attend.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// Half and BFloat16 q, k, v: float32 accumulation and state, output rounded once to the input type. Checked against the
/// float64 reference on the same (rounded) inputs at 1.5 unit roundoffs of the type (u = 2⁻¹¹ for Half, 2⁻⁸ for BFloat16, 11 and 8 significant bits: one rounding of the output),
/// and bit for bit against the float32 call on the widened inputs.
/// </summary>
public class LinearLowPrecisionTests
{
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (string type in new[] { "half", "bf16" })
            foreach (string configuration in new[] { "identity none additive none", "elu none additive denominator", "relu fixed additive rms", "l2 channel gated none", "l2 none delta none" })
                data.Add(type, configuration);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void LowPrecisionInputsMatchTheFloat64ReferenceForwardAndBackward(string type, string configuration)
    {
        if (type == "half") Check<Half>(configuration, Math.Pow(2, -11));
        else Check<BFloat16>(configuration, Math.Pow(2, -8));
    }

    private static void Check<T>(string configuration, double unit) where T : unmanaged
    {
        Random rng = TestData.Rng(631 + configuration.Length);
        LinearCase c = LinearCase.Create(rng, new LinearShape(2, 37, 4, 2, 32, 24), LinearFormsTests.Parse(configuration, 4, 16), qkScale: 0.4);
        // Round q, k, v to T; the float32 case then holds exactly the values T carries.
        T[] q = Round<T>(c.Q), k = Round<T>(c.K), v = Round<T>(c.V);
        c.Q = Widen(q); c.K = Widen(k); c.V = Widen(v);
        var inputs = new LinearInputs<T> { Shape = c.Shape, Q = q, K = k, V = v, Gate = c.Gate, Beta = c.Beta, InitialState = c.State, Offsets = c.Inputs.Offsets };
        double tolerance = 1.5 * unit;

        (double[] expected, double[] expectedState) = ReferenceLinearAttention.Forward(c.Inputs, c.Options);
        T[] o = TestData.Poisoned<T>(c.OutputLength);
        float[] state = TestData.Poisoned<float>(c.Config.StateLength);
        LinearAttention.Forward(inputs, c.Options, o, state);
        double e = TestData.RelativeError<T>(o, expected);
        Assert.True(e < tolerance, $"{typeof(T).Name} output error {e:E2} (tolerance {tolerance:E2}), {c}");
        Assert.True(TestData.RelativeError<float>(state, expectedState) < 1e-4, $"final state (float32) error {TestData.RelativeError<float>(state, expectedState):E2}, {c}");
        float[] o32 = new float[c.OutputLength];
        LinearAttention.Forward(c.Inputs, c.Options, o32, []);
        Assert.Equal(Round<T>(o32), o);

        T[] dO = Round<T>(TestData.Gaussian<float>(rng, c.OutputLength));
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, Widen(dO), []);
        T[] dq = TestData.Poisoned<T>(c.Q.Length), dk = TestData.Poisoned<T>(c.K.Length), dv = TestData.Poisoned<T>(c.V.Length);
        float[] dg = TestData.Poisoned<float>(c.Gate.Length), ds = TestData.Poisoned<float>(c.State.Length);
        LinearAttention.Backward(inputs, c.Options, dO, [], new LinearGradients<T> { Q = dq, K = dk, V = dv, Gate = dg, InitialState = ds });
        foreach ((string name, T[] actual, double[] want) in new[] { ("dq", dq, r.Q), ("dk", dk, r.K), ("dv", dv, r.V) })
        {
            double err = TestData.RelativeError<T>(actual, want);
            Assert.True(err < tolerance, $"{typeof(T).Name} {name} error {err:E2} (tolerance {tolerance:E2}), {c}");
        }
        Assert.True(TestData.RelativeError<float>(dg, r.Gate) < 2e-4, $"dgate (float32) {TestData.RelativeError<float>(dg, r.Gate):E2}, {c}");
        Assert.True(TestData.RelativeError<float>(ds, r.InitialState) < 2e-4, $"dS0 (float32) {TestData.RelativeError<float>(ds, r.InitialState):E2}, {c}");
    }

    [Fact]
    public void OtherElementTypesAndMisSizedOutputsAreRejected()
    {
        var shape = new LinearShape(1, 3, 1, 1, 4, 4);
        Assert.Throws<NotSupportedException>(() =>
            LinearAttention.Forward(new LinearInputs<double> { Shape = shape, Q = new double[12], K = new double[12], V = new double[12] }, null, new double[12], []));
        var ex = Assert.Throws<ArgumentException>(() =>
            LinearAttention.Forward(new LinearInputs<Half> { Shape = shape, Q = new Half[12], K = new Half[12], V = new Half[12] }, null, new Half[11], []));
        Assert.Equal("output", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() =>
            LinearAttention.Forward(new LinearInputs<Half> { Shape = shape, Q = new Half[12], K = new Half[8], V = new Half[12] }, null, new Half[12], []));
        Assert.Equal("k", ex.ParamName);
    }

    private static T[] Round<T>(float[] x) where T : unmanaged
    {
        var r = new T[x.Length];
        for (int i = 0; i < x.Length; i++) r[i] = ElementConvert.FromSingle<T>(x[i]);
        return r;
    }

    private static float[] Widen<T>(T[] x) where T : unmanaged
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i++) r[i] = ElementConvert.ToSingle(x[i]);
        return r;
    }
}
