using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>The backward pass of <see cref="KernelizedRpe"/>.</summary>
public static unsafe partial class KernelizedRpe
{
    /// <summary>
    /// Gradients of <c>L = Σ outputGradient·O</c> with respect to q, k, v and the relative-position bias (analytic, by
    /// FFT like the forward; each written only when its span is not empty; the random features W are a fixed draw and
    /// get none). With P = φ(q), F = φ(k), X = [v, 1], the Toeplitz C = [c_(j−i)] and, per feature a, R_a = C·(F_a ⊙ X):
    /// <code>
    ///   dN_i = [dO_i, −dO_i·o_i] / den_i                        (through the ratio num/den)
    ///   dP_ia = Σ_c dN_ic·R_a[i, c]                              (R_a recomputed by FFT)
    ///   Y_a = Cᵀ·(P_a ⊙ dN)                                     (the transposed Toeplitz product: conj of C's spectrum)
    ///   dF_ja = Σ_c X_jc·Y_a[j, c],   dX_jc = Σ_a F_ja·Y_a[j, c]
    ///   dc_d = Σ_(a,c) Σ_(j−i=d) (P_a ⊙ dN_c)_i (F_a ⊙ X_c)_j    (one cross-correlation, summed in the frequency domain)
    ///   db_d = c_d·dc_d,  dx = Σ_a dφ_a·φ_a·(√s·w_a − s·x)       (s the scale; the stabilising maxima cancel)
    /// </code>
    /// Work items are (sequence, key/value head), each owning its dk and dv rows; the bias gradient is summed over
    /// sequences after the items. Cost about three forwards (six transforms per feature and pair of value columns).
    /// </summary>
    /// <param name="q">Queries <c>[B, T, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets).</param>
    /// <param name="features">Random feature matrix W <c>[m, Dk]</c>.</param>
    /// <param name="bias">Relative-position bias <c>[H, 2R − 1]</c>.</param>
    /// <param name="options">Scale, causality, threads, as in the forward.</param>
    /// <param name="outputGradient">dL/dO <c>[B, T, H, Dv]</c>.</param>
    /// <param name="queryGradient">Receives dL/dq, or empty.</param>
    /// <param name="keyGradient">Receives dL/dk, or empty.</param>
    /// <param name="valueGradient">Receives dL/dv, or empty.</param>
    /// <param name="biasGradient">Receives dL/dbias <c>[H, 2R − 1]</c>, or empty.</param>
    /// <exception cref="ArgumentException">Mis-sized spans; the message names it.</exception>
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        ReadOnlySpan<float> features, ReadOnlySpan<float> bias, KernelizedRpeOptions? options, ReadOnlySpan<float> outputGradient,
        Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient, Span<float> biasGradient)
    {
        options ??= new KernelizedRpeOptions();
        int m = CheckAndCount(k, v, shape, q, features, bias, outputGradient, out int radius);
        CheckGradient(nameof(queryGradient), queryGradient.Length, shape.QueryCount, "[B, T, H, Dk]");
        CheckGradient(nameof(keyGradient), keyGradient.Length, shape.KeyCount, "[B, T, Hkv, Dk]");
        CheckGradient(nameof(valueGradient), valueGradient.Length, shape.ValueCount, "[B, T, Hkv, Dv]");
        CheckGradient(nameof(biasGradient), biasGradient.Length, bias.Length, "[H, 2R − 1]");
        // Written straight into the caller's spans (zeroed first: the items accumulate); pooled scratch for an absent one.
        using var dq = new GradientTarget(queryGradient, shape.QueryCount);
        using var dk = new GradientTarget(keyGradient, shape.KeyCount);
        using var dv = new GradientTarget(valueGradient, shape.ValueCount);
        int items = shape.Sequences * shape.KvHeads;
        // One bias gradient per item (its group's heads), summed after: items of different sequences share the bias.
        var db = new double[(long)items * shape.Group * (2 * radius - 1)];
        fixed (float* pq = q, pk = k, pv = v, pw = features, pb = bias, pdo = outputGradient, pdq = dq.Span, pdk = dk.Span, pdv = dv.Span)
        {
            var work = new FftBackwardWork
            {
                Shape = shape, Features = m, Radius = radius, Causal = options.Causal ?? true,
                RootScale = MathF.Sqrt(options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim)),
                Q = pq, K = pk, V = pv, W = pw, Bias = pb, DO = pdo, DQ = pdq, DK = pdk, DV = pdv, DBias = db,
            };
            ParallelWork.Run(items, options.MaxThreads ?? Environment.ProcessorCount, work);
        }
        if (!biasGradient.IsEmpty)
        {
            int width = 2 * radius - 1, group = shape.Group;
            var sum = new double[bias.Length];
            for (int item = 0; item < items; item++)
            {
                int g = item % shape.KvHeads;
                for (int j = 0; j < group; j++)
                    for (int x = 0; x < width; x++) sum[(long)(g * group + j) * width + x] += db[((long)item * group + j) * width + x];
            }
            for (int i = 0; i < sum.Length; i++) biasGradient[i] = (float)sum[i];
        }
    }

    private static void CheckGradient(string name, int length, long want, string layout)
    {
        if (length != 0 && length != want)
            throw new ArgumentException($"{name} holds {length} floats; {layout} needs {want} (or pass an empty span).", name);
    }

    // dx_t = √s·Wᵀ(dφ_t ⊙ φ_t) − s·x_t·Σ_a dφ_ta·φ_ta for `count` rows (x̃ = √s·x; the stabiliser is a constant factor).
    private static void FeatureMapBackward(float* x, long rowStride, int count, int dk, float* w, int m, float rootScale,
        float* phi, float* dphi, float* dx, long dxStride)
    {
        for (int t = 0; t < count; t++)
        {
            float* pr = phi + (long)t * m, dr = dphi + (long)t * m, xr = x + t * rowStride, dxr = dx + t * dxStride;
            var dxs = new Span<float>(dxr, dk);
            float total = 0;
            for (int a = 0; a < m; a++)
            {
                float f = dr[a] * pr[a];
                total += f;
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(w + (long)a * dk, dk), rootScale * f, dxs, dxs);
            }
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(xr, dk), -rootScale * rootScale * total, dxs, dxs);
        }
    }

    [ThreadStatic] private static double[]? t_backward;

    private sealed class FftBackwardWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public int Features, Radius;
        public bool Causal;
        public float RootScale;
        public float* Q, K, V, W, Bias, DO, DQ, DK, DV;
        public required double[] DBias;

        public void Execute(int index)
        {
            int n = index / Shape.KvHeads, g = index % Shape.KvHeads;
            int len = Shape.Length(n), start = Shape.Start(n);
            if (len == 0) return;
            int m = Features, dk = Shape.KeyDim, dv = Shape.ValueDim, cols = dv + 1, width = 2 * Radius - 1;
            int l = Fft.PaddedLength(2 * len - 1);
            Fft fft = Fft.For(l);
            long need = 4L * len * m + 3L * len * cols;
            float* buf = Scratch.Get(need);
            float* phiQ = buf, phiK = phiQ + (long)len * m, dPhiQ = phiK + (long)len * m, dPhiK = dPhiQ + (long)len * m;
            float* num = dPhiK + (long)len * m, dN = num + (long)len * cols, dX = dN + (long)len * cols;
            // Float64 work (see Fft): C's spectrum and its kernel, Ŵ, a work pair, Û and the correlation's accumulator.
            double[] d = Doubles(ref t_backward, 12 * l);
            Span<double> kr = d.AsSpan(0, l), ki = d.AsSpan(l, l), kappa = d.AsSpan(2 * l, l);
            Span<double> wr = d.AsSpan(3 * l, l), wi = d.AsSpan(4 * l, l), re = d.AsSpan(5 * l, l), im = d.AsSpan(6 * l, l);
            Span<double> ur = d.AsSpan(7 * l, l), ui = d.AsSpan(8 * l, l), sr = d.AsSpan(9 * l, l), si = d.AsSpan(10 * l, l);

            FeatureMap(K + Shape.K(start, g), (long)Shape.KvHeads * dk, len, dk, W, m, RootScale, rowMax: false, phiK);
            new Span<float>(dPhiK, len * m).Clear();
            new Span<float>(dX, len * cols).Clear();
            float* vBase = V + Shape.V(start, g);
            long vStride = (long)Shape.KvHeads * dv;
            float X(int j, int c) => c < dv ? vBase[j * vStride + c] : 1f;

            for (int jh = 0; jh < Shape.Group; jh++)
            {
                int h = g * Shape.Group + jh;
                float* b = Bias + (long)h * width + (Radius - 1); // b[d] for d = j − i
                float bmax = float.NegativeInfinity;
                for (int e = 0; e < len; e++)
                {
                    bmax = MathF.Max(bmax, b[-e]);
                    if (!Causal) bmax = MathF.Max(bmax, b[e]);
                }
                kr.Clear();
                ki.Clear();
                for (int e = 0; e < len; e++) kr[e] = Math.Exp(b[-e] - bmax);
                if (!Causal) for (int e = 1; e < len; e++) kr[l - e] = Math.Exp(b[e] - bmax);
                kr.CopyTo(kappa);
                fft.Forward(kr, ki);
                FeatureMap(Q + Shape.Q(start, h), (long)Shape.Heads * dk, len, dk, W, m, RootScale, rowMax: true, phiQ);

                // Pass 1: the forward's num (den in its last column), then dN.
                new Span<float>(num, len * cols).Clear();
                for (int a = 0; a < m; a++)
                    for (int c0 = 0; c0 < cols; c0 += 2)
                    {
                        int c1 = c0 + 1;
                        Load(re, im, phiK, a, c0, c1);
                        fft.Forward(re, im);
                        Multiply(re, im, kr, ki, conjugate: false);
                        fft.Inverse(re, im);
                        for (int i = 0; i < len; i++)
                        {
                            float f = phiQ[(long)i * m + a];
                            num[(long)i * cols + c0] += f * (float)re[i];
                            if (c1 < cols) num[(long)i * cols + c1] += f * (float)im[i];
                        }
                    }
                for (int i = 0; i < len; i++)
                {
                    float* ni = num + (long)i * cols, di = dN + (long)i * cols, doi = DO + Shape.O(start + i, h);
                    float inv = 1 / ni[dv], dot = 0;
                    for (int c = 0; c < dv; c++) { di[c] = doi[c] * inv; dot += doi[c] * ni[c] * inv; }
                    di[dv] = -dot * inv;
                }

                // Pass 2: per feature and pair of columns, R (for dP), Y = Cᵀ(P ⊙ dN) (for dF and dX) and the correlation.
                new Span<float>(dPhiQ, len * m).Clear();
                sr.Clear();
                si.Clear();
                for (int a = 0; a < m; a++)
                    for (int c0 = 0; c0 < cols; c0 += 2)
                    {
                        int c1 = c0 + 1;
                        bool two = c1 < cols;
                        Load(wr, wi, phiK, a, c0, c1);
                        fft.Forward(wr, wi);
                        wr.CopyTo(re);
                        wi.CopyTo(im);
                        Multiply(re, im, kr, ki, conjugate: false);
                        fft.Inverse(re, im);
                        for (int i = 0; i < len; i++)
                        {
                            float* di = dN + (long)i * cols;
                            float acc = di[c0] * (float)re[i];
                            if (two) acc += di[c1] * (float)im[i];
                            dPhiQ[(long)i * m + a] += acc;
                        }

                        ur.Clear();
                        ui.Clear();
                        for (int i = 0; i < len; i++)
                        {
                            float f = phiQ[(long)i * m + a];
                            ur[i] = f * dN[(long)i * cols + c0];
                            if (two) ui[i] = f * dN[(long)i * cols + c1];
                        }
                        fft.Forward(ur, ui);
                        // Σ_j U_(j+e)·conj(W_j): its real part is the sum over both packed columns of their correlations.
                        for (int s = 0; s < l; s++)
                        {
                            sr[s] += ur[s] * wr[s] + ui[s] * wi[s];
                            si[s] += ui[s] * wr[s] - ur[s] * wi[s];
                        }
                        Multiply(ur, ui, kr, ki, conjugate: true);
                        fft.Inverse(ur, ui);
                        for (int j = 0; j < len; j++)
                        {
                            float y0 = (float)ur[j], y1 = two ? (float)ui[j] : 0f, f = phiK[(long)j * m + a];
                            dPhiK[(long)j * m + a] += X(j, c0) * y0 + (two ? X(j, c1) * y1 : 0f);
                            dX[(long)j * cols + c0] += f * y0;
                            if (two) dX[(long)j * cols + c1] += f * y1;
                        }
                    }

                // dκ_e = Re IFFT(S)_e, and κ_e = c_(−e) (e < len) or c_(L−e) (bidirectional): db = c·dc.
                fft.Inverse(sr, si);
                long zero = ((long)index * Shape.Group + jh) * width + (Radius - 1); // index of d = 0
                for (int e = 0; e < len; e++) DBias[zero - e] += sr[e] * kappa[e];
                if (!Causal) for (int e = 1; e < len; e++) DBias[zero + e] += sr[l - e] * kappa[l - e];

                FeatureMapBackward(Q + Shape.Q(start, h), (long)Shape.Heads * dk, len, dk, W, m, RootScale, phiQ, dPhiQ,
                    DQ + Shape.Q(start, h), (long)Shape.Heads * dk);
            }

            FeatureMapBackward(K + Shape.K(start, g), (long)Shape.KvHeads * dk, len, dk, W, m, RootScale, phiK, dPhiK,
                DK + Shape.K(start, g), (long)Shape.KvHeads * dk);
            for (int j = 0; j < len; j++)
                new ReadOnlySpan<float>(dX + (long)j * cols, dv).CopyTo(new Span<float>(DV + Shape.V(start + j, g), dv));

            // Two value columns per complex transform: re = F_a ⊙ X_c0, im = F_a ⊙ X_c1 (zero past len and past the last column).
            void Load(Span<double> r, Span<double> i, float* phi, int a, int c0, int c1)
            {
                r.Clear();
                i.Clear();
                for (int j = 0; j < len; j++)
                {
                    float f = phi[(long)j * m + a];
                    r[j] = f * X(j, c0);
                    if (c1 < cols) i[j] = f * X(j, c1);
                }
            }
        }

        // (r + i·im) ← (r + i·im)·(kr ± i·ki): C's spectrum, or its conjugate for Cᵀ (C is real).
        private static void Multiply(Span<double> r, Span<double> i, Span<double> kr, Span<double> ki, bool conjugate)
        {
            for (int s = 0; s < r.Length; s++)
            {
                double a = r[s], b = i[s], c = kr[s], e = conjugate ? -ki[s] : ki[s];
                r[s] = a * c - b * e;
                i[s] = a * e + b * c;
            }
        }
    }
}
