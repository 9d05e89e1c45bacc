using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>The properties every routing / retrieval selector must have, for each method.</summary>
public class RoutingContractTests
{
    public static TheoryData<string> Methods => RoutingMethodsUnderTest.Names();

    public static TheoryData<string> Retrievers => RoutingMethodsUnderTest.Retrievers();

    public static TheoryData<string> KeepAll => RoutingMethodsUnderTest.KeepAllMethods();

    private static int Salt(string name) => name.GetHashCode(StringComparison.Ordinal) & 0xffff;

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
        RoutingProblem bidirectional = RoutingProblem.Random(rng, 1, 0, 2, 1, 32, lens: [61, 90]);
        bidirectional.AssertKeepsEverything(m.KeepAll!(bidirectional.Input, false), causal: false);
    }

    [Theory]
    [MemberData(nameof(Retrievers))]
    public void PlantedNeedleIsFound(string name)
    {
        RoutingUnderTest m = RoutingMethodsUnderTest.Get(name);
        Random rng = TestData.Rng(920 + Salt(name));
        RoutingProblem p = RoutingProblem.Random(rng, 2, 512, 4, 2, 64, scale: 0.5);
        p.PlantNeedle(rng, position: 37, firstRow: 448, strength: 6f);
        SparsePlanCheck(p, m.Sparse(p.Input, true), 37, 448);
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
