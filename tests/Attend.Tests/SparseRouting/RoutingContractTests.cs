using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>The properties every routing / retrieval selector must have, for each method.</summary>
public class RoutingContractTests
{
    public static TheoryData<string> Methods => RoutingMethodsUnderTest.Names();

    public static TheoryData<string> Retrievers => RoutingMethodsUnderTest.Retrievers();

    public static TheoryData<string> KeepAll => RoutingMethodsUnderTest.KeepAllMethods();

    private static int Salt(string name) => TestData.Salt(name) & 0xffff;

    [Theory]
    [MemberData(nameof(Methods))]
    public void OutputEqualsFloat64ReferenceOfThePlan(string name)
    {
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Random rng = TestData.Rng(900 + Salt(name));
        // Odd length, grouped-query, two sequences; one T below a block; a packed batch with a length-1 sequence;
        // head dim 128 and bidirectional; decode-like Tq < Tk.
        RoutingProblem[] cases =
        [
            RoutingProblem.Random(rng, 2, 77, 4, 2, 32),
            RoutingProblem.Random(rng, 1, 9, 2, 1, 64),
            RoutingProblem.Random(rng, 1, 1, 3, 1, 32),
            RoutingProblem.Random(rng, 1, 0, 2, 2, 32, lens: [70, 1, 45]),
            RoutingProblem.Random(rng, 1, 130, 2, 2, 128),
            RoutingProblem.Random(rng, 1, 5, 4, 1, 64, tk: 150),
            // More queries than keys: the first 40 causal rows see nothing (output 0, LSE −∞); large logits.
            RoutingProblem.Random(rng, 1, 100, 2, 1, 32, tk: 60),
            RoutingProblem.Random(rng, 1, 90, 2, 2, 64, scale: 4),
            RoutingProblem.Random(rng, 1, 37, 3, 3, 256),
        ];
        for (int i = 0; i < cases.Length; i++)
        {
            bool causal = i != 4;
            RoutingProblem p = cases[i];
            p.AssertMatchesReference(m.Sparse(p.Input, causal));
        }
    }

    [Theory]
    [MemberData(nameof(KeepAll))]
    public void PlanThatKeepsEverythingIsExactAttention(string name)
    {
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Random rng = TestData.Rng(910 + Salt(name));
        RoutingProblem p = RoutingProblem.Random(rng, 2, 150, 4, 2, 64);
        p.AssertKeepsEverything(m.KeepAll!(p.Input, true), causal: true);
        RoutingProblem packed = RoutingProblem.Random(rng, 1, 0, 2, 1, 32, lens: [61, 90]);
        packed.AssertKeepsEverything(m.KeepAll!(packed.Input, m.CausalOnly), causal: m.CausalOnly);
    }

    [Theory]
    [MemberData(nameof(Retrievers))]
    public void PlantedNeedleIsFound(string name)
    {
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Random rng = TestData.Rng(920 + Salt(name));
        RoutingProblem p = RoutingProblem.Random(rng, 2, 512, 4, 2, 64, scale: 0.5);
        // Strength 16: methods that score pooled block summaries (Landmark's mean key, CCA's pooled cores) see the needle
        // diluted by the block size, signal s²/64 against noise ≈ s·0.06 from the other 63 keys: s/4 standard deviations.
        // At 8 (2σ) a correct selector missed it at about one seed in 30; at 16 it is 4σ.
        p.PlantNeedle(rng, position: 37, firstRow: 448, strength: 16f);
        SparsePlanCheck(p, m.Sparse(p.Input, true), 37, 448);
    }

    [Theory]
    [MemberData(nameof(Methods))]
    public void LogitsBeyondFloatExpRangeStayFiniteAndExact(string name)
    {
        // q and k of size ~12 per element at D = 64: logits in the hundreds, past float's exp range (~88). A selector
        // that exponentiates raw logits (TensorPrimitives.SoftMax does not shift by the maximum) turns NaN here.
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Random rng = TestData.Rng(930 + Salt(name));
        RoutingProblem p = RoutingProblem.Random(rng, 1, 100, 4, 2, 64, scale: 12);
        p.AssertMatchesReference(m.Sparse(p.Input, true), tolerance: 1e-4);
    }

    [Theory]
    [MemberData(nameof(Retrievers))]
    public void StrongNeedleIsFound(string name)
    {
        // Needle logit ≈ 40² / √64 = 200: the selector's own scores overflow float exp unless they are shifted.
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Random rng = TestData.Rng(940 + Salt(name));
        RoutingProblem p = RoutingProblem.Random(rng, 1, 512, 4, 2, 64, scale: 0.5);
        p.PlantNeedle(rng, position: 37, firstRow: 448, strength: 40f);
        SparsePlanCheck(p, m.Sparse(p.Input, true), 37, 448);
    }

    [Theory]
    [InlineData(8f)]
    [InlineData(40f)] // needle logit ≈ 200: the salient-token scores must not overflow float exp
    public void DeltaSelectsAStrongNeedle(float strength)
    {
        Random rng = TestData.Rng(950);
        RoutingProblem p = RoutingProblem.Random(rng, 1, 512, 4, 2, 64, scale: 0.5);
        p.PlantNeedle(rng, position: 37, firstRow: 448, strength: strength);
        Attend.Methods.Sparse.Routing.SparsePlan plan = Attend.Methods.Sparse.Routing.DELTA.Plan(p.Input, new Attend.Methods.Sparse.Routing.DeltaOptions { TopK = 4, Sinks = 0, Window = 1, QueryBlockSize = 16 });
        p.AssertFindsNeedle(plan, 37, 448);
    }

    public static TheoryData<string> SingleQueryRetrievers => RoutingMethodsUnderTest.SingleQueryRetrievers();

    [Theory]
    [MemberData(nameof(SingleQueryRetrievers))]
    public void GeneratedNeedlesOfSingleQueriesAreFound(string name)
    {
        // The shared workload generator's needle preset: each needle is one query row that must find one distant key.
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Attend.Workloads.WorkloadOptions o = Attend.Workloads.WorkloadPresets.Get(Attend.Workloads.WorkloadPresets.Needle, 512, heads: 4, kvHeads: 2, headDim: 64);
        Attend.Workloads.Workload w = Attend.Workloads.WorkloadGenerator.Generate(o, TestData.RunSeed);
        var x = new Attend.Methods.Sparse.Routing.SelectorInput(w.Q, w.K, w.Batch, w.Length, w.Length, w.Heads, w.KvHeads, w.HeadDim);
        Attend.Methods.Sparse.Routing.SparsePlan plan = m.Sparse(x, true);
        Assert.NotEmpty(w.Needles);
        foreach (Attend.Workloads.PlantedNeedle n in w.Needles)
            Assert.True(plan.Mask.IsVisible(n.Batch, n.Head, n.Query, n.Key), $"{name} misses needle {n} (density {plan.Density:f3}); seed {TestData.RunSeed}");
        Assert.True(plan.Density < 0.9, $"density {plan.Density:f3}");
    }

    private static void SparsePlanCheck(RoutingProblem p, Attend.Methods.Sparse.Routing.SparsePlan plan, int position, int firstRow)
    {
        p.AssertFindsNeedle(plan, position, firstRow);
        // And the output of those rows is dominated by the needle's value (10 in every channel).
        var (o, _) = p.Run(plan);
        for (int b = 0; b < p.B; b++)
            for (int h = 0; h < p.H; h++)
            {
                long at = (((long)b * p.T + p.T - 1) * p.H + h) * p.Dv;
                Assert.True(o[at] > 5, $"last row of batch {b} head {h} has {o[at]} instead of the needle's value; {p}");
            }
    }
}
