using System.Numerics.Tensors;

namespace Attend.Cli;

/// <summary>
/// Checks bench results against the float64 reference in the same run: sampled output rows for forward and decode,
/// and a full gradient comparison on a small problem of the same mask, heads and head dim for backward.
/// </summary>
internal static unsafe class ReferenceCheck
{
    /// <summary>
    /// max |o − ref| / max |ref| over <paramref name="rows"/> sampled (batch, token, head) rows of the output
    /// (the first and last query rows are always among them); +∞ when the output has a NaN.
    /// </summary>
    public static double SampledForward(float[] q, float[] k, float[] v, float[] o, BenchCase c, AttentionOptions options, int rows, int seed)
    {
        var rng = new Random(seed);
        int total = Math.Min(rows, c.B * c.H * c.Tq);
        var sampled = new float[total * c.D];
        var exact = new double[total * c.D];
        var refRow = new double[c.D];
        var scratch = new double[c.Tk];
        fixed (float* pq = q, pk = k, pv = v)
        {
            ReadOnlyTensorSpan<float> tq = AttentionLayout.Bthd<float>(q, c.B, c.Tq, c.H, c.D);
            ReadOnlyTensorSpan<float> tk = AttentionLayout.Bthd<float>(k, c.B, c.Tk, c.Hkv, c.D);
            ReadOnlyTensorSpan<float> tv = AttentionLayout.Bthd<float>(v, c.B, c.Tk, c.Hkv, c.D);
            AttentionShape shape = AttentionShape.Validate(tq, tk, tv, options);
            var reference = new ReferenceContext<float>(shape, Views.Of(tq, pq), Views.Of(tk, pk), Views.Of(tv, pv), options);
            for (int r = 0; r < total; r++)
            {
                int b = rng.Next(c.B), h = r % c.H;
                int t = r == 0 ? 0 : r == 1 ? c.Tq - 1 : rng.Next(c.Tq);
                reference.ForwardRow(b, h, t, refRow, scratch);
                long at = (((long)b * c.Tq + t) * c.H + h) * c.D;
                Array.Copy(o, at, sampled, (long)r * c.D, c.D);
                refRow.CopyTo(exact, r * c.D);
            }
        }
        return Fidelity.MaxRelativeError<float>(sampled, exact);
    }

    /// <summary>
    /// Runs forward and backward of <paramref name="c"/> (a small length) with the engine and with
    /// <see cref="ReferenceAttention.Backward{T}"/>; returns the worst relative error over dQ, dK and dV.
    /// </summary>
    public static double Backward(BenchCase c, AttentionOptions options, int seed)
    {
        float[] q = GaussianData.Create((long)c.B * c.Tq * c.H * c.D, seed);
        float[] k = GaussianData.Create((long)c.B * c.Tk * c.Hkv * c.D, seed + 1);
        float[] v = GaussianData.Create((long)c.B * c.Tk * c.Hkv * c.D, seed + 2);
        float[] dO = GaussianData.Create(q.LongLength, seed + 3);
        var o = new float[q.Length];
        var lse = new float[c.B * c.H * c.Tq];
        var dq = new float[q.Length];
        var dk = new float[k.Length];
        var dv = new float[v.Length];
        TensorSpan<float> Q(float[] a) => AttentionLayout.Bthd<float>(a, c.B, c.Tq, c.H, c.D);
        TensorSpan<float> KV(float[] a) => AttentionLayout.Bthd<float>(a, c.B, c.Tk, c.Hkv, c.D);
        Attention.Forward<float>(Q(q), KV(k), KV(v), options, Q(o), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        Attention.Backward<float>(Q(q), KV(k), KV(v), Q(o), Q(dO), AttentionLayout.Lse(lse, c.B, c.H, c.Tq), options, Q(dq), KV(dk), KV(dv));
        ReferenceBackwardResult expected = ReferenceAttention.Backward<float>(Q(q), KV(k), KV(v), Q(dO), options);
        return Math.Max(Compare(dq, expected.DQ), Math.Max(Compare(dk, expected.DK), Compare(dv, expected.DV)));
    }

    /// <summary>The project's error measure over whole arrays (<see cref="Fidelity.MaxRelativeError{T}"/>).</summary>
    public static double Compare(float[] actual, double[] expected) => Fidelity.MaxRelativeError<float>(actual, expected);
}
