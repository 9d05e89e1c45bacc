using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>The backward pass of <see cref="LocalLinearAttention"/>.</summary>
public static unsafe partial class LocalLinearAttention
{
    /// <summary>
    /// Gradients of <c>L = Σ outputGradient·O</c> with respect to q, k and v (analytic; each written only when its span
    /// is not empty). Per query row the forward is recomputed (weights s, means k̄, v̄, covariances Σ and C, the
    /// Cholesky factor of Σ + λI) and, with z = (Σ + λI)⁻¹(q − k̄), dz = Cᵀ·dO and y = (Σ + λI)⁻¹·dz:
    /// <code>
    ///   dq += y,                    (through q − k̄)
    ///   dk_j += s_j·(z·(dO·v_j°) − y·(z·k_j°) − z·(y·k_j°) − y),   dv_j += s_j·(1 + z·k_j°)·dO
    ///   ds_j  = (dO·v_j° − y·k_j°)·(z·k_j°) − y·k_j + dO·v_j,      then through the softmax of scale·q·k
    /// </code>
    /// (k° = k − k̄, v° = v − v̄). Σ and C do not depend on k̄ and v̄ to first order (Σ_j s_j·k_j° = 0), so the centring
    /// adds no term. Work items are (sequence, key/value head): each owns its dk and dv rows, so no two threads write
    /// the same gradient. Cost is the forward's, O(T²·Dk·(Dk + Dv)) per head.
    /// </summary>
    /// <param name="q">Queries <c>[B, T, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets).</param>
    /// <param name="options">λ, scale and threads, as in the forward.</param>
    /// <param name="outputGradient">dL/dO <c>[B, T, H, Dv]</c>.</param>
    /// <param name="queryGradient">Receives dL/dq, or empty.</param>
    /// <param name="keyGradient">Receives dL/dk, or empty.</param>
    /// <param name="valueGradient">Receives dL/dv, or empty.</param>
    /// <exception cref="ArgumentException">Mis-sized spans, or λ ≤ 0; the message names it.</exception>
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        LocalLinearAttentionOptions? options, ReadOnlySpan<float> outputGradient, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient)
    {
        ArgumentNullException.ThrowIfNull(shape);
        options ??= new LocalLinearAttentionOptions();
        float lambda = options.Lambda ?? 1f;
        if (!(lambda > 0) || !float.IsFinite(lambda))
            throw new ArgumentOutOfRangeException(nameof(options), lambda, "Lambda must be finite and > 0 (the ridge keeps the local regression well posed).");
        shape.Validate(q.Length, k.Length, v.Length, outputGradient.Length);
        CheckGradient(nameof(queryGradient), queryGradient.Length, shape.QueryCount, "[B, T, H, Dk]");
        CheckGradient(nameof(keyGradient), keyGradient.Length, shape.KeyCount, "[B, T, Hkv, Dk]");
        CheckGradient(nameof(valueGradient), valueGradient.Length, shape.ValueCount, "[B, T, Hkv, Dv]");
        // The caller's spans (zeroed first: the loop accumulates, and they may be poisoned); pooled scratch for an absent
        // gradient, so the loop needs no branches.
        using var dq = new GradientTarget(queryGradient, shape.QueryCount);
        using var dk = new GradientTarget(keyGradient, shape.KeyCount);
        using var dv = new GradientTarget(valueGradient, shape.ValueCount);
        fixed (float* pq = q, pk = k, pv = v, pdo = outputGradient, pdq = dq.Span, pdk = dk.Span, pdv = dv.Span)
        {
            var work = new BackwardWork
            {
                Shape = shape, Lambda = lambda, Scale = options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim),
                Q = pq, K = pk, V = pv, DO = pdo, DQ = pdq, DK = pdk, DV = pdv,
            };
            ParallelWork.Run(shape.Sequences * shape.KvHeads, options.MaxThreads ?? Environment.ProcessorCount, work);
        }
    }

    private static void CheckGradient(string name, int length, long want, string layout)
    {
        if (length != 0 && length != want)
            throw new ArgumentException($"{name} holds {length} floats; {layout} needs {want} (or pass an empty span).", name);
    }

    private sealed class BackwardWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public float Lambda, Scale;
        public float* Q, K, V, DO, DQ, DK, DV;
        [ThreadStatic] private static double[]? t_system;

        public void Execute(int index)
        {
            int n = index / Shape.KvHeads, g = index % Shape.KvHeads, len = Shape.Length(n), start = Shape.Start(n);
            if (len == 0) return;
            int dk = Shape.KeyDim, dv = Shape.ValueDim, w = RowWork.Width;
            int dkp = RowWork.Round(dk, 4 * w), dkr = RowWork.Round(dk, 4), dvr = RowWork.Round(dv, 4);
            long need = 2L * len + 4L * dk + 2L * dv + (long)dkr * dkp + (long)dvr * dkp + (long)len * dkp + (long)(dkr + dvr) * len;
            float* buf = Scratch.Get(need);
            float* s = buf, ds = s + len, kbar = ds + len, zf = kbar + dk, yf = zf + dk, tmp = yf + dk, vbar = tmp + dk, dov = vbar + dv;
            float* sigma = dov + dv, cross = sigma + (long)dkr * dkp, x = cross + (long)dvr * dkp, xt = x + (long)len * dkp, yt = xt + (long)dkr * len;
            double[] sys = t_system is { } cached && cached.Length >= dk * dk + 2 * dk ? cached : (t_system = new double[dk * dk + 2 * dk]);

            for (int j = 0; j < Shape.Group; j++)
            {
                int h = g * Shape.Group + j;
                for (int row = 0; row < len; row++)
                {
                    int count = row + 1;
                    float* qi = Q + Shape.Q(start + row, h), doi = DO + Shape.O(start + row, h), dqi = DQ + Shape.Q(start + row, h);
                    RowWork.Moments(Shape, K, V, start, g, qi, count, Scale, s, kbar, vbar);
                    RowWork.Covariances(Shape, K, V, start, g, count, s, kbar, vbar, x, xt, yt, sigma, cross, dkp, dkr, dvr);

                    // z = A⁻¹(q − k̄) and y = A⁻¹·Cᵀ·dO with one Cholesky factor of A = Σ + λI (float64).
                    for (int r = 0; r < dk; r++)
                        for (int c = r; c < dk; c++) sys[r * dk + c] = sigma[(long)r * dkp + c] + (r == c ? Lambda : 0);
                    RowWork.Cholesky(sys, dk);
                    Span<double> z = sys.AsSpan(dk * dk, dk), y = sys.AsSpan(dk * dk + dk, dk);
                    for (int r = 0; r < dk; r++)
                    {
                        z[r] = (double)qi[r] - kbar[r];
                        double acc = 0;
                        for (int o = 0; o < dv; o++) acc += (double)cross[(long)o * dkp + r] * doi[o];
                        y[r] = acc;
                    }
                    RowWork.CholeskySolveFactored(sys, dk, z);
                    RowWork.CholeskySolveFactored(sys, dk, y);
                    for (int r = 0; r < dk; r++) { zf[r] = (float)z[r]; yf[r] = (float)y[r]; dqi[r] += yf[r]; }

                    var zs = new ReadOnlySpan<float>(zf, dk);
                    var ys = new ReadOnlySpan<float>(yf, dk);
                    var dos = new ReadOnlySpan<float>(doi, dv);
                    var kc = new Span<float>(tmp, dk);
                    var vc = new Span<float>(dov, dv);
                    var kb = new ReadOnlySpan<float>(kbar, dk);
                    var vb = new ReadOnlySpan<float>(vbar, dv);
                    float sumSds = 0;
                    for (int t = 0; t < count; t++)
                    {
                        var kt = new ReadOnlySpan<float>(K + Shape.K(start + t, g), dk);
                        var vt = new ReadOnlySpan<float>(V + Shape.V(start + t, g), dv);
                        TensorPrimitives.Subtract(kt, kb, kc);
                        TensorPrimitives.Subtract(vt, vb, vc);
                        float zk = TensorPrimitives.Dot(zs, kc), yk = TensorPrimitives.Dot(ys, kc), dvc = TensorPrimitives.Dot(dos, vc);
                        float st = s[t];
                        // dk_t += s_t·(z·(dvc) − y·(zk + 1) − z·yk); dv_t += s_t·(1 + zk)·dO.
                        var dkt = new Span<float>(DK + Shape.K(start + t, g), dk);
                        TensorPrimitives.MultiplyAdd(zs, st * (dvc - yk), dkt, dkt);
                        TensorPrimitives.MultiplyAdd(ys, -st * (zk + 1), dkt, dkt);
                        var dvt = new Span<float>(DV + Shape.V(start + t, g), dv);
                        TensorPrimitives.MultiplyAdd(dos, st * (1 + zk), dvt, dvt);
                        ds[t] = (dvc - yk) * zk - TensorPrimitives.Dot(ys, kt) + TensorPrimitives.Dot(dos, vt);
                        sumSds += st * ds[t];
                    }
                    // Through s = softmax(scale·q·k): dl_t = s_t·(ds_t − Σ s·ds); dq += scale·Σ dl_t k_t, dk_t += scale·dl_t q.
                    var dqs = new Span<float>(dqi, dk);
                    var qs = new ReadOnlySpan<float>(qi, dk);
                    for (int t = 0; t < count; t++)
                    {
                        float dl = Scale * s[t] * (ds[t] - sumSds);
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(K + Shape.K(start + t, g), dk), dl, dqs, dqs);
                        var dkt = new Span<float>(DK + Shape.K(start + t, g), dk);
                        TensorPrimitives.MultiplyAdd(qs, dl, dkt, dkt);
                    }
                }
            }
        }
    }
}
