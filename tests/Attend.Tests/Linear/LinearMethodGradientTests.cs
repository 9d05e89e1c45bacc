using Attend.Linear;
using Attend.Methods;
using Attend.Methods.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// Gradients of every state-kernel method in the exact configuration its adapter runs (its feature map — learned and
/// norm-aware ones included —, scale, decay schedule, gates, β, normalisation): the engine's chunked and recurrent
/// backward equal the float64 reference's gradients, and those equal central finite differences of the float64
/// forward, on a small odd-length run with GQA, an initial state and a final-state gradient.
/// </summary>
public class LinearMethodGradientTests
{
    public static TheoryData<string> Names
    {
        get
        {
            var data = new TheoryData<string>();
            foreach (IAttentionMethod m in LinearMethods.All) data.Add(m.Info.Name);
            return data;
        }
    }

    /// <summary>T = 9 (odd, not a multiple of the chunk of 4), H = 2 over Hkv = 1, D = 4, an initial state from a prefix.</summary>
    private static LinearCase Small(string name, Random rng)
    {
        const int t = 9, h = 2, hkv = 1, d = 4;
        MethodInputs m = LinearMethodTests.InputsFor(name, rng, 1, t, h, hkv, d);
        var method = (LinearMethod)MethodCatalog.FindRunnable(name)!;
        LinearCall call = method.Plan(m, MethodArguments.Parse(["form=chunked", "chunk=4"]));
        Assert.Null(call.Instead);
        float[] gate = call.Gate ?? [], beta = call.Beta ?? [];
        var c = new LinearCase
        {
            Shape = new LinearShape(1, t, h, hkv, d, d), Options = call.Options, Q = m.Q.Data, K = m.K.Data, V = m.V.Data, Gate = gate, Beta = beta,
        };
        // The initial state is one the method itself produced (a run over a 5-token prefix): a random state would give the
        // denominator methods a normaliser column of either sign, and the division by a near-zero sum steep gradients.
        MethodInputs prefix = LinearMethodTests.InputsFor(name, rng, 1, 5, h, hkv, d);
        c.State = method.Run(prefix, MethodArguments.Parse(["form=chunked", "chunk=4"])).Extras["state"].Data;
        Assert.Equal(c.Config.StateLength, c.State.Length);
        return c;
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void ChunkedAndRecurrentBackwardEqualTheReferenceWhoseGradientsEqualFiniteDifferences(string name)
    {
        Random rng = TestData.Rng(TestData.Salt(name) & 0xffff);
        LinearCase c = Small(name, rng);
        LinearConfig config = c.Config;
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength);
        float[] dST = TestData.Gaussian<float>(rng, config.StateLength);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, dO, dST);
        string where = $"{name} ({config.Map.Name}, {config.Decay}, {config.Update}, {config.Normalization}) seed {TestData.RunSeed}";

        foreach (LinearForm form in new[] { LinearForm.Chunked, LinearForm.Recurrent })
        {
            float[] dq = TestData.Poisoned<float>(c.Q.Length), dk = TestData.Poisoned<float>(c.K.Length), dv = TestData.Poisoned<float>(c.V.Length);
            float[] dg = TestData.Poisoned<float>(c.Gate.Length), db = TestData.Poisoned<float>(c.Beta.Length), ds = TestData.Poisoned<float>(c.State.Length);
            LinearAttention.Backward(c.Inputs, c.Options with { Form = form }, dO, dST,
                new LinearGradients { Q = dq, K = dk, V = dv, Gate = dg, Beta = db, InitialState = ds });
            foreach ((string what, float[] actual, double[] expected) in new[]
                     { ("dq", dq, r.Q), ("dk", dk, r.K), ("dv", dv, r.V), ("dgate", dg, r.Gate), ("dbeta", db, r.Beta), ("dS0", ds, r.InitialState) })
            {
                double e = TestData.RelativeError<float>(actual, expected);
                Assert.True(e < 1e-4, $"{form} {what} vs reference {e:E2}, {where}");
            }
        }

        double[] dO64 = Array.ConvertAll(dO, x => (double)x), dST64 = Array.ConvertAll(dST, x => (double)x);
        double Loss()
        {
            (double[] o, double[] s) = ReferenceLinearAttention.Forward(c.Inputs, c.Options);
            double l = 0;
            for (int i = 0; i < o.Length; i++) l += o[i] * dO64[i];
            for (int i = 0; i < s.Length; i++) l += s[i] * dST64[i];
            return l;
        }

        foreach ((string what, float[] x, double[] g) in new[]
                 { ("q", c.Q, r.Q), ("k", c.K, r.K), ("v", c.V, r.V), ("gate", c.Gate, r.Gate), ("beta", c.Beta, r.Beta), ("S0", c.State, r.InitialState) })
        {
            double worst = 0, scale = 1e-3;
            foreach (double gi in g) scale = Math.Max(scale, Math.Abs(gi));
            for (int i = 0; i < x.Length; i += Math.Max(1, x.Length / 10))
            {
                float keep = x[i];
                // The loss is float64 at the float32 points actually taken (hi, lo), so a small step loses nothing to rounding
                // and keeps the truncation error of the norm-aware map (x₊^p with p < 2 near 0) small.
                float step = 1e-4f * Math.Max(1f, Math.Abs(keep));
                if (what == "gate") step = Math.Min(step, Math.Max(1e-5f, -keep / 4));
                // elu+1 has a jump in its second derivative at 0: a difference across it measures nothing.
                if (what is "q" or "k" && Math.Abs(keep) < 2 * step) continue;
                x[i] = keep + step; double up = Loss(); float hi = x[i];
                x[i] = keep - step; double down = Loss(); float lo = x[i];
                x[i] = keep;
                worst = Math.Max(worst, Math.Abs((up - down) / (hi - lo) - g[i]) / scale);
            }
            Assert.True(worst < 2e-4, $"reference d{what} vs finite differences {worst:E2}, {where}");
        }
    }
}
