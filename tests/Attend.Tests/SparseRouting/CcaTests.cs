using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

public class CcaTests
{
    private static void AssertMatchesReference(RoutingProblem p, CcaPlan plan)
    {
        float[] o = TestData.Poisoned<float>((long)p.B * p.T * p.H * p.Dv), lse = TestData.Poisoned<float>((long)p.B * p.H * p.T);
        plan.Forward(p.Q, o, lse);
        ReferenceForwardResult r = ReferenceAttention.Forward<float>(AttentionLayout.Bthd<float>(p.Q, p.B, p.T, p.H, p.D),
            AttentionLayout.Bthd<float>(plan.Keys, p.B, plan.ConcatLength, p.Hkv, p.D), AttentionLayout.Bthd<float>(plan.Values, p.B, plan.ConcatLength, p.Hkv, p.Dv),
            plan.Options());
        double err = TestData.RelativeError<float>(o, r.Output);
        Assert.True(err < 2e-5, $"output error {err:g3}; {p}");
        Assert.True(TestData.LseError(lse, r.Lse) < 1e-4, $"LSE; {p}");
    }

    [Fact]
    public void OutputEqualsFloat64ReferenceOverCoresAndLocalTokens()
    {
        Random rng = TestData.Rng(1601);
        RoutingProblem[] cases =
        [
            RoutingProblem.Random(rng, 2, 133, 4, 2, 32),
            RoutingProblem.Random(rng, 1, 7, 2, 1, 64),
            RoutingProblem.Random(rng, 1, 0, 2, 2, 32, lens: [70, 1, 95]),
            RoutingProblem.Random(rng, 1, 3, 4, 1, 64, tk: 150),
            RoutingProblem.Random(rng, 1, 200, 2, 2, 128),
            // Logits in the hundreds: the core pooling's softmax must shift by its maximum (float exp overflows at ~88).
            RoutingProblem.Random(rng, 1, 100, 4, 2, 32, scale: 10),
        ];
        foreach (RoutingProblem p in cases) AssertMatchesReference(p, CCA.Plan(p.Input, p.V, p.Dv, new CcaOptions { GroupSize = 16, LocalGroups = 2 }));
    }

    [Fact]
    public void LocalGroupsCoveringEverythingIsExactCausalAttention()
    {
        Random rng = TestData.Rng(1602);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 0, 4, 2, 32, lens: [90, 41]);
        CcaPlan plan = CCA.Plan(p.Input, p.V, p.Dv, new CcaOptions { GroupSize = 16, LocalGroups = 100 });
        Assert.Equal(1.0, plan.Density, 12);
        float[] o = TestData.Poisoned<float>(p.Q.Length);
        plan.Forward(p.Q, o, default);
        double err = TestData.RelativeError<float>(o, p.Reference(p.BaseOptions(true)).Output);
        Assert.True(err < 2e-5, $"{err:g3}; {p}");
    }

    [Fact]
    public void CoreTokenIsTheSignificanceWeightedPoolOfItsGroup()
    {
        Random rng = TestData.Rng(1603);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 64, 2, 1, 16);
        CcaPlan plan = CCA.Plan(p.Input, p.V, p.Dv, new CcaOptions { GroupSize = 16, LocalGroups = 1 });
        Assert.Equal(64 + 4, plan.ConcatLength);
        int j = 2, last = 47;
        var qbar = new double[16];
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 16; i++) qbar[i] += p.Q[(last * 2 + h) * 16 + i] / 2.0;
        var w = new double[16];
        for (int t = 0; t < 16; t++)
            for (int i = 0; i < 16; i++) w[t] += qbar[i] * p.K[(j * 16 + t) * 16 + i] / 4.0; // scale 1/√16
        double max = w.Max(), z = w.Sum(x => Math.Exp(x - max));
        for (int i = 0; i < 16; i++)
        {
            double ck = 0, cv = 0;
            for (int t = 0; t < 16; t++)
            {
                double a = Math.Exp(w[t] - max) / z;
                ck += a * p.K[(j * 16 + t) * 16 + i];
                cv += a * p.V[(j * 16 + t) * 16 + i];
            }
            Assert.True(Math.Abs(plan.Keys[j * 16 + i] - ck) < 1e-5 && Math.Abs(plan.Values[j * 16 + i] - cv) < 1e-5, $"core {j} [{i}]");
        }
        // Query 63 (group 3) sees cores 0..2 and the tokens of group 3 only.
        Assert.True(plan.Mask.IsVisible(0, 0, 4 + 63, 2) && !plan.Mask.IsVisible(0, 0, 4 + 63, 3));
        Assert.True(plan.Mask.IsVisible(0, 0, 4 + 63, 4 + 48) && !plan.Mask.IsVisible(0, 0, 4 + 63, 4 + 47));
    }

    [Fact]
    public void RunnableMethodReportsDensityAndExactCoverage()
    {
        Random rng = TestData.Rng(1604);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 100, 2, 1, 16);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 100, 2, 16), new MethodTensor(p.K, 1, 100, 1, 16), new MethodTensor(p.V, 1, 100, 1, 16));
        MethodResult r = new CcaMethod().Run(inputs, MethodArguments.Parse(["group=10", "local=2"]));
        Assert.InRange(r.Density!.Value, 0.05, 0.6);
        var covered = new bool[100];
        r.Coverage!.CoveredKeys(0, 1, 55, covered);
        for (int k = 0; k < 100; k++) Assert.Equal(k >= 40 && k <= 55, covered[k]);
        Assert.Equal("local", Assert.Throws<ArgumentException>(() => new CcaMethod().Run(inputs, MethodArguments.Parse(["local=0"]))).ParamName);
        Assert.Equal("GroupSize", Assert.Throws<ArgumentOutOfRangeException>(() => CCA.Plan(p.Input, p.V, 16, new CcaOptions { GroupSize = 0 })).ParamName);
        Assert.Equal("values", Assert.Throws<ArgumentException>(() => CCA.Plan(p.Input, p.V, 8)).ParamName);
    }
}
