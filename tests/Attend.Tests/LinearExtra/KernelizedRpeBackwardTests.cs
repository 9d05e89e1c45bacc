using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class KernelizedRpeBackwardTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void BackwardMatchesFiniteDifferencesOfTheFloat64DefinitionWithGqaAndVarlen(bool causal)
    {
        var rng = TestData.Rng(571);
        foreach (LinearExtraShape s in new[] { new LinearExtraShape(2, 9, 2, 1, 4, 3), new LinearExtraShape(1, 12, 2, 2, 5, 4, SeqOffsets.FromLengths([7, 1, 4])) })
        {
            var c = ExtraCase.Make(rng, s, scale: 0.7);
            const int m = 5;
            float[] w = KernelizedRpe.RandomFeatures(m, s.KeyDim, rng.Next());
            int radius = s.MaxLength + 1;
            float[] bias = TestData.Gaussian<float>(rng, s.Heads * (2 * radius - 1), 1);
            float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
            float[] gq = TestData.Poisoned<float>(c.Q.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
            float[] gb = TestData.Poisoned<float>(bias.Length);
            KernelizedRpe.Backward(c.Q, c.K, c.V, s, w, bias, new KernelizedRpeOptions { Causal = causal }, dO, gq, gk, gv, gb);
            double Loss() => FiniteDifference.Dot(KernelizedRpeReference.Forward(c.Q, c.K, c.V, s, w, bias, null, causal), dO);
            foreach ((float[] x, float[] grad, string name) in new[] { (c.Q, gq, "q"), (c.K, gk, "k"), (c.V, gv, "v"), (bias, gb, "bias") })
            {
                double e = FiniteDifference.WorstError(x, grad, Loss, samples: 40);
                Assert.True(e < 2e-3, $"causal {causal}: d{name} vs finite differences {e:E2}; {c.Description}");
            }
            // Relative distances no sequence reaches (|d| ≥ its length) get no gradient; causal: no d > 0 either.
            int width = 2 * radius - 1;
            for (int h = 0; h < s.Heads; h++)
            {
                Assert.Equal(0f, gb[h * width]); // d = −(R − 1) ≤ −len
                if (causal) Assert.Equal(0f, gb[h * width + radius]); // d = +1
            }
        }
    }

    [Fact]
    public void MisSizedGradientsAreRejectedByName()
    {
        var rng = TestData.Rng(572);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 5, 1, 1, 4, 4));
        float[] w = KernelizedRpe.RandomFeatures(3, 4, 1), bias = KernelizedRpe.DefaultBias(1, 5), dO = new float[c.Shape.OutputCount];
        var ex = Assert.Throws<ArgumentException>(() => KernelizedRpe.Backward(c.Q, c.K, c.V, c.Shape, w, bias, null, dO, [], [], [], new float[3]));
        Assert.Equal("biasGradient", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => KernelizedRpe.Backward(c.Q, c.K, c.V, c.Shape, w, bias, null, dO, [], new float[2], [], []));
        Assert.Equal("keyGradient", ex.ParamName);
    }

    [Fact]
    public void OneRequestedGradientEqualsTheFullCallAcrossRepeatedCalls()
    {
        // Absent gradients live in pooled scratch: the second call reuses the first call's (dirty) arrays, which must not
        // leak into the requested gradient.
        var rng = TestData.Rng(573);
        var c = ExtraCase.Make(rng, new LinearExtraShape(2, 9, 2, 1, 4, 3));
        float[] w = KernelizedRpe.RandomFeatures(5, 4, rng.Next()), bias = TestData.Gaussian<float>(rng, 2 * (2 * 9 - 1));
        float[] dO = TestData.Gaussian<float>(rng, c.Shape.OutputCount);
        float[] gq = TestData.Poisoned<float>(c.Q.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
        float[] gb = TestData.Poisoned<float>(bias.Length);
        KernelizedRpe.Backward(c.Q, c.K, c.V, c.Shape, w, bias, null, dO, gq, gk, gv, gb);
        for (int call = 0; call < 2; call++)
        {
            float[] onlyK = TestData.Poisoned<float>(c.K.Length);
            KernelizedRpe.Backward(c.Q, c.K, c.V, c.Shape, w, bias, null, dO, [], onlyK, [], []);
            Assert.Equal(gk, onlyK);
        }
        Assert.DoesNotContain(gq, float.IsNaN);
        Assert.DoesNotContain(gb, float.IsNaN);
    }
}
