using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>Options of <see cref="KernelizedRpe"/>; null fields take their defaults.</summary>
public sealed record KernelizedRpeOptions
{
    /// <summary>Score scale the random features approximate, exp(scale·q·k); default 1/√Dk.</summary>
    public float? Scale { get; init; }

    /// <summary>Causal (token i sees j ≤ i; default) or bidirectional, as in the paper's encoder experiments.</summary>
    public bool? Causal { get; init; }

    /// <summary>Most threads to use (default: all cores).</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>
/// Kernelized attention with relative positional encoding, computed by FFT (Luo et al.,
/// 2021: "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding").
/// z_i = Σ_j c_(j−i)·φ(q_i)ᵀφ(k_j)·v_j / Σ_j c_(j−i)·φ(q_i)ᵀφ(k_j), with c_d = exp(b_d) from a relative-position bias
/// b. The matrix C = [c_(j−i)] is Toeplitz, so for every random feature a and value column x the sums
/// Σ_j c_(j−i)·φ_a(k_j)·x_j are one Toeplitz matrix–vector product, computed in O(T log T) by embedding C in a
/// circulant of length L ≥ 2T − 1 (a power of two) and multiplying in the frequency domain
/// (<see cref="Kernels.Cpu.Fft"/>). The whole method is O(m·Dv·T log T) per head.
/// </summary>
/// <remarks>
/// <para>Feature map: positive random features (Performer's PRF, which the paper uses):
/// φ_a(x) = exp(w_aᵀx̃ − ‖x̃‖²/2) with x̃ = √scale·x and w_a rows of a Gaussian matrix W <c>[m, Dk]</c>, so that
/// E[φ(q)ᵀφ(k)] ∝ exp(scale·qᵀk). Queries subtract their row maximum and keys the maximum over their sequence before
/// the exponential, and the bias its maximum: each is a factor common to a numerator and its denominator, so the
/// output is unchanged (the 1/√m factor cancels the same way and is left out).</para>
/// <para>Deviations from the paper: W is one fixed draw (seeded; <see cref="RandomFeatures"/>), shared by all heads, not
/// redrawn during training and not orthogonalised; the method is causal by default (the paper's experiments are
/// bidirectional, <see cref="KernelizedRpeOptions.Causal"/> = false); when no bias is given,
/// <see cref="DefaultBias"/> uses ALiBi slopes, b_d = −slope_h·|d| (the paper learns b). The forms are the float64
/// quadratic definition (naive) and the FFT form (the method's parallel form, listed as <c>chunked</c>); a general
/// Toeplitz bias has no finite recurrent state, so there is no recurrent form. Grouped-query: the key/value head
/// h / (H / Hkv) serves query head h; the bias is per query head.</para>
/// <para>Bias layout <c>[H, 2R − 1]</c>: b_d for d = j − i ∈ (−R, R) at index d + R − 1, R ≥ the longest sequence.</para>
/// </remarks>
public static unsafe partial class KernelizedRpe
{
    /// <summary>A seeded Gaussian feature matrix <c>[m, Dk]</c> (Box–Muller on <see cref="Random"/>(seed)).</summary>
    public static float[] RandomFeatures(int features, int keyDim, int seed)
    {
        if (features < 1) throw new ArgumentOutOfRangeException(nameof(features), features, "Feature count m must be at least 1.");
        if (keyDim < 1) throw new ArgumentOutOfRangeException(nameof(keyDim), keyDim, "Key dim must be at least 1.");
        var rng = new Random(seed);
        var w = new float[features * keyDim];
        for (int i = 0; i < w.Length; i++)
            w[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return w;
    }

    /// <summary>The default bias <c>[H, 2R − 1]</c>: b_d = −slope_h·|d| with ALiBi slopes 2^(−8(h+1)/H).</summary>
    public static float[] DefaultBias(int heads, int radius)
    {
        if (heads < 1) throw new ArgumentOutOfRangeException(nameof(heads), heads, "Heads must be at least 1.");
        if (radius < 1) throw new ArgumentOutOfRangeException(nameof(radius), radius, "Radius must be at least 1.");
        int width = 2 * radius - 1;
        var bias = new float[heads * width];
        for (int h = 0; h < heads; h++)
        {
            double slope = Math.Pow(2, -8.0 * (h + 1) / heads);
            for (int i = 0; i < width; i++) bias[h * width + i] = (float)(-slope * Math.Abs(i - (radius - 1)));
        }
        return bias;
    }

    /// <summary>The FFT form into <paramref name="output"/> <c>[B, T, H, Dv]</c>.</summary>
    /// <param name="q">Queries <c>[B, T, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets; positions restart in every sequence).</param>
    /// <param name="features">Random feature matrix W <c>[m, Dk]</c>.</param>
    /// <param name="bias">Relative-position bias <c>[H, 2R − 1]</c>.</param>
    /// <param name="options">Scale, causality, threads.</param>
    /// <param name="output">Output <c>[B, T, H, Dv]</c>.</param>
    /// <exception cref="ArgumentException">Mis-sized spans, or a bias narrower than the longest sequence; the message names it.</exception>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        ReadOnlySpan<float> features, ReadOnlySpan<float> bias, KernelizedRpeOptions? options, Span<float> output)
    {
        options ??= new KernelizedRpeOptions();
        int m = CheckAndCount(k, v, shape, q, features, bias, output, out int radius);
        fixed (float* pq = q, pk = k, pv = v, pw = features, pb = bias, po = output)
        {
            var work = new FftWork
            {
                Shape = shape, Features = m, Radius = radius, Causal = options.Causal ?? true,
                RootScale = MathF.Sqrt(options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim)),
                Q = pq, K = pk, V = pv, W = pw, Bias = pb, O = po,
            };
            ParallelWork.Run(shape.Sequences * shape.Heads, options.MaxThreads ?? Environment.ProcessorCount, work);
        }
    }

    internal static int CheckAndCount(ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, ReadOnlySpan<float> q,
        ReadOnlySpan<float> features, ReadOnlySpan<float> bias, ReadOnlySpan<float> output, out int radius)
    {
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate(q.Length, k.Length, v.Length, output.Length);
        if (features.Length == 0 || features.Length % shape.KeyDim != 0)
            throw new ArgumentException($"features must be [m, Dk] with Dk = {shape.KeyDim}; it holds {features.Length} floats.", nameof(features));
        int width = bias.Length / shape.Heads;
        if (bias.Length % shape.Heads != 0 || width % 2 == 0)
            throw new ArgumentException($"bias must be [H, 2R − 1] with H = {shape.Heads}; it holds {bias.Length} floats.", nameof(bias));
        radius = (width + 1) / 2;
        if (radius < shape.MaxLength)
            throw new ArgumentException($"bias covers relative distances up to {radius - 1} but the longest sequence has {shape.MaxLength} tokens (needs R ≥ {shape.MaxLength}).", nameof(bias));
        return features.Length / shape.KeyDim;
    }

    // φ(x) rows for `count` tokens into phi [count, m], minus a stabiliser: the row maximum (queries) or the maximum
    // over all rows (keys). Returns nothing; the subtracted constants cancel in the ratio.
    internal static void FeatureMap(float* x, long rowStride, int count, int dk, float* w, int m, float rootScale, bool rowMax, float* phi)
    {
        float globalMax = float.NegativeInfinity;
        for (int t = 0; t < count; t++)
        {
            var xr = new ReadOnlySpan<float>(x + t * rowStride, dk);
            float half = 0.5f * rootScale * rootScale * TensorPrimitives.Dot(xr, xr);
            var row = new Span<float>(phi + (long)t * m, m);
            for (int a = 0; a < m; a++) row[a] = rootScale * TensorPrimitives.Dot(new ReadOnlySpan<float>(w + (long)a * dk, dk), xr) - half;
            float max = TensorPrimitives.Max(row);
            if (rowMax) { TensorPrimitives.Subtract(row, max, row); TensorPrimitives.Exp(row, row); }
            else globalMax = MathF.Max(globalMax, max);
        }
        if (rowMax || count == 0) return;
        var all = new Span<float>(phi, count * m);
        TensorPrimitives.Subtract(all, globalMax, all);
        TensorPrimitives.Exp(all, all);
    }

    [ThreadStatic] private static double[]? t_spectrum, t_work;

    private static double[] Doubles(ref double[]? cache, int length)
    {
        if (cache is null || cache.Length < length) cache = new double[Math.Max(length, (cache?.Length ?? 0) * 2)];
        return cache;
    }

    private sealed class FftWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public int Features, Radius;
        public bool Causal;
        public float RootScale;
        public float* Q, K, V, W, Bias, O;

        public void Execute(int index)
        {
            int n = index / Shape.Heads, h = index % Shape.Heads, g = h / Shape.Group;
            int len = Shape.Length(n), start = Shape.Start(n);
            if (len == 0) return;
            int m = Features, dk = Shape.KeyDim, dv = Shape.ValueDim, cols = dv + 1;
            int l = Fft.PaddedLength(2 * len - 1);
            Fft fft = Fft.For(l);
            long need = 2L * len * m + (long)len * cols;
            float* buf = Scratch.Get(need);
            float* phiQ = buf, phiK = phiQ + (long)len * m, num = phiK + (long)len * m;
            // The transforms run in float64 (see Fft): the circulant's spectrum and one work vector, per thread.
            double[] spectrum = Doubles(ref t_spectrum, 2 * l), work = Doubles(ref t_work, 2 * l);
            Span<double> kr = spectrum.AsSpan(0, l), ki = spectrum.AsSpan(l, l);

            // The circulant's first column: κ_e = c_(−e) for e ∈ [0, len) (j ≤ i), κ_(L−e) = c_e for e ∈ (0, len) (j > i).
            float* b = Bias + (long)h * (2 * Radius - 1) + (Radius - 1); // b[d] for d = j − i
            float bmax = float.NegativeInfinity;
            for (int e = 0; e < len; e++)
            {
                bmax = MathF.Max(bmax, b[-e]);
                if (!Causal) bmax = MathF.Max(bmax, b[e]);
            }
            spectrum.AsSpan(0, 2 * l).Clear();
            for (int e = 0; e < len; e++) kr[e] = Math.Exp(b[-e] - bmax);
            if (!Causal) for (int e = 1; e < len; e++) kr[l - e] = Math.Exp(b[e] - bmax);
            fft.Forward(kr, ki);

            FeatureMap(Q + Shape.Q(start, h), (long)Shape.Heads * dk, len, dk, W, m, RootScale, rowMax: true, phiQ);
            FeatureMap(K + Shape.K(start, g), (long)Shape.KvHeads * dk, len, dk, W, m, RootScale, rowMax: false, phiK);
            new Span<float>(num, len * cols).Clear();
            float* vBase = V + Shape.V(start, g);
            long vStride = (long)Shape.KvHeads * dv;
            Span<double> re = work.AsSpan(0, l), im = work.AsSpan(l, l);
            for (int a = 0; a < m; a++)
            {
                // Two value columns per complex transform (the circulant is real, so they stay apart); column dv is 1.
                for (int c0 = 0; c0 < cols; c0 += 2)
                {
                    int c1 = c0 + 1;
                    re.Clear();
                    im.Clear();
                    for (int j = 0; j < len; j++)
                    {
                        float f = phiK[(long)j * m + a];
                        re[j] = c0 < dv ? f * vBase[j * vStride + c0] : f;
                        if (c1 < cols) im[j] = c1 < dv ? f * vBase[j * vStride + c1] : f;
                    }
                    fft.Forward(re, im);
                    for (int s = 0; s < l; s++)
                    {
                        double r0 = re[s], i0 = im[s];
                        re[s] = r0 * kr[s] - i0 * ki[s];
                        im[s] = r0 * ki[s] + i0 * kr[s];
                    }
                    fft.Inverse(re, im);
                    for (int i = 0; i < len; i++)
                    {
                        float f = phiQ[(long)i * m + a];
                        num[(long)i * cols + c0] += f * (float)re[i];
                        if (c1 < cols) num[(long)i * cols + c1] += f * (float)im[i];
                    }
                }
            }
            float maxDen = 0;
            for (int i = 0; i < len; i++) maxDen = MathF.Max(maxDen, num[(long)i * cols + dv]);
            double[]? logK = null, weights = null, logQ = null;
            for (int i = 0; i < len; i++)
            {
                float den = num[(long)i * cols + dv];
                var row = new Span<float>(O + Shape.O(start + i, h), dv);
                // Trusted: a normaliser well above the transforms' rounding of the largest rows, and far above float32's
                // underflow (features at most 1, so a row of 1e-15 is made of products that float32 still holds exactly).
                if (den > MathF.Max(1e-8f * maxDen, 1e-15f) && float.IsFinite(den))
                {
                    TensorPrimitives.Divide(new ReadOnlySpan<float>(num + (long)i * cols, dv), den, row);
                    continue;
                }
                // The keys' features share one shift (the sequence's maximum), so a row whose own keys all sit far below
                // it (an early causal row at large inputs) gets a normaliser that underflows, or that the transforms'
                // rounding (relative to the largest rows) swamps. Such rows are computed directly, in the log domain.
                logK ??= LogFeatures(K + Shape.K(start, g), (long)Shape.KvHeads * dk, len, dk, W, m, RootScale);
                weights ??= new double[len];
                logQ ??= new double[m];
                LogFeatures(Q + Shape.Q(start + i, h), dk, W, m, RootScale, logQ);
                int keys = Causal ? i + 1 : len;
                LogWeights(logQ, logK, m, new ReadOnlySpan<float>(b - i, keys), weights.AsSpan(0, keys));
                for (int x = 0; x < dv; x++)
                {
                    double o = 0;
                    for (int j = 0; j < keys; j++) o += weights[j] * vBase[j * vStride + x];
                    row[x] = (float)o;
                }
            }
        }
    }

    // ℓ(x)_a = √s·ω_a·x − s·|x|²/2: the exponents of φ(x) = e^ℓ, kept as logs (float64) so that nothing under- or overflows.
    internal static void LogFeatures(float* x, int dk, float* w, int m, float rootScale, Span<double> logPhi)
    {
        double norm = 0;
        for (int i = 0; i < dk; i++) norm += (double)rootScale * x[i] * rootScale * x[i];
        for (int a = 0; a < m; a++)
        {
            double dot = 0;
            for (int i = 0; i < dk; i++) dot += (double)w[(long)a * dk + i] * rootScale * x[i];
            logPhi[a] = dot - norm / 2;
        }
    }

    internal static double[] LogFeatures(float* x, long rowStride, int count, int dk, float* w, int m, float rootScale)
    {
        var logPhi = new double[(long)count * m];
        for (int t = 0; t < count; t++) LogFeatures(x + t * rowStride, dk, w, m, rootScale, logPhi.AsSpan(t * m, m));
        return logPhi;
    }

    // The normalised weights of one row of the definition: log w_j = b_j + ln Σ_a e^(ℓq_a + ℓk_(j,a)), w = softmax(log w),
    // for the row's keys j (bias[j] = b_(j − i)). Log-sum-exps throughout: exact at any input scale.
    internal static void LogWeights(ReadOnlySpan<double> logQ, double[] logK, int m, ReadOnlySpan<float> bias, Span<double> weights)
    {
        double top = double.NegativeInfinity;
        for (int j = 0; j < weights.Length; j++)
        {
            double peak = double.NegativeInfinity;
            for (int a = 0; a < m; a++) peak = Math.Max(peak, logQ[a] + logK[(long)j * m + a]);
            double sum = 0;
            for (int a = 0; a < m; a++) sum += Math.Exp(logQ[a] + logK[(long)j * m + a] - peak);
            weights[j] = bias[j] + peak + Math.Log(sum);
            top = Math.Max(top, weights[j]);
        }
        double total = 0;
        for (int j = 0; j < weights.Length; j++) total += weights[j] = Math.Exp(weights[j] - top);
        for (int j = 0; j < weights.Length; j++) weights[j] /= total;
    }
}

/// <summary>
/// The float64 quadratic definition of <see cref="KernelizedRpe"/> (same feature map, direct sums), computed with log-sum-exps
/// over the feature exponents so that it stays exact at any input scale (plain exponentials underflow to 0/0 at inputs of
/// size ~20, where the definition still has a value).
/// </summary>
public static class KernelizedRpeReference
{
    /// <summary>Output <c>[B, T, H, Dv]</c> in float64.</summary>
    public static double[] Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        ReadOnlySpan<float> features, ReadOnlySpan<float> bias, float? scale, bool causal)
    {
        var output = new double[shape.OutputCount];
        int m = KernelizedRpe.CheckAndCount(k, v, shape, q, features, bias, new float[output.Length], out int radius);
        int dk = shape.KeyDim, dv = shape.ValueDim;
        double rs = Math.Sqrt(scale ?? 1.0 / Math.Sqrt(dk));
        float[] qa = q.ToArray(), ka = k.ToArray(), wa = features.ToArray();
        for (int n = 0; n < shape.Sequences; n++)
        {
            int len = shape.Length(n), start = shape.Start(n);
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group;
                double[] lq = LogPhi(qa, len, t => (int)shape.Q(start + t, h)), lk = LogPhi(ka, len, t => (int)shape.K(start + t, g));
                var weights = new double[len];
                for (int i = 0; i < len; i++)
                {
                    int keys = causal ? i + 1 : len;
                    // b_(j − i) for j = 0 … keys − 1 sits at index h·(2R − 1) + (j − i) + R − 1.
                    KernelizedRpe.LogWeights(lq.AsSpan(i * m, m), lk, m, bias.Slice(h * (2 * radius - 1) + radius - 1 - i, keys), weights.AsSpan(0, keys));
                    for (int x = 0; x < dv; x++)
                    {
                        double o = 0;
                        for (int j = 0; j < keys; j++) o += weights[j] * v[(int)shape.V(start + j, g) + x];
                        output[shape.O(start + i, h) + x] = o;
                    }
                }
            }
        }
        return output;

        // The feature exponents ℓ (φ = e^ℓ), kept as logs so the weights never under- or overflow.
        double[] LogPhi(float[] x, int len, Func<int, int> offset)
        {
            var logPhi = new double[len * m];
            for (int t = 0; t < len; t++)
            {
                int o = offset(t);
                double norm = 0;
                for (int i = 0; i < dk; i++) norm += rs * x[o + i] * rs * x[o + i];
                for (int a = 0; a < m; a++)
                {
                    double dot = 0;
                    for (int i = 0; i < dk; i++) dot += (double)wa[a * dk + i] * rs * x[o + i];
                    logPhi[t * m + a] = dot - norm / 2;
                }
            }
            return logPhi;
        }
    }
}

/// <summary>
/// <see cref="KernelizedRpe"/> as a runnable method (forms naive and chunked = the FFT form; no state). Inputs:
/// <c>q</c>, <c>k</c>, <c>v</c>, optional <c>features</c> <c>[m, Dk]</c> (default: a seeded Gaussian draw) and
/// <c>rpe</c> <c>[H, 2R − 1]</c> (default: ALiBi-slope biases).
/// </summary>
public sealed class KernelizedRpeMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "kernelized-rpe";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "linear", "method",
        "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding (Luo et al., 2021)", ["cpu"], "implemented",
        "random-feature kernelized attention with a Toeplitz relative-position bias applied by FFT, O(m·Dv·T log T) (inputs features [m,Dk], rpe [H,2R-1])")
    {
        Parameters =
        [
            LinearExtraMethods.FormParameter("chunked", "naive", "chunked"),
            new MethodParameter("features", "int", "64", "random features m (when no features input is given)"),
            new MethodParameter("seed", "int", "0", "seed of the random feature draw"),
            new MethodParameter("causal", "bool", "true", "causal, or bidirectional as in the paper"),
            new MethodParameter("scale", "float", "1/sqrt(Dk)", "score scale the features approximate"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearExtraShape shape = LinearExtraShape.Of(inputs);
        string form = LinearExtraMethods.Form(arguments, "chunked", "naive", "chunked");
        int m = arguments.GetInt("features", 64, min: 1, max: 4096);
        int seed = arguments.GetInt("seed", 0);
        bool causal = arguments.GetBool("causal", true);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0, min: double.Epsilon) : null;
        arguments.ThrowIfUnused(Name);

        float[] features = inputs.Find("features")?.Data ?? KernelizedRpe.RandomFeatures(m, shape.KeyDim, seed);
        if (inputs.Find("features") is { } f && (f.Shape.Count != 2 || f.Dim(1) != shape.KeyDim))
            throw new ArgumentException($"Input 'features' must be [m, Dk] with Dk = {shape.KeyDim}; got {f}.", "features");
        MethodTensor? rpe = inputs.Find("rpe");
        if (rpe is not null && (rpe.Shape.Count != 2 || rpe.Dim(0) != shape.Heads || rpe.Dim(1) % 2 == 0 || (rpe.Dim(1) + 1) / 2 < shape.MaxLength))
            throw new ArgumentException($"Input 'rpe' must be [H, 2R − 1] with H = {shape.Heads} and R ≥ {shape.MaxLength}; got {rpe}.", "rpe");
        float[] bias = rpe?.Data ?? KernelizedRpe.DefaultBias(shape.Heads, Math.Max(1, shape.MaxLength));
        var output = new float[shape.OutputCount];
        if (form == "naive")
        {
            double[] o = KernelizedRpeReference.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, features, bias, scale, causal);
            for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
        }
        else KernelizedRpe.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, features, bias,
            new KernelizedRpeOptions { Scale = scale, Causal = causal }, output);
        var result = new MethodResult(new MethodTensor(output, shape.Batch, shape.Tokens, shape.Heads, shape.ValueDim));
        result.Report.Add(new("form", form == "chunked" ? "chunked (FFT)" : form));
        return result;
    }
}
