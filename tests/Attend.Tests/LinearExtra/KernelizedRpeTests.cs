using Attend.Kernels.Cpu;
using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class KernelizedRpeTests
{
    [Fact]
    public void FftMatchesTheFloat64DftAndInvertsOnEveryPowerOfTwoUpTo1024()
    {
        var rng = TestData.Rng(521);
        for (int n = 1; n <= 1024; n *= 2)
        {
            double[] re = Array.ConvertAll(TestData.Gaussian<float>(rng, n), x => (double)x), im = Array.ConvertAll(TestData.Gaussian<float>(rng, n), x => (double)x);
            double[] r2 = (double[])re.Clone(), i2 = (double[])im.Clone();
            Fft.For(n).Forward(r2, i2);
            double worst = 0;
            for (int f = 0; f < n; f++)
            {
                double sr = 0, si = 0;
                for (int j = 0; j < n; j++)
                {
                    double a = -2 * Math.PI * ((long)j * f % n) / n;
                    sr += re[j] * Math.Cos(a) - im[j] * Math.Sin(a);
                    si += re[j] * Math.Sin(a) + im[j] * Math.Cos(a);
                }
                worst = Math.Max(worst, Math.Max(Math.Abs(sr - r2[f]), Math.Abs(si - i2[f])) / Math.Sqrt(n));
            }
            Assert.True(worst < 1e-12, $"n {n}: DFT error {worst:E2} (seed {TestData.RunSeed})");
            Fft.For(n).Inverse(r2, i2);
            Assert.True(MaxDiff(r2, re) < 1e-12 && MaxDiff(i2, im) < 1e-12, $"n {n}: inverse does not invert");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => Fft.For(12));
    }

    private static double MaxDiff(double[] a, double[] b)
    {
        double worst = 0;
        for (int i = 0; i < a.Length; i++) worst = Math.Max(worst, Math.Abs(a[i] - b[i]));
        return worst;
    }

    [Fact]
    public void FftFormEqualsTheQuadraticDefinitionCausalAndBidirectional()
    {
        var rng = TestData.Rng(522);
        for (int trial = 0; trial < 10; trial++)
        {
            var c = ExtraCase.Random(rng, 100, [32, 48, 64], varlen: trial % 3 == 1);
            int m = rng.Next(1, 40);
            bool causal = trial % 2 == 0;
            float[] w = KernelizedRpe.RandomFeatures(m, c.Shape.KeyDim, rng.Next());
            int radius = c.Shape.MaxLength + rng.Next(3);
            // A learned-looking bias: random, with a large range so the Toeplitz weights span many orders of magnitude.
            float[] bias = TestData.Gaussian<float>(rng, c.Shape.Heads * (2 * radius - 1), 3);
            double[] expected = KernelizedRpeReference.Forward(c.Q, c.K, c.V, c.Shape, w, bias, null, causal);
            var output = TestData.Poisoned<float>(c.Shape.OutputCount);
            KernelizedRpe.Forward(c.Q, c.K, c.V, c.Shape, w, bias, new KernelizedRpeOptions { Causal = causal }, output);
            double err = ExtraCase.Error(output, expected);
            Assert.True(err < 1e-4, $"m {m} causal {causal}: error {err:E2}; {c.Description}");
        }
    }

    [Fact]
    public void ZeroBiasWithOneFeatureIsTheWeightedMeanOfValues()
    {
        // m = 1 and W = 0: φ(q) is one number per query and φ(k_j) = exp(−‖k̃_j‖²/2), so with zero bias z_i is the
        // causal mean of v_≤i weighted by φ(k_j).
        var rng = TestData.Rng(523);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 37, 2, 1, 32, 16));
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        KernelizedRpe.Forward(c.Q, c.K, c.V, c.Shape, new float[32], new float[2 * 73], null, output);
        for (int t = 0; t < 37; t++)
            for (int x = 0; x < 16; x++)
            {
                double num = 0, den = 0;
                for (int j = 0; j <= t; j++)
                {
                    double norm = 0;
                    for (int i = 0; i < 32; i++) norm += (double)c.K[(int)c.Shape.K(j, 0) + i] * c.K[(int)c.Shape.K(j, 0) + i];
                    double w = Math.Exp(-norm / Math.Sqrt(32) / 2);
                    num += w * c.V[(int)c.Shape.V(j, 0) + x];
                    den += w;
                }
                Assert.True(Math.Abs(num / den - output[(int)c.Shape.O(t, 1) + x]) < 1e-4, $"t {t} x {x}: {output[(int)c.Shape.O(t, 1) + x]} vs {num / den}");
            }
    }

    [Fact]
    public void LongSequenceWithExtremeBiasStaysFinite()
    {
        var rng = TestData.Rng(524);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 16385, 1, 1, 32, 8), scale: 3);
        float[] bias = KernelizedRpe.DefaultBias(1, 16385);
        for (int i = 0; i < bias.Length; i++) bias[i] *= 200; // weights from e^0 down to e^(−hundreds)
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        KernelizedRpe.Forward(c.Q, c.K, c.V, c.Shape, KernelizedRpe.RandomFeatures(8, 32, 1), bias, null, output);
        Assert.True(ExtraCase.AllFinite(output), c.Description);
    }

    [Theory]
    [InlineData(true, 6)]
    [InlineData(true, 20)]
    [InlineData(false, 8)]
    [InlineData(false, 20)]
    public void LargeInputsEqualTheLogDomainDefinition(bool causal, double scale)
    {
        // q and k of size 6–20: the random features e^(ω·x − |x|²/2) span hundreds of orders of magnitude. The keys share
        // one shift (the sequence's maximum), so an early causal row's own keys can all underflow: its normaliser was 0
        // (0/0, then a silent 0 row). Such rows are now computed directly; the reference works in logs at any scale.
        var rng = TestData.Rng(527 + (int)scale);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 130, 2, 1, 32, 8), scale: scale);
        float[] w = KernelizedRpe.RandomFeatures(16, 32, 2), bias = KernelizedRpe.DefaultBias(2, 130);
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        KernelizedRpe.Forward(c.Q, c.K, c.V, c.Shape, w, bias, new KernelizedRpeOptions { Causal = causal }, output);
        Assert.True(ExtraCase.AllFinite(output), c.Description);
        double[] expected = KernelizedRpeReference.Forward(c.Q, c.K, c.V, c.Shape, w, bias, null, causal);
        double err = ExtraCase.Error(output, expected);
        // At scale 20 the feature exponents are in the hundreds, and float32 rounds an exponent of ~300 by ~3e-5 (relative
        // 3e-5 in every feature): the fast form's float32 features then agree to ~1e-4, not better.
        double tolerance = scale >= 10 ? 1e-3 : 1e-4;
        Assert.True(err < tolerance, $"causal {causal} scale {scale}: error {err:E2} against the float64 definition; {c.Description}");
    }

    [Fact]
    public void AdapterFormsAgreeAndBadInputsAreNamed()
    {
        var rng = TestData.Rng(525);
        var c = ExtraCase.Random(rng, 40, [32], varlen: true);
        var method = new KernelizedRpeMethod();
        MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive", "features=16", "causal=false"]));
        MethodResult fft = method.Run(c.Inputs(), MethodArguments.Parse(["features=16", "causal=false"]));
        Assert.True(ExtraCase.Error(fft.Output.Data, naive.Output.Data) < 1e-4, c.Description);
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=recurrent"])));
        Assert.Equal("form", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["features=0"])));
        Assert.Equal("features", e.ParamName);
        var narrow = c.Inputs().Add("rpe", new MethodTensor(new float[c.Shape.Heads * 3], c.Shape.Heads, 3));
        if (c.Shape.MaxLength > 2)
        {
            e = Assert.ThrowsAny<ArgumentException>(() => method.Run(narrow, MethodArguments.Empty));
            Assert.Equal("rpe", e.ParamName);
        }
        var w = c.Inputs().Add("features", new MethodTensor(new float[8 * 31], 8, 31));
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(w, MethodArguments.Empty));
        Assert.Equal("features", e.ParamName);
    }
}
