using Xunit;

namespace Attend.Tests;

/// <summary>Lse.Merge against attention over the whole key set (the float64 reference on split keys).</summary>
public class LseTests
{
    [Theory]
    [InlineData(1, 2, 1, 16, 1)]
    [InlineData(3, 1, 2, 32, 7)]
    [InlineData(7, 9, 4, 64, 40)]
    [InlineData(16, 100, 2, 80, 63)]
    public void MergeOfTwoKeyHalvesEqualsAttentionOverAllKeys(int tq, int tk1, int h, int d, int tk2)
    {
        var rng = TestData.Rng(200 + tq);
        int tk = tk1 + tk2;
        float[] q = TestData.Gaussian<float>(rng, (long)tq * h * d, 1.5);
        float[] k = TestData.Gaussian<float>(rng, (long)tk * h * d, 1.5);
        float[] v = TestData.Gaussian<float>(rng, (long)tk * h * d);
        float[] k1 = k[..(tk1 * h * d)], k2 = k[(tk1 * h * d)..];
        float[] v1 = v[..(tk1 * h * d)], v2 = v[(tk1 * h * d)..];
        var all = ReferenceAttention.Forward<float>(TestData.Bthd(q, 1, tq, h, d), TestData.Bthd(k, 1, tk, h, d), TestData.Bthd(v, 1, tk, h, d));
        var p1 = ReferenceAttention.Forward<float>(TestData.Bthd(q, 1, tq, h, d), TestData.Bthd(k1, 1, tk1, h, d), TestData.Bthd(v1, 1, tk1, h, d));
        var p2 = ReferenceAttention.Forward<float>(TestData.Bthd(q, 1, tq, h, d), TestData.Bthd(k2, 1, tk2, h, d), TestData.Bthd(v2, 1, tk2, h, d));
        // Rows as [H, Tq] × D to match the LSE order [B, H, Tq].
        float[] Rows(double[] o)
        {
            var r = new float[tq * h * d];
            for (int t = 0; t < tq; t++)
                for (int hh = 0; hh < h; hh++)
                    for (int x = 0; x < d; x++) r[(hh * tq + t) * d + x] = (float)o[(t * h + hh) * d + x];
            return r;
        }
        float[] o1 = Rows(p1.Output), o2 = Rows(p2.Output), want = Rows(all.Output);
        float[] l1 = Array.ConvertAll(p1.Lse, x => (float)x), l2 = Array.ConvertAll(p2.Lse, x => (float)x);
        float[] merged = TestData.Poisoned<float>(o1.Length), lse = TestData.Poisoned<float>(l1.Length);
        Lse.Merge(o1, l1, o2, l2, merged, lse);
        double err = TestData.RelativeError<float>(merged, Array.ConvertAll(want, x => (double)x));
        Assert.True(err <= 1e-6, $"seed {TestData.RunSeed}: merged output error {err:E2}");
        Assert.True(TestData.LseError(lse, all.Lse) <= 1e-6, $"seed {TestData.RunSeed}: merged LSE error {TestData.LseError(lse, all.Lse):E2}");
        // The same, merged in the other order and in place into o2.
        Lse.Merge(o2, l2, o1, l1, o2, l2);
        Assert.True(TestData.RelativeError<float>(o2, Array.ConvertAll(want, x => (double)x)) <= 1e-6);
        Assert.True(TestData.LseError(l2, all.Lse) <= 1e-6);
    }

    [Fact]
    public void EmptyPartialContributesNothing()
    {
        // An empty partial has lse −∞ and (as every producer in the library writes it) a zero output.
        float[] o1 = [1f, -2f, 3f], o2 = [0f, 0f, 0f], output = [float.NaN, float.NaN, float.NaN];
        Lse.Merge(o1, 0.75f, o2, float.NegativeInfinity, output, out float lse);
        Assert.Equal(o1, output);
        Assert.Equal(0.75f, lse);
        Lse.Merge(o2, float.NegativeInfinity, o1, 0.75f, output, out lse);
        Assert.Equal(o1, output);
        Assert.Equal(0.75f, lse);
    }

    [Fact]
    public void TwoEmptyPartialsGiveZerosAndNegativeInfinity()
    {
        float[] o1 = [0f, 0f], o2 = [0f, 0f], output = [float.NaN, float.NaN];
        Lse.Merge(o1, float.NegativeInfinity, o2, float.NegativeInfinity, output, out float lse);
        Assert.Equal(float.NegativeInfinity, lse);
        Assert.Equal([0f, 0f], output);
        Assert.Equal(float.NegativeInfinity, Lse.Combine(float.NegativeInfinity, float.NegativeInfinity));

        float[] lseOut = [float.NaN, 1f];
        float[] rows = [float.NaN, float.NaN, 1f, 2f];
        Lse.Merge([0f, 0f, 1f, 2f], [float.NegativeInfinity, 0f], [0f, 0f, 1f, 2f], [float.NegativeInfinity, 0f], rows, lseOut);
        Assert.Equal(float.NegativeInfinity, lseOut[0]);
        Assert.Equal(0f, rows[0]);
        Assert.Equal(0f, rows[1]);
        Assert.Equal(MathF.Log(2f), lseOut[1], 6);
        Assert.Equal(1f, rows[2], 6);
        Assert.Equal(2f, rows[3], 6);
    }

    [Fact]
    public void LargeLseValuesDoNotOverflow()
    {
        Assert.Equal(1e4f + MathF.Log(2), Lse.Combine(1e4f, 1e4f), 2);
        Assert.Equal(-1e4f + MathF.Log(2), Lse.Combine(-1e4f, -1e4f), 2);
        Assert.Equal(1000f, Lse.Combine(1000f, -1000f));
        float[] o = new float[1];
        Lse.Merge([2f], 500f, [4f], 500f, o, out float lse);
        Assert.Equal(3f, o[0], 6);
        Assert.Equal(500f + MathF.Log(2), lse, 3);
        // Weights must come from the LSE difference, not from exp(lse₁ − rounded merged lse).
        Lse.Merge([2f], 1e4f, [4f], 1e4f, o, out lse);
        Assert.Equal(3f, o[0], 6);
        Lse.Merge([2f], -1e4f, [4f], -1e4f - 2f, o, out _); // both exact floats
        double w = 1 / (1 + Math.Exp(-2));
        Assert.Equal(2 * w + 4 * (1 - w), o[0], 5);
    }

    [Fact]
    public void OutputMayAliasEitherInput()
    {
        var rng = TestData.Rng(210);
        float[] a = TestData.Gaussian<float>(rng, 37), b = TestData.Gaussian<float>(rng, 37);
        var expected = new float[37];
        Lse.Merge(a, 0.3f, b, -1.2f, expected, out float el);
        float[] a2 = (float[])a.Clone(), b2 = (float[])b.Clone();
        Lse.Merge(a2, 0.3f, b, -1.2f, a2, out float l1);
        Lse.Merge(a, 0.3f, b2, -1.2f, b2, out float l2);
        Assert.Equal(expected, a2);
        Assert.Equal(expected, b2);
        Assert.Equal(el, l1);
        Assert.Equal(el, l2);
        // Batched form, output aliasing o1 and lse aliasing lse1.
        float[] lse1 = [0.3f], o = (float[])a.Clone();
        Lse.Merge(o, lse1, b, [-1.2f], o, lse1);
        Assert.Equal(expected, o);
        Assert.Equal(el, lse1[0]);
    }

    [Fact]
    public void LengthMismatchesNameTheArgument()
    {
        float[] three = new float[3], two = new float[2];
        Assert.Equal("o2", Assert.Throws<ArgumentException>(() => Lse.Merge(three, 0, two, 0, three, out _)).ParamName);
        Assert.Equal("output", Assert.Throws<ArgumentException>(() => Lse.Merge(three, 0, three, 0, two, out _)).ParamName);
        Assert.Equal("lse1", Assert.Throws<ArgumentException>(() => Lse.Merge(three, float.NaN, three, 0, three, out _)).ParamName);
        Assert.Equal("lse2", Assert.Throws<ArgumentException>(() => Lse.Merge(three, 0, three, float.NaN, three, out _)).ParamName);
        float[] six = new float[6];
        Assert.Equal("o1", Assert.Throws<ArgumentException>(() => Lse.Merge(new float[5], two, six, two, six, two)).ParamName);
        Assert.Equal("lse2", Assert.Throws<ArgumentException>(() => Lse.Merge(six, two, six, three, six, two)).ParamName);
        Assert.Equal("o2", Assert.Throws<ArgumentException>(() => Lse.Merge(six, two, new float[4], two, six, two)).ParamName);
        Assert.Equal("output", Assert.Throws<ArgumentException>(() => Lse.Merge(six, two, six, two, new float[8], two)).ParamName);
        Assert.Equal("lse", Assert.Throws<ArgumentException>(() => Lse.Merge(six, two, six, two, six, three)).ParamName);
    }
}
