using Attend.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// The matrix-product chunked backward of gates and delta rules (GLA, Gated DeltaNet, DeltaNet, KDA, scalar-gated
/// additive) against the float64 reference and against the reverse recurrence it replaced, across chunk sizes, GQA,
/// varlen, head dims and gates near 1 and near 0 (a channel gate near 0 takes the reverse recurrence).
/// </summary>
public class ChunkedGatedBackwardTests
{
    [Theory]
    [InlineData("identity scalar additive none", 16, "mid", false)]
    [InlineData("identity scalar additive none", 1, "one", true)]
    [InlineData("identity channel additive none", 5, "mid", false)]
    [InlineData("elu channel additive denominator", 8, "mid", true)]
    [InlineData("l2 none delta none", 64, "mid", false)]
    [InlineData("l2 none delta none", 13, "mid", true)]
    [InlineData("l2 scalar gated none", 7, "zero", false)]
    [InlineData("l2 scalar gated none", 32, "one", true)]
    [InlineData("l2 channel gated none", 16, "one", false)]
    [InlineData("l2 channel gated none", 24, "mid", true)]
    [InlineData("l2 channel gated none", 16, "zero", false)]
    [InlineData("l2 fixed gated rms", 32, "mid", false)]
    public void ChunkedBackwardMatchesTheReferenceAndTheReverseRecurrence(string configuration, int chunk, string regime, bool varlen)
    {
        Random rng = TestData.Rng(641 + chunk + regime.Length);
        int[]? lengths = varlen ? [33, 1, 0, 40, chunk] : null;
        var shape = new LinearShape(2, 75, 4, 2, chunk % 2 == 0 ? 32 : 48, chunk % 2 == 0 ? 24 : 40);
        LinearCase c = LinearCase.Create(rng, shape, LinearFormsTests.Parse(configuration, 4, chunk), lengths, regime, qkScale: 0.4);
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength);
        float[] dST = TestData.Gaussian<float>(rng, c.Config.StateLength);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, dO, dST);

        (float[] Q, float[] K, float[] V, float[] Gate, float[] Beta, float[] S0) Run(bool reverse)
        {
            float[] dq = TestData.Poisoned<float>(c.Q.Length), dk = TestData.Poisoned<float>(c.K.Length), dv = TestData.Poisoned<float>(c.V.Length);
            float[] dg = TestData.Poisoned<float>(c.Gate.Length), db = TestData.Poisoned<float>(c.Beta.Length), ds = TestData.Poisoned<float>(c.State.Length);
            LinearAttention.GatedBackward = reverse ? GatedBackwardPath.ReverseRecurrence : GatedBackwardPath.MatrixProducts;
            try
            {
                LinearAttention.Backward(c.Inputs, c.Options, dO, dST, new LinearGradients { Q = dq, K = dk, V = dv, Gate = dg, Beta = db, InitialState = ds });
            }
            finally { LinearAttention.GatedBackward = GatedBackwardPath.Auto; }
            return (dq, dk, dv, dg, db, ds);
        }

        var chunked = Run(reverse: false);
        var recurrence = Run(reverse: true);
        foreach ((string name, float[] actual, float[] other, double[] expected) in new[]
                 {
                     ("dq", chunked.Q, recurrence.Q, r.Q), ("dk", chunked.K, recurrence.K, r.K), ("dv", chunked.V, recurrence.V, r.V),
                     ("dgate", chunked.Gate, recurrence.Gate, r.Gate), ("dbeta", chunked.Beta, recurrence.Beta, r.Beta),
                     ("dS0", chunked.S0, recurrence.S0, r.InitialState),
                 })
        {
            double e = TestData.RelativeError<float>(actual, expected);
            Assert.True(e < 2e-4, $"chunked {name} error {e:E2} against the reference, {c}");
            double e2 = TestData.RelativeError<float>(actual, Array.ConvertAll(other, x => (double)x));
            Assert.True(e2 < 2e-4, $"chunked {name} differs from the reverse recurrence by {e2:E2}, {c}");
        }
    }

    [Theory]
    [InlineData("identity channel additive none")]
    [InlineData("l2 channel gated none")]
    public void HeadsWhoseChannelGateLeavesTheFactorisedRangeAreExactToo(string configuration)
    {
        // Head 1 of every token gets gates near 0 (its chunks fall far below −60 and take the reverse recurrence); the
        // other heads stay in range (matrix products). Both kinds of item in one call.
        Random rng = TestData.Rng(653);
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, 70, 3, 1, 16, 16), LinearFormsTests.Parse(configuration, 3, 16), [31, 0, 39], qkScale: 0.5);
        int df = c.Config.FeatureDim;
        for (int t = 0; t < c.Shape.Tokens; t++)
            for (int i = 0; i < df; i++) c.Gate[((long)t * 3 + 1) * df + i] = -20f - i % 7;
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength), dST = TestData.Gaussian<float>(rng, c.Config.StateLength);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, dO, dST);
        float[] dq = TestData.Poisoned<float>(c.Q.Length), dk = TestData.Poisoned<float>(c.K.Length), dv = TestData.Poisoned<float>(c.V.Length);
        float[] dg = TestData.Poisoned<float>(c.Gate.Length), ds = TestData.Poisoned<float>(c.State.Length);
        LinearAttention.GatedBackward = GatedBackwardPath.MatrixProducts; // (Df = 16: the delta rule would otherwise take the recurrence)
        try
        {
            LinearAttention.Backward(c.Inputs, c.Options, dO, dST, new LinearGradients { Q = dq, K = dk, V = dv, Gate = dg, InitialState = ds });
        }
        finally { LinearAttention.GatedBackward = GatedBackwardPath.Auto; }
        foreach ((string name, float[] actual, double[] expected) in new[] { ("dq", dq, r.Q), ("dk", dk, r.K), ("dv", dv, r.V), ("dgate", dg, r.Gate), ("dS0", ds, r.InitialState) })
        {
            double e = TestData.RelativeError<float>(actual, expected);
            Assert.True(e < 2e-4, $"{name} error {e:E2}, {c}");
        }
    }

    [Theory]
    [InlineData("one")]
    [InlineData("zero")]
    public void LongSequencesWithExtremeGatesMatchTheReference(string regime)
    {
        // T = 4096 with gates near 1 (the state carries across 256 chunks) or near 0 (channel gates leave the factorised
        // range and take the reverse recurrence): both against the float64 reference, not only for finiteness.
        Random rng = TestData.Rng(659 + regime.Length);
        foreach (string configuration in new[] { "l2 scalar gated none", "identity channel additive none", "l2 channel gated none" })
        {
            LinearCase c = LinearCase.Create(rng, new LinearShape(1, 4096, 1, 1, 16, 16), LinearFormsTests.Parse(configuration, 1, 64), gateRegime: regime, qkScale: 1);
            AssertLongBackwardMatchesTheReference(rng, c, $"{regime} {configuration}");
        }
    }

    [Theory]
    [InlineData("identity channel additive none")]
    [InlineData("l2 channel gated none")]
    public void ChannelGatesJustAboveTheFactorisedLimitTakeTheMatrixProductsExactly(string configuration)
    {
        // Every key channel's gate sums to −54.5 … −56 inside each of the backward's 16-token chunks (Df = 16): just
        // above the −60 cut-off, so e^{−b} reaches ~e^{56} and the matrix products (not the reverse recurrence) run.
        Random rng = TestData.Rng(661 + configuration.Length);
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, 4096, 1, 1, 16, 16), LinearFormsTests.Parse(configuration, 1, 16), qkScale: 1);
        int df = c.Config.FeatureDim;
        for (int t = 0; t < c.Shape.Tokens; t++)
            for (int i = 0; i < df; i++) c.Gate[(long)t * df + i] = (-54.5f - 1.5f * i / (df - 1)) / 16f;
        Assert.Equal(16, df);
        AssertLongBackwardMatchesTheReference(rng, c, configuration, GatedBackwardPath.MatrixProducts);
    }

    [Fact]
    public void CheckpointsAboveTheRetainedSizeAreCallOwnedAndExact()
    {
        // With the retained size at 0 every call allocates its checkpoints for the call (the long-sequence path); the
        // result must match the reference as the retained path does, with GQA, varlen and several workers.
        Random rng = TestData.Rng(667);
        LinearCase c = LinearCase.Create(rng, new LinearShape(1, 300, 4, 2, 32, 24), LinearFormsTests.Parse("l2 channel gated none", 4, 16),
            [120, 0, 1, 179], "mid", qkScale: 0.5);
        long retained = Attend.Kernels.Cpu.Linear.ChunkedGatedBackwardKernel.RetainedCheckpointFloats;
        Attend.Kernels.Cpu.Linear.ChunkedGatedBackwardKernel.RetainedCheckpointFloats = 0;
        try { AssertLongBackwardMatchesTheReference(rng, c, "call-owned checkpoints", GatedBackwardPath.MatrixProducts); }
        finally { Attend.Kernels.Cpu.Linear.ChunkedGatedBackwardKernel.RetainedCheckpointFloats = retained; }
    }

    private static void AssertLongBackwardMatchesTheReference(Random rng, LinearCase c, string label, GatedBackwardPath path = GatedBackwardPath.Auto)
    {
        float[] dO = TestData.Gaussian<float>(rng, c.OutputLength);
        float[] dST = TestData.Gaussian<float>(rng, c.Config.StateLength);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(c.Inputs, c.Options, dO, dST);
        float[] dq = TestData.Poisoned<float>(c.Q.Length), dk = TestData.Poisoned<float>(c.K.Length), dv = TestData.Poisoned<float>(c.V.Length);
        float[] dg = TestData.Poisoned<float>(c.Gate.Length), ds = TestData.Poisoned<float>(c.State.Length);
        float[] db = TestData.Poisoned<float>(c.Beta.Length);
        LinearAttention.GatedBackward = path;
        try
        {
            LinearAttention.Backward(c.Inputs, c.Options, dO, dST,
                new LinearGradients { Q = dq, K = dk, V = dv, Gate = dg, Beta = c.Beta.Length > 0 ? db : null, InitialState = ds });
        }
        finally { LinearAttention.GatedBackward = GatedBackwardPath.Auto; }
        var pairs = new List<(string, float[], double[])> { ("dq", dq, r.Q), ("dk", dk, r.K), ("dv", dv, r.V), ("dgate", dg, r.Gate), ("dS0", ds, r.InitialState) };
        if (c.Beta.Length > 0) pairs.Add(("dbeta", db, r.Beta));
        foreach ((string name, float[] actual, double[] expected) in pairs)
        {
            double e = TestData.RelativeError<float>(actual, expected);
            Assert.True(e < 2e-4, $"{label}: {name} error {e:E2} against the reference, {c}");
        }
    }
}
