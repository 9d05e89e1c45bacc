using System.Numerics.Tensors;

namespace Attend;

/// <summary>
/// Naive softmax attention in float64: the oracle every kernel is tested against. Forward returns the output and the
/// log-sum-exp (natural log); backward is the analytic gradient, with its own float64 forward (it never trusts a
/// kernel's saved LSE). Any mask, score mod, soft cap, grouped-query ratio and variable-length batch.
/// </summary>
/// <remarks>
/// Fully masked rows have output 0 and LSE −∞ (their gradients are 0). Cost is O(Tq·Tk·D) per head with no tiling:
/// meant for checking, not for speed.
/// </remarks>
public static class ReferenceAttention
{
    /// <summary>Forward attention in float64. Output is dense [B, Tq, H, D]; LSE is dense [B, H, Tq].</summary>
    public static unsafe ReferenceForwardResult Forward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v, AttentionOptions? options = null)
        where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        AttentionShape shape = AttentionShape.Validate(q, k, v, options);
        var result = new ReferenceForwardResult(
            new double[(long)shape.Batch * shape.QueryTokens * shape.Heads * shape.Dim],
            new double[(long)shape.Batch * shape.Heads * shape.QueryTokens]);
        fixed (T* pq = &q.GetPinnableReference())
        fixed (T* pk = &k.GetPinnableReference())
        fixed (T* pv = &v.GetPinnableReference())
        {
            var ctx = new ReferenceContext<T>(shape, Views.Of(q, pq), Views.Of(k, pk), Views.Of(v, pv), options);
            ctx.ForwardAll(result.Output, result.Lse);
        }
        return result;
    }

    /// <summary>
    /// Gradients of <c>Σ dO ⊙ attention(q, k, v)</c> in float64, dense, shaped like q, k and v.
    /// </summary>
    public static unsafe ReferenceBackwardResult Backward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        ReadOnlyTensorSpan<T> dO, AttentionOptions? options = null)
        where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        AttentionShape shape = AttentionShape.Validate(q, k, v, options);
        shape.RequireLike(dO, "dO", shape.QueryTokens, shape.Heads);
        var result = new ReferenceBackwardResult(
            new double[(long)shape.Batch * shape.QueryTokens * shape.Heads * shape.Dim],
            new double[(long)shape.Batch * shape.KeyTokens * shape.KvHeads * shape.Dim],
            new double[(long)shape.Batch * shape.KeyTokens * shape.KvHeads * shape.Dim]);
        fixed (T* pq = &q.GetPinnableReference())
        fixed (T* pk = &k.GetPinnableReference())
        fixed (T* pv = &v.GetPinnableReference())
        fixed (T* pdo = &dO.GetPinnableReference())
        {
            var ctx = new ReferenceContext<T>(shape, Views.Of(q, pq), Views.Of(k, pk), Views.Of(v, pv), options);
            ctx.BackwardAll(Views.Of(dO, pdo), result.DQ, result.DK, result.DV);
        }
        return result;
    }
}

/// <summary>Float64 forward result: output [B, Tq, H, D] and LSE [B, H, Tq], dense.</summary>
public sealed record ReferenceForwardResult(double[] Output, double[] Lse);

/// <summary>Float64 gradients, dense: dQ [B, Tq, H, D], dK and dV [B, Tk, Hkv, D].</summary>
public sealed record ReferenceBackwardResult(double[] DQ, double[] DK, double[] DV);
