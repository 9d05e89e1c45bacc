using Attend.Methods.Sparse;
using Attend.Methods;
using Attend.Methods.Sparse.Dynamic;
using Xunit;

namespace Attend.Tests.SparseDynamic;

public class DynamicSelectorTests
{
    private static MethodInputs Inputs(AttnCase c, AttnInputs<float> x, SeqOffsets? offsets = null) =>
        new(new MethodTensor(x.Q, c.B, c.Tq, c.H, c.D), new MethodTensor(x.K, c.B, c.Tk, c.Hkv, c.D), new MethodTensor(x.V, c.B, c.Tk, c.Hkv, c.D))
        { Offsets = offsets };

    private static MethodResult Run(IAttentionMethod method, AttnCase c, AttnInputs<float> x, params string[] args) =>
        method.Run(Inputs(c, x), MethodArguments.Parse(args));

    // The plan a selector builds for these inputs, run through its own float64 reference.
    private static ReferenceForwardResult PlanReference(AttnCase c, AttnInputs<float> x, HybridSparsePlan plan) =>
        plan.Reference(TestData.Bthd(x.Q, c.B, c.Tq, c.H, c.D), TestData.Bthd(x.K, c.B, c.Tk, c.Hkv, c.D), TestData.Bthd(x.V, c.B, c.Tk, c.Hkv, c.D),
            new AttentionOptions { QueryOffsets = c.QLens is null ? null : SeqOffsets.FromLengths(c.QLens) });

    private static void AssertNoNaN(MethodResult r) =>
        Assert.DoesNotContain(r.Output.Data, v => float.IsNaN(v));

    private static void AssertMatches(MethodResult r, ReferenceForwardResult reference, double tolerance = 1e-5)
    {
        AssertNoNaN(r);
        Assert.True(TestData.RelativeError<float>(r.Output.Data, reference.Output) < tolerance, $"output, seed {TestData.RunSeed}");
        Assert.True(TestData.LseError(r.Extras["lse"].Data, reference.Lse) < 1e-5, $"lse, seed {TestData.RunSeed}");
    }

    private static void AssertFindsNeedle(IPairCoverage coverage, DynamicWorkload w)
    {
        var covered = new bool[w.Case.Tk];
        for (int h = 0; h < w.Case.H; h++)
            for (int i = w.Case.Tq - w.QuestionRows; i < w.Case.Tq; i++)
            {
                coverage.CoveredKeys(0, h, i, covered);
                Assert.True(covered[w.NeedleKey], $"head {h} row {i} misses the needle at {w.NeedleKey}; seed {TestData.RunSeed}");
            }
    }

    [Theory]
    [InlineData("vertical-slash", 333, 4, 2, 64)]
    [InlineData("a-shape", 200, 2, 1, 32)]
    [InlineData("block-sparse", 257, 4, 4, 64)]
    [InlineData("search", 300, 6, 2, 48)]
    [InlineData("vertical-slash", 40, 2, 2, 32)] // T smaller than one block
    public void MInferenceEqualsTheFloat64ComputationOfItsPlan(string pattern, int t, int heads, int kvHeads, int dim)
    {
        Random rng = TestData.Rng(4200 + t + heads);
        DynamicWorkload w = DynamicWorkload.Create(rng, t, heads, kvHeads, dim, needleKey: t / 3);
        MethodResult r = Run(new MInferenceMethod(), w.Case, w.Inputs, $"pattern={pattern}", "budget=96");
        Assert.NotNull(r.Density);
        Assert.InRange(r.Density!.Value, 0.0, 1.0);
        var plan = (HybridSparsePlan)r.Coverage!;
        AssertMatches(r, PlanReference(w.Case, w.Inputs, plan));
        // The same inputs and options build the same plan again.
        var heads2 = r.Report.First(p => p.Key == "patterns").Value.Split(' ');
        Assert.Equal(heads, heads2.Length);
    }

    [Theory]
    [InlineData("minference", "pattern=vertical-slash")]
    [InlineData("minference", "pattern=block-sparse")]
    [InlineData("flexprefill", "tau=0")]
    [InlineData("flexprefill", "tau=100")]
    [InlineData("anchor-attention", "theta=0.2")]
    public void VarlenEqualsReference(string method, string arg)
    {
        Random rng = TestData.Rng(4201);
        var c = new AttnCase { H = 4, Hkv = 2, D = 32, Mask = Masks.Causal };
        int[] lens = [150, 1, 0, 200];
        c.SetVarlen(lens, lens);
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        var offsets = SeqOffsets.FromLengths(lens);
        string[] args = method == "minference" ? [arg, "budget=80"] : [arg];
        MethodResult r = MethodCatalog.FindRunnable(method)!.Run(Inputs(c, x, offsets), MethodArguments.Parse(args));
        Assert.InRange(r.Density!.Value, 0.0, 1.0);
        if (method != "minference")
        {
            AssertMatches(r, PlanReference(c, x, (HybridSparsePlan)r.Coverage!));
            return;
        }
        // MInference plans each sequence of a packed batch alone (its default budget depends on the sequence): each
        // sequence's rows equal the float64 reference of that sequence's own plan.
        AssertNoNaN(r);
        var packed = Assert.IsType<PackedBatch.PackedCoverage>(r.Coverage);
        int t = offsets.TotalTokens;
        for (int s = 0; s < lens.Length; s++)
        {
            int start = offsets.Start(s), len = lens[s];
            if (len == 0) continue;
            float[] qs = x.Q.AsSpan(start * c.H * c.D, len * c.H * c.D).ToArray();
            float[] ks = x.K.AsSpan(start * c.Hkv * c.D, len * c.Hkv * c.D).ToArray(), vs = x.V.AsSpan(start * c.Hkv * c.D, len * c.Hkv * c.D).ToArray();
            var plan = (HybridSparsePlan)packed.Sequences[s]!;
            ReferenceForwardResult alone = plan.Reference(TestData.Bthd(qs, 1, len, c.H, c.D), TestData.Bthd(ks, 1, len, c.Hkv, c.D), TestData.Bthd(vs, 1, len, c.Hkv, c.D), new AttentionOptions());
            Assert.True(TestData.RelativeError<float>(r.Output.Data.AsSpan(start * c.H * c.D, len * c.H * c.D), alone.Output) < 1e-5, $"sequence {s} output, seed {TestData.RunSeed}");
            for (int h = 0; h < c.H; h++)
                Assert.True(TestData.LseError(r.Extras["lse"].Data.AsSpan(h * t + start, len), alone.Lse.AsSpan(h * len, len)) < 1e-5, $"sequence {s} head {h} lse, seed {TestData.RunSeed}");
        }
    }

    [Fact]
    public void MInferenceFindsThePlantedNeedle()
    {
        // 30 columns are always kept (the first keys, as in the authors' code), so the top-k needs room beyond them.
        Random rng = TestData.Rng(4202);
        DynamicWorkload w = DynamicWorkload.Create(rng, 640, 4, 2, 64, needleKey: 211);
        MethodResult r = Run(new MInferenceMethod(), w.Case, w.Inputs, "pattern=vertical-slash", "vertical=48", "slash=128");
        AssertFindsNeedle(r.Coverage!, w);
        Assert.True(r.Density < 0.6, $"density {r.Density}");
        // The question rows, whose exact output is mostly the needle's value, come out right.
        ReferenceForwardResult exact = Harness.Reference(w.Case, w.Inputs);
        int from = (w.Case.Tq - w.QuestionRows) * w.Case.H * w.Case.D;
        double err = DynamicWorkload.Frobenius(r.Output.Data[from..], exact.Output[from..]);
        Assert.True(err < 0.25, $"relative Frobenius error of the question rows {err}; seed {TestData.RunSeed}");
    }

    [Theory]
    [InlineData("pattern=vertical-slash", "vertical=500", "slash=500")]
    [InlineData("pattern=block-sparse", "blocks=20")]
    public void MInferenceWithBudgetsThatKeepEverythingIsExact(params string[] args)
    {
        Random rng = TestData.Rng(4203);
        var c = new AttnCase { Tq = 301, Tk = 301, H = 4, Hkv = 1, D = 64, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        MethodResult r = Run(new MInferenceMethod(), c, x, args);
        Assert.Equal(1.0, r.Density!.Value, 9);
        AssertMatches(r, Harness.Reference(c, x));
    }

    [Fact]
    public void FlexPrefillEqualsItsPlanFindsTheNeedleAndIsExactAtGammaOne()
    {
        Random rng = TestData.Rng(4204);
        DynamicWorkload w = DynamicWorkload.Create(rng, 517, 4, 2, 64, needleKey: 150);
        MethodResult r = Run(new FlexPrefillMethod(), w.Case, w.Inputs, "gamma=0.9");
        AssertMatches(r, PlanReference(w.Case, w.Inputs, (HybridSparsePlan)r.Coverage!));
        AssertFindsNeedle(r.Coverage!, w);
        Assert.True(r.Density < 0.9, $"density {r.Density}");
        // τ = 0: every head vertical-slash; τ huge: every head query-aware. Both stay equal to their plan.
        foreach (string tau in (string[])["tau=0", "tau=100"])
        {
            MethodResult t = Run(new FlexPrefillMethod(), w.Case, w.Inputs, tau);
            Assert.All(t.Report.First(p => p.Key == "patterns").Value.Split(' '), p => Assert.Equal(tau == "tau=0" ? "VS" : "QA", p));
            AssertMatches(t, PlanReference(w.Case, w.Inputs, (HybridSparsePlan)t.Coverage!));
        }
        var c = new AttnCase { Tq = 130, Tk = 130, H = 2, Hkv = 2, D = 32, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 0.3);
        MethodResult all = Run(new FlexPrefillMethod(), c, x, "gamma=1", "tau=0");
        AssertMatches(all, Harness.Reference(c, x));
    }

    [Fact]
    public void AnchorAttentionEqualsItsPlanFindsTheNeedleAndKeepsEverythingAtHugeTheta()
    {
        Random rng = TestData.Rng(4205);
        DynamicWorkload w = DynamicWorkload.Create(rng, 449, 4, 4, 64, needleKey: 100, needle: 4.5, questionRows: 32);
        MethodResult r = Run(new AnchorAttentionMethod(), w.Case, w.Inputs, "theta=1");
        AssertMatches(r, PlanReference(w.Case, w.Inputs, (HybridSparsePlan)r.Coverage!));
        AssertFindsNeedle(r.Coverage!, w);
        Assert.True(r.Density < 0.9, $"density {r.Density}");
        MethodResult all = Run(new AnchorAttentionMethod(), w.Case, w.Inputs, "theta=1000000");
        Assert.Equal(1.0, all.Density!.Value, 9);
        AssertMatches(all, Harness.Reference(w.Case, w.Inputs));
        // T smaller than one block, GQA.
        var c = new AttnCase { Tq = 50, Tk = 50, H = 4, Hkv = 2, D = 32, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng);
        MethodResult small = Run(new AnchorAttentionMethod(), c, x);
        AssertMatches(small, Harness.Reference(c, x)); // sinks + window cover everything below 64 keys
    }

    [Theory]
    [InlineData("minference", "vertical=0", "vertical")]
    [InlineData("minference", "blocks=0", "blocks")]
    [InlineData("minference", "budget=1", "budget")]
    [InlineData("minference", "pattern=diagonal", "pattern")]
    [InlineData("minference", "last_q=0", "last_q")]
    [InlineData("flexprefill", "gamma=0", "gamma")]
    [InlineData("flexprefill", "gamma=1.5", "gamma")]
    [InlineData("flexprefill", "tau=-1", "tau")]
    [InlineData("anchor-attention", "theta=-0.1", "theta")]
    [InlineData("anchor-attention", "window=3", "window")]
    [InlineData("hyperattention", "samples=0", "samples")]
    [InlineData("hyperattention", "block=100", "block")]
    [InlineData("scatterbrain", "features=0", "features")]
    public void BadParametersNameTheParameter(string method, string arg, string name)
    {
        var c = new AttnCase { Tq = 20, Tk = 20, H = 2, Hkv = 1, D = 16 };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4206));
        IAttentionMethod m = MethodCatalog.FindRunnable(method)!;
        var e = Assert.ThrowsAny<ArgumentException>(() => Run(m, c, x, arg));
        Assert.Equal(name, e.ParamName);
    }

    private static System.Numerics.Tensors.TensorSpan<float> Q(AttnInputs<float> x) => TestData.Bthd(x.Q, 1, 20, 2, 16);

    private static System.Numerics.Tensors.TensorSpan<float> K(AttnInputs<float> x) => TestData.Bthd(x.K, 1, 20, 1, 16);

    [Fact]
    public void OptionsOutOfRangeThrowFromTheTypedEntryPoints()
    {
        var c = new AttnCase { Tq = 20, Tk = 20, H = 2, Hkv = 1, D = 16 };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4207));
        Assert.Throws<ArgumentOutOfRangeException>(() => FlexPrefill.BuildPlan(Q(x), K(x), K(x), new FlexPrefillOptions { Gamma = 0 }, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => AnchorAttention.BuildPlan(Q(x), K(x), K(x), new AnchorAttentionOptions { Theta = double.NaN }));
        Assert.Throws<ArgumentException>(() => MInference.BuildPlan(Q(x), K(x), K(x), new MInferenceOptions()));
        Assert.Equal("Vertical", Assert.Throws<ArgumentOutOfRangeException>(() =>
            MInference.BuildPlan(Q(x), K(x), K(x), new MInferenceOptions { Heads = [new(MInferencePattern.VerticalSlash, 0, 5), new(MInferencePattern.AShape, 1, 1)] })).ParamName);
        Assert.Equal("budget", Assert.Throws<ArgumentOutOfRangeException>(() => MInference.Candidates(1)).ParamName);
        Assert.Equal("options", Assert.Throws<ArgumentOutOfRangeException>(() =>
            MInference.BuildPlan(Q(x), K(x), K(x), new MInferenceOptions { Heads = [new(MInferencePattern.VerticalSlash, 2, 5), new(MInferencePattern.AShape, 1, 1)], Coverage = (SlashCoverage)7 })).ParamName);
    }
}
