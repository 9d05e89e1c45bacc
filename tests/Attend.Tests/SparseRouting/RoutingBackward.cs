using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

internal static class RoutingBackward
{
    /// <summary>Attention.Backward on the plan's mask equals ReferenceAttention.Backward on the same mask.</summary>
    public static void AssertMatchesReference(RoutingProblem p, SparsePlan plan)
    {
        Random rng = TestData.Rng(77);
        float[] dO = TestData.Gaussian<float>(rng, p.Q.Length);
        AttentionOptions options = plan.Options();
        var (o, lse) = p.Run(plan);
        float[] dq = TestData.Poisoned<float>(p.Q.Length), dk = TestData.Poisoned<float>(p.K.Length), dv = TestData.Poisoned<float>(p.V.Length);
        Attention.Backward<float>(AttentionLayout.Bthd<float>(p.Q, p.B, p.T, p.H, p.D), AttentionLayout.Bthd<float>(p.K, p.B, p.Tk, p.Hkv, p.D),
            AttentionLayout.Bthd<float>(p.V, p.B, p.Tk, p.Hkv, p.Dv), AttentionLayout.Bthd<float>(o, p.B, p.T, p.H, p.Dv),
            AttentionLayout.Bthd<float>(dO, p.B, p.T, p.H, p.Dv), AttentionLayout.Lse(lse, p.B, p.H, p.T), options,
            AttentionLayout.Bthd<float>(dq, p.B, p.T, p.H, p.D), AttentionLayout.Bthd<float>(dk, p.B, p.Tk, p.Hkv, p.D),
            AttentionLayout.Bthd<float>(dv, p.B, p.Tk, p.Hkv, p.Dv));
        ReferenceBackwardResult r = ReferenceAttention.Backward<float>(AttentionLayout.Bthd<float>(p.Q, p.B, p.T, p.H, p.D),
            AttentionLayout.Bthd<float>(p.K, p.B, p.Tk, p.Hkv, p.D), AttentionLayout.Bthd<float>(p.V, p.B, p.Tk, p.Hkv, p.Dv),
            AttentionLayout.Bthd<float>(dO, p.B, p.T, p.H, p.Dv), options);
        // Gradients sum many terms: compare against a floor of the gradient's own scale.
        Assert.True(Fidelity.MaxRelativeError<float>(dq, r.DQ, 1e-3) < 1e-3, $"dQ; {p}");
        Assert.True(Fidelity.MaxRelativeError<float>(dk, r.DK, 1e-3) < 1e-3, $"dK; {p}");
        Assert.True(Fidelity.MaxRelativeError<float>(dv, r.DV, 1e-3) < 1e-3, $"dV; {p}");
    }
}
