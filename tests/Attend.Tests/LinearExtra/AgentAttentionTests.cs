using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class AgentAttentionTests
{
    [Fact]
    public void ChunkedFormEqualsTheFloat64DefinitionOnBatchesVarlenAndGqa()
    {
        var rng = TestData.Rng(511);
        for (int trial = 0; trial < 10; trial++)
        {
            var c = ExtraCase.Random(rng, 127, [32, 64, 96, 128, 256], varlen: trial % 3 == 0, sameDims: true);
            int agents = rng.Next(1, 20);
            double[] expected = AgentAttentionReference.Forward(c.Q, c.K, c.V, c.Shape, agents, null);
            var output = TestData.Poisoned<float>(c.Shape.OutputCount);
            AgentAttention.Forward(c.Q, c.K, c.V, c.Shape, new AgentAttentionOptions { Agents = agents }, output);
            double err = ExtraCase.Error(output, expected);
            Assert.True(err < 2e-5, $"agents {agents}: error {err:E2}; {c.Description}");
        }
    }

    [Fact]
    public void OneAgentPerTokenOfAOneTokenSequenceIsThatTokensValue()
    {
        // T = 1: every agent is the query itself, both softmaxes are over one element, so O = V.
        var rng = TestData.Rng(512);
        var c = ExtraCase.Make(rng, new LinearExtraShape(2, 1, 4, 2, 32, 32));
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        AgentAttention.Forward(c.Q, c.K, c.V, c.Shape, new AgentAttentionOptions { Agents = 3 }, output);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 4; h++)
                for (int x = 0; x < 32; x++)
                    Assert.True(Math.Abs(c.V[(int)c.Shape.V(b, h / 2) + x] - output[(int)c.Shape.O(b, h) + x]) < 1e-5);
    }

    [Fact]
    public void LargeLogitsStayFinite()
    {
        var rng = TestData.Rng(513);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 4099, 2, 1, 64, 64), scale: 20);
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        AgentAttention.Forward(c.Q, c.K, c.V, c.Shape, new AgentAttentionOptions { Agents = 49 }, output);
        Assert.True(ExtraCase.AllFinite(output), c.Description);
    }

    [Fact]
    public void AdapterFormsAgreeAndBadParametersAreNamed()
    {
        var rng = TestData.Rng(514);
        var c = ExtraCase.Random(rng, 65, [32], varlen: false, sameDims: true);
        var method = new AgentAttentionMethod();
        MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive", "agents=7"]));
        MethodResult chunked = method.Run(c.Inputs(), MethodArguments.Parse(["form=chunked", "agents=7"]));
        Assert.True(ExtraCase.Error(chunked.Output.Data, naive.Output.Data) < 2e-5, c.Description);
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=recurrent"])));
        Assert.Equal("form", e.ParamName);
        Assert.Contains("chunked", e.Message);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["agents=0"])));
        Assert.Equal("agents", e.ParamName);
        var wide = ExtraCase.Make(rng, new LinearExtraShape(1, 5, 1, 1, 32, 16));
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(wide.Inputs(), MethodArguments.Empty));
        Assert.Equal("v", e.ParamName);
    }
}

public class AgentAttentionBackwardTests
{
    [Fact]
    public void BackwardMatchesFiniteDifferencesOfTheDefinitionWithGqaAndVarlen()
    {
        var rng = TestData.Rng(515);
        foreach (LinearExtraShape s in new[] { new LinearExtraShape(2, 7, 2, 1, 4, 4), new LinearExtraShape(1, 9, 2, 2, 4, 4, SeqOffsets.FromLengths([5, 1, 3])) })
        {
            var c = ExtraCase.Make(rng, s);
            const int agents = 3;
            float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
            float[] gq = TestData.Poisoned<float>(c.Q.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
            AgentAttention.Backward(c.Q, c.K, c.V, s, new AgentAttentionOptions { Agents = agents }, dO, gq, gk, gv);
            double Loss()
            {
                double[] o = AgentAttentionReference.Forward(c.Q, c.K, c.V, s, agents, null);
                double sum = 0;
                for (int i = 0; i < o.Length; i++) sum += o[i] * dO[i];
                return sum;
            }
            foreach ((float[] x, float[] grad, string name) in new[] { (c.Q, gq, "q"), (c.K, gk, "k"), (c.V, gv, "v") })
            {
                for (int i = 0; i < x.Length; i++)
                {
                    float keep = x[i];
                    const float step = 1e-2f;
                    x[i] = keep + step;
                    double up = Loss();
                    x[i] = keep - step;
                    double down = Loss();
                    x[i] = keep;
                    double fd = (up - down) / (2 * step);
                    Assert.True(Math.Abs(fd - grad[i]) < 2e-3 * Math.Max(1, Math.Abs(fd)), $"d{name}[{i}]: {grad[i]} vs finite difference {fd}; {c.Description}");
                }
            }
        }
    }
}
