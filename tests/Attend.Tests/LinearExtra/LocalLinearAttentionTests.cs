using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class LocalLinearAttentionTests
{
    [Fact]
    public void ChunkedFormEqualsTheFloat64DefinitionOnBatchesVarlenAndGqa()
    {
        var rng = TestData.Rng(551);
        float[] lambdas = [0.05f, 0.3f, 1f, 10f];
        for (int trial = 0; trial < 10; trial++)
        {
            var c = ExtraCase.Random(rng, 65, [8, 16, 32, 48], varlen: trial % 3 == 0);
            float lambda = lambdas[rng.Next(lambdas.Length)];
            double[] expected = LocalLinearAttentionReference.Forward(c.Q, c.K, c.V, c.Shape, lambda, null);
            var output = TestData.Poisoned<float>(c.Shape.OutputCount);
            LocalLinearAttention.Forward(c.Q, c.K, c.V, c.Shape, new LocalLinearAttentionOptions { Lambda = lambda }, output);
            double err = ExtraCase.Error(output, expected);
            Assert.True(err < 1e-4, $"lambda {lambda}: error {err:E2}; {c.Description}");
        }
    }

    [Fact]
    public void AHugeRidgeGivesCausalSoftmaxAttentionAndTheFirstTokenGivesItsValue()
    {
        var rng = TestData.Rng(552);
        var c = ExtraCase.Make(rng, new LinearExtraShape(2, 41, 4, 2, 32, 32));
        var s = c.Shape;
        ReferenceForwardResult softmax = ReferenceAttention.Forward<float>(TestData.Bthd(c.Q, s.Batch, s.Tokens, s.Heads, s.KeyDim),
            TestData.Bthd(c.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim), TestData.Bthd(c.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim),
            new AttentionOptions { Mask = new CausalMask() });
        var output = TestData.Poisoned<float>(s.OutputCount);
        LocalLinearAttention.Forward(c.Q, c.K, c.V, s, new LocalLinearAttentionOptions { Lambda = 1e7f }, output);
        Assert.True(ExtraCase.Error(output, softmax.Output) < 1e-5, $"λ → ∞: {ExtraCase.Error(output, softmax.Output):E2}; {c.Description}");
        // With a small ridge the local fit differs from softmax, but token 0 (one key) still outputs its own value.
        LocalLinearAttention.Forward(c.Q, c.K, c.V, s, new LocalLinearAttentionOptions { Lambda = 0.01f }, output);
        Assert.True(ExtraCase.Error(output, softmax.Output) > 1e-3, "a small ridge should move the output away from softmax");
        for (int b = 0; b < s.Batch; b++)
            for (int h = 0; h < s.Heads; h++)
                for (int x = 0; x < s.ValueDim; x++)
                    Assert.True(Math.Abs(output[(int)s.O(b * s.Tokens, h) + x] - c.V[(int)s.V(b * s.Tokens, h / 2) + x]) < 1e-5);
    }

    [Fact]
    public void ExactlyLinearDataIsRecoveredAtAnyQuery()
    {
        // v = A·k + b exactly: the local linear fit reproduces it at the query, v(q) = A·q + b (up to the ridge, small here).
        var rng = TestData.Rng(553);
        const int dk = 4, dv = 3, t = 60;
        float[] a = TestData.Gaussian<float>(rng, dv * dk), bias = TestData.Gaussian<float>(rng, dv);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, t, 1, 1, dk, dv));
        for (int j = 0; j < t; j++)
            for (int o = 0; o < dv; o++)
            {
                float sum = bias[o];
                for (int x = 0; x < dk; x++) sum += a[o * dk + x] * c.K[j * dk + x];
                c.V[j * dv + o] = sum;
            }
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        LocalLinearAttention.Forward(c.Q, c.K, c.V, c.Shape, new LocalLinearAttentionOptions { Lambda = 1e-6f }, output);
        for (int i = 20; i < t; i++)
            for (int o = 0; o < dv; o++)
            {
                double want = bias[o];
                for (int x = 0; x < dk; x++) want += a[o * dk + x] * c.Q[i * dk + x];
                Assert.True(Math.Abs(output[i * dv + o] - want) < 2e-2 * Math.Max(1, Math.Abs(want)), $"row {i}: {output[i * dv + o]} vs {want} ({c.Description})");
            }
    }

    [Fact]
    public void LargeLogitsStayFinite()
    {
        var rng = TestData.Rng(554);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 300, 1, 1, 16, 16), scale: 30);
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        LocalLinearAttention.Forward(c.Q, c.K, c.V, c.Shape, null, output);
        Assert.True(ExtraCase.AllFinite(output), c.Description);
    }

    [Fact]
    public void AdapterFormsAgreeAndBadParametersAreNamed()
    {
        var rng = TestData.Rng(555);
        var c = ExtraCase.Random(rng, 33, [16], varlen: true);
        var method = new LocalLinearAttentionMethod();
        MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive", "lambda=0.5"]));
        MethodResult chunked = method.Run(c.Inputs(), MethodArguments.Parse(["lambda=0.5"]));
        Assert.True(ExtraCase.Error(chunked.Output.Data, naive.Output.Data) < 1e-4, c.Description);
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["lambda=0"])));
        Assert.Equal("lambda", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=recurrent"])));
        Assert.Equal("form", e.ParamName);
        Assert.Contains("naive", e.Message);
    }
}
