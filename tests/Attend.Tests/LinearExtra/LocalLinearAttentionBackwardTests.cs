using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class LocalLinearAttentionBackwardTests
{
    [Theory]
    [InlineData(0.3f)]
    [InlineData(3f)]
    public void BackwardMatchesFiniteDifferencesOfTheFloat64DefinitionWithGqaAndVarlen(float lambda)
    {
        var rng = TestData.Rng(561);
        foreach (LinearExtraShape s in new[] { new LinearExtraShape(2, 7, 2, 1, 4, 3), new LinearExtraShape(1, 10, 2, 2, 5, 4, SeqOffsets.FromLengths([6, 1, 3])) })
        {
            var c = ExtraCase.Make(rng, s, scale: 0.8);
            float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
            float[] gq = TestData.Poisoned<float>(c.Q.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
            LocalLinearAttention.Backward(c.Q, c.K, c.V, s, new LocalLinearAttentionOptions { Lambda = lambda }, dO, gq, gk, gv);
            double Loss() => FiniteDifference.Dot(LocalLinearAttentionReference.Forward(c.Q, c.K, c.V, s, lambda, null), dO);
            foreach ((float[] x, float[] grad, string name) in new[] { (c.Q, gq, "q"), (c.K, gk, "k"), (c.V, gv, "v") })
            {
                double e = FiniteDifference.WorstError(x, grad, Loss, samples: 40);
                Assert.True(e < 2e-3, $"λ {lambda}: d{name} vs finite differences {e:E2}; {c.Description}");
            }
        }
    }

    [Fact]
    public void AHugeRidgeGivesTheGradientOfCausalSoftmaxAttention()
    {
        var rng = TestData.Rng(562);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 23, 2, 1, 16, 16));
        var s = c.Shape;
        float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
        var opts = new AttentionOptions { Mask = new CausalMask() };
        var q = TestData.Bthd(c.Q, 1, s.Tokens, s.Heads, s.KeyDim);
        var k = TestData.Bthd(c.K, 1, s.Tokens, s.KvHeads, s.KeyDim);
        var v = TestData.Bthd(c.V, 1, s.Tokens, s.KvHeads, s.ValueDim);
        ReferenceBackwardResult r = ReferenceAttention.Backward<float>(q, k, v, TestData.Bthd(dO, 1, s.Tokens, s.Heads, s.ValueDim), opts);
        float[] gq = TestData.Poisoned<float>(c.Q.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
        LocalLinearAttention.Backward(c.Q, c.K, c.V, s, new LocalLinearAttentionOptions { Lambda = 1e7f }, dO, gq, gk, gv);
        Assert.True(ExtraCase.Error(gq, r.DQ) < 1e-4, $"dq {ExtraCase.Error(gq, r.DQ):E2}; {c.Description}");
        Assert.True(ExtraCase.Error(gk, r.DK) < 1e-4, $"dk {ExtraCase.Error(gk, r.DK):E2}; {c.Description}");
        Assert.True(ExtraCase.Error(gv, r.DV) < 1e-4, $"dv {ExtraCase.Error(gv, r.DV):E2}; {c.Description}");
    }

    [Fact]
    public void AbsentGradientsAreSkippedAndMisSizedOnesAreRejectedByName()
    {
        var rng = TestData.Rng(563);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 5, 1, 1, 4, 4));
        float[] dO = TestData.Gaussian<float>(rng, c.Shape.OutputCount), gv = TestData.Poisoned<float>(c.V.Length), gvAll = new float[c.V.Length];
        LocalLinearAttention.Backward(c.Q, c.K, c.V, c.Shape, null, dO, [], [], gv);
        LocalLinearAttention.Backward(c.Q, c.K, c.V, c.Shape, null, dO, new float[c.Q.Length], new float[c.K.Length], gvAll);
        Assert.Equal(gvAll, gv);
        var ex = Assert.Throws<ArgumentException>(() => LocalLinearAttention.Backward(c.Q, c.K, c.V, c.Shape, null, dO, new float[3], [], []));
        Assert.Equal("queryGradient", ex.ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => LocalLinearAttention.Backward(c.Q, c.K, c.V, c.Shape, new LocalLinearAttentionOptions { Lambda = 0 }, dO, [], [], []));
    }
}
