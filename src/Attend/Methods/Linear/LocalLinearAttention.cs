using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>Options of <see cref="LocalLinearAttention"/>; null fields take their defaults.</summary>
public sealed record LocalLinearAttentionOptions
{
    /// <summary>Ridge λ &gt; 0 on the local slope W (default 1). λ → ∞ gives softmax attention.</summary>
    public float? Lambda { get; init; }

    /// <summary>Score scale of the kernel weights; default 1/√Dk.</summary>
    public float? Scale { get; init; }

    /// <summary>Most threads to use (default: all cores).</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>
/// Local Linear Attention (Zuo, Yin, Zeng, Li, Zhu, Wang, 2025: "Local Linear Attention: An Optimal Interpolation of
/// Linear and Softmax Attention For Test-Time Regression"). Softmax attention is the Nadaraya–Watson (locally
/// constant) estimate of the value at the query from the key/value pairs; LLA fits a locally linear model instead. For
/// query i with weights s_ij = softmax_j(scale·q_i·k_j) over its causal prefix it solves
/// min_(b, W) Σ_j s_ij‖v_j − b − W(k_j − q_i)‖² + λ‖W‖²_F and outputs the intercept b, which is
/// o_i = v̄ + C·(Σ + λI)⁻¹·(q_i − k̄) with the weighted means k̄, v̄, the weighted key covariance
/// Σ = Σ_j s_ij (k_j − k̄)(k_j − k̄)ᵀ and cross-covariance C = Σ_j s_ij (v_j − v̄)(k_j − k̄)ᵀ. λ → ∞ gives softmax
/// attention back (W → 0, o = v̄).
/// </summary>
/// <remarks>
/// <para>Forms: the float64 definition (naive) and the float32 form (listed as <c>chunked</c>): every query row of every
/// sequence and head is an independent work item (longest rows first), which makes two passes over its prefix (weights
/// and means, then the centred covariances as two register-blocked products Σ = XᵀX and C = YᵀX with
/// X = √s ⊙ (K − k̄), Y = √s ⊙ (V − v̄), so no cancellation between Σ s·k·kᵀ and k̄·k̄ᵀ) and solves the Dk×Dk system
/// by a float64 Cholesky factorisation. Cost O(T²·Dk·(Dk + Dv)) per head, like the paper's direct algorithm.</para>
/// <para>Deviations from the paper: the kernel weights are the softmax weights themselves (normalised, so λ is relative
/// to a unit total weight); the ridge term is exactly λ‖W‖²_F; the system is solved exactly (Cholesky) rather than by
/// the paper's matrix-free conjugate gradient, and the FlashLLA blockwise tiling and its decode kernel are not
/// reproduced, so there is no recurrent form (LLA's state is the whole KV prefix, as softmax attention's is).
/// Grouped-query: key/value head h / (H / Hkv) serves query head h.</para>
/// </remarks>
public static unsafe partial class LocalLinearAttention
{
    /// <summary>LLA of <paramref name="q"/>, <paramref name="k"/>, <paramref name="v"/> into <paramref name="output"/> <c>[B, T, H, Dv]</c> (causal).</summary>
    /// <exception cref="ArgumentException">Mis-sized spans, or λ ≤ 0; the message names it.</exception>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        LocalLinearAttentionOptions? options, Span<float> output)
    {
        ArgumentNullException.ThrowIfNull(shape);
        options ??= new LocalLinearAttentionOptions();
        float lambda = options.Lambda ?? 1f;
        if (!(lambda > 0) || !float.IsFinite(lambda))
            throw new ArgumentOutOfRangeException(nameof(options), lambda, "Lambda must be finite and > 0 (the ridge keeps the local regression well posed).");
        shape.Validate(q.Length, k.Length, v.Length, output.Length);
        // Work items: (sequence, head, row), rows of every (sequence, head) listed longest first.
        var firstItem = new int[shape.Sequences + 1];
        for (int n = 0; n < shape.Sequences; n++) firstItem[n + 1] = firstItem[n] + shape.Length(n) * shape.Heads;
        fixed (float* pq = q, pk = k, pv = v, po = output)
        {
            var work = new RowWork
            {
                Shape = shape, Lambda = lambda, Scale = options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim), FirstItem = firstItem,
                Q = pq, K = pk, V = pv, O = po,
            };
            ParallelWork.Run(firstItem[^1], options.MaxThreads ?? Environment.ProcessorCount, work);
        }
    }

    private sealed class RowWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public required int[] FirstItem;
        public float Lambda, Scale;
        public float* Q, K, V, O;
        [ThreadStatic] private static double[]? t_system;

        public void Execute(int index)
        {
            int n = 0;
            while (FirstItem[n + 1] <= index) n++;
            int local = index - FirstItem[n], len = Shape.Length(n);
            int h = local % Shape.Heads, row = len - 1 - local / Shape.Heads, g = h / Shape.Group;
            int start = Shape.Start(n), dk = Shape.KeyDim, dv = Shape.ValueDim, count = row + 1;
            // The covariances are two products over the prefix, Σ = Xᵀ·X and C = Yᵀ·X with X = √s ⊙ (K − k̄) and
            // Y = √s ⊙ (V − v̄), done by the register-blocked TileGemm (its padding: rows to 4, columns to 4 vectors).
            int dkp = Round(dk, 4 * Width), dkr = Round(dk, 4), dvr = Round(dv, 4);
            long need = (long)count + 2L * dk + 2L * dv + (long)dkr * dkp + (long)dvr * dkp + (long)count * dkp + (long)(dkr + dvr) * count;
            float* buf = Scratch.Get(need);
            float* s = buf, kbar = s + count, diff = kbar + dk, vbar = diff + dk, dvv = vbar + dv;
            float* sigma = dvv + dv, cross = sigma + (long)dkr * dkp, x = cross + (long)dvr * dkp, xt = x + (long)count * dkp, yt = xt + (long)dkr * count;
            var qi = new ReadOnlySpan<float>(Q + Shape.Q(start + row, h), dk);
            Moments(Shape, K, V, start, g, Q + Shape.Q(start + row, h), count, Scale, s, kbar, vbar);
            Covariances(Shape, K, V, start, g, count, s, kbar, vbar, x, xt, yt, sigma, cross, dkp, dkr, dvr);

            // Solve (Σ + λI) z = q − k̄ in float64 (Cholesky; the matrix is symmetric positive definite for λ > 0).
            double[] a2 = t_system is { } cached && cached.Length >= dk * dk + 2 * dk ? cached : (t_system = new double[dk * dk + 2 * dk]);
            for (int r = 0; r < dk; r++)
                for (int c = r; c < dk; c++) a2[r * dk + c] = sigma[(long)r * dkp + c] + (r == c ? Lambda : 0);
            Span<double> z = a2.AsSpan(dk * dk, dk);
            for (int r = 0; r < dk; r++) z[r] = (double)qi[r] - kbar[r];
            CholeskySolve(a2, dk, z);
            var zf = new Span<float>(diff, dk);
            for (int r = 0; r < dk; r++) zf[r] = (float)z[r];
            var o2 = new Span<float>(O + Shape.O(start + row, h), dv);
            for (int o = 0; o < dv; o++) o2[o] = vbar[o] + TensorPrimitives.Dot(new ReadOnlySpan<float>(cross + (long)o * dkp, dk), zf);
        }

        internal static int Width => Isa512.IsSupported ? Isa512.Width : Isa256.IsSupported ? Isa256.Width : Isa128.Width;

        internal static int Round(int x, int to) => (x + to - 1) / to * to;

        /// <summary>Pass 1 of a query row: the softmax weights s of scale·q·k over the prefix and the weighted means k̄, v̄.</summary>
        internal static void Moments(LinearExtraShape shape, float* k, float* v, int start, int g, float* q, int count, float scale,
            float* s, float* kbar, float* vbar)
        {
            int dk = shape.KeyDim, dv = shape.ValueDim;
            var qi = new ReadOnlySpan<float>(q, dk);
            float max = float.NegativeInfinity;
            for (int j = 0; j < count; j++)
            {
                s[j] = scale * TensorPrimitives.Dot(qi, new ReadOnlySpan<float>(k + shape.K(start + j, g), dk));
                max = MathF.Max(max, s[j]);
            }
            var weights = new Span<float>(s, count);
            TensorPrimitives.Subtract(weights, max, weights);
            TensorPrimitives.Exp(weights, weights);
            TensorPrimitives.Multiply(weights, 1 / TensorPrimitives.Sum(weights), weights);
            var kb = new Span<float>(kbar, dk);
            var vb = new Span<float>(vbar, dv);
            kb.Clear();
            vb.Clear();
            for (int j = 0; j < count; j++)
            {
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(k + shape.K(start + j, g), dk), s[j], kb, kb);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(v + shape.V(start + j, g), dv), s[j], vb, vb);
            }
        }

        /// <summary>
        /// Pass 2: the centred, √s-weighted rows (X row-major and transposed, Y transposed; padding zero), then
        /// Σ = XᵀX <c>[dkr][dkp]</c> and C = YᵀX <c>[dvr][dkp]</c>.
        /// </summary>
        internal static void Covariances(LinearExtraShape shape, float* k, float* v, int start, int g, int count, float* s, float* kbar, float* vbar,
            float* x, float* xt, float* yt, float* sigma, float* cross, int dkp, int dkr, int dvr)
        {
            int dk = shape.KeyDim, dv = shape.ValueDim;
            new Span<float>(x, (int)((long)count * dkp)).Clear();
            new Span<float>(xt, (int)((long)(dkr + dvr) * count)).Clear();
            for (int j = 0; j < count; j++)
            {
                float r = MathF.Sqrt(s[j]);
                float* xj = x + (long)j * dkp, kj = k + shape.K(start + j, g), vj = v + shape.V(start + j, g);
                for (int c = 0; c < dk; c++)
                {
                    float e = r * (kj[c] - kbar[c]);
                    xj[c] = e;
                    xt[(long)c * count + j] = e;
                }
                for (int o = 0; o < dv; o++) yt[(long)o * count + j] = r * (vj[o] - vbar[o]);
            }
            Gemm(xt, count, x, dkp, sigma, dkp, dkr, dkp, count);
            Gemm(yt, count, x, dkp, cross, dkp, dvr, dkp, count);
        }

        // C[m, n] = A[m, k]·B[k, n] on the widest vectors the machine has.
        private static void Gemm(float* a, int lda, float* b, int ldb, float* c, int ldc, int m, int n, int k)
        {
            if (Isa512.IsSupported) TileGemm.MultiplyTransposed<Isa512, System.Runtime.Intrinsics.Vector512<float>>(a, lda, b, ldb, c, ldc, m, n, k);
            else if (Isa256.IsSupported) TileGemm.MultiplyTransposed<Isa256, System.Runtime.Intrinsics.Vector256<float>>(a, lda, b, ldb, c, ldc, m, n, k);
            else TileGemm.MultiplyTransposed<Isa128, System.Runtime.Intrinsics.Vector128<float>>(a, lda, b, ldb, c, ldc, m, n, k);
        }

        // In place: a (upper triangle, row-major d×d) becomes its Cholesky factor Rᵀ·R; b becomes a⁻¹·b.
        private static void CholeskySolve(double[] a, int d, Span<double> b)
        {
            Cholesky(a, d);
            CholeskySolveFactored(a, d, b);
        }

        /// <summary>In place: the upper triangle of a (row-major d×d, symmetric positive definite) becomes R with a = Rᵀ·R.</summary>
        internal static void Cholesky(double[] a, int d)
        {
            for (int j = 0; j < d; j++)
            {
                double diag = a[j * d + j];
                for (int p = 0; p < j; p++) diag -= a[p * d + j] * a[p * d + j];
                diag = Math.Sqrt(Math.Max(diag, double.Epsilon));
                a[j * d + j] = diag;
                for (int c = j + 1; c < d; c++)
                {
                    double x = a[j * d + c];
                    for (int p = 0; p < j; p++) x -= a[p * d + j] * a[p * d + c];
                    a[j * d + c] = x / diag;
                }
            }
        }

        /// <summary>b ← (RᵀR)⁻¹·b for the factor R that <see cref="Cholesky"/> left in a.</summary>
        internal static void CholeskySolveFactored(double[] a, int d, Span<double> b)
        {
            for (int r = 0; r < d; r++) // Rᵀ y = b
            {
                double x = b[r];
                for (int p = 0; p < r; p++) x -= a[p * d + r] * b[p];
                b[r] = x / a[r * d + r];
            }
            for (int r = d - 1; r >= 0; r--) // R z = y
            {
                double x = b[r];
                for (int c = r + 1; c < d; c++) x -= a[r * d + c] * b[c];
                b[r] = x / a[r * d + r];
            }
        }
    }
}

/// <summary>The float64 definition of <see cref="LocalLinearAttention"/> (Gaussian elimination with partial pivoting per query).</summary>
public static class LocalLinearAttentionReference
{
    /// <summary>Output <c>[B, T, H, Dv]</c> in float64.</summary>
    public static double[] Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, float lambda, float? scale)
    {
        ArgumentNullException.ThrowIfNull(shape);
        int dk = shape.KeyDim, dv = shape.ValueDim;
        double sc = scale ?? 1.0 / Math.Sqrt(dk);
        var output = new double[shape.OutputCount];
        for (int n = 0; n < shape.Sequences; n++)
        {
            int start = shape.Start(n);
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group;
                for (int i = 0; i < shape.Length(n); i++)
                {
                    var s = new double[i + 1];
                    for (int j = 0; j <= i; j++)
                    {
                        double dot = 0;
                        for (int x = 0; x < dk; x++) dot += (double)q[(int)shape.Q(start + i, h) + x] * k[(int)shape.K(start + j, g) + x];
                        s[j] = sc * dot;
                    }
                    AgentAttentionReference.Softmax(s);
                    var kb = new double[dk];
                    var vb = new double[dv];
                    for (int j = 0; j <= i; j++)
                    {
                        for (int x = 0; x < dk; x++) kb[x] += s[j] * k[(int)shape.K(start + j, g) + x];
                        for (int x = 0; x < dv; x++) vb[x] += s[j] * v[(int)shape.V(start + j, g) + x];
                    }
                    var a = new double[dk, dk + 1];
                    var c = new double[dv, dk];
                    for (int j = 0; j <= i; j++)
                        for (int x = 0; x < dk; x++)
                        {
                            double kx = k[(int)shape.K(start + j, g) + x] - kb[x];
                            for (int y = 0; y < dk; y++) a[x, y] += s[j] * kx * (k[(int)shape.K(start + j, g) + y] - kb[y]);
                            for (int o = 0; o < dv; o++) c[o, x] += s[j] * (v[(int)shape.V(start + j, g) + o] - vb[o]) * kx;
                        }
                    for (int x = 0; x < dk; x++) { a[x, x] += lambda; a[x, dk] = q[(int)shape.Q(start + i, h) + x] - kb[x]; }
                    double[] z = Solve(a, dk);
                    for (int o = 0; o < dv; o++)
                    {
                        double sum = vb[o];
                        for (int x = 0; x < dk; x++) sum += c[o, x] * z[x];
                        output[shape.O(start + i, h) + o] = sum;
                    }
                }
            }
        }
        return output;
    }

    // Gaussian elimination with partial pivoting on the augmented d×(d+1) matrix.
    private static double[] Solve(double[,] a, int d)
    {
        for (int col = 0; col < d; col++)
        {
            int pivot = col;
            for (int r = col + 1; r < d; r++) if (Math.Abs(a[r, col]) > Math.Abs(a[pivot, col])) pivot = r;
            for (int c = 0; c <= d; c++) (a[col, c], a[pivot, c]) = (a[pivot, c], a[col, c]);
            for (int r = col + 1; r < d; r++)
            {
                double f = a[r, col] / a[col, col];
                for (int c = col; c <= d; c++) a[r, c] -= f * a[col, c];
            }
        }
        var z = new double[d];
        for (int r = d - 1; r >= 0; r--)
        {
            double x = a[r, d];
            for (int c = r + 1; c < d; c++) x -= a[r, c] * z[c];
            z[r] = x / a[r, r];
        }
        return z;
    }
}

/// <summary>
/// <see cref="LocalLinearAttention"/> as a runnable method (forms naive and chunked; causal; no recurrent form and no
/// state: LLA, like softmax attention, reads its whole prefix). Inputs: <c>q</c>, <c>k</c>, <c>v</c>.
/// </summary>
public sealed class LocalLinearAttentionMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "local-linear-attention";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "linear", "method",
        "Local Linear Attention: An Optimal Interpolation of Linear and Softmax Attention For Test-Time Regression (Zuo et al., 2025)", ["cpu"], "implemented",
        "causal local linear regression at each query under softmax weights (ridge λ); λ → ∞ is softmax attention; O(T²·D²)")
    {
        Parameters =
        [
            LinearExtraMethods.FormParameter("chunked", "naive", "chunked"),
            new MethodParameter("lambda", "float", "1", "ridge on the local slope, > 0"),
            new MethodParameter("scale", "float", "1/sqrt(Dk)", "score scale of the kernel weights"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearExtraShape shape = LinearExtraShape.Of(inputs);
        string form = LinearExtraMethods.Form(arguments, "chunked", "naive", "chunked");
        float lambda = (float)arguments.GetDouble("lambda", 1, min: 1e-30);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        arguments.ThrowIfUnused(Name);
        var output = new float[shape.OutputCount];
        if (form == "naive")
        {
            double[] o = LocalLinearAttentionReference.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, lambda, scale);
            for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
        }
        else LocalLinearAttention.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, new LocalLinearAttentionOptions { Lambda = lambda, Scale = scale }, output);
        var result = new MethodResult(new MethodTensor(output, shape.Batch, shape.Tokens, shape.Heads, shape.ValueDim));
        result.Report.Add(new("form", form));
        return result;
    }
}
