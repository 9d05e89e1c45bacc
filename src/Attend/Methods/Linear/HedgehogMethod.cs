using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Hedgehog (Zhang, Bhatia, Kumbong, Ré, "The Hedgehog &amp; the Porcupine: Expressive Linear Attentions with Softmax
/// Mimicry", ICLR 2024): linear attention with a learnable feature map per head,
/// <c>φ(x) = [exp(Wx + b), exp(−(Wx + b))]</c> (width 2F), normalised by its running denominator, the map trained so
/// that the linear attention weights mimic softmax attention: <see cref="HedgehogDistillation"/> computes the
/// distillation loss (cross-entropy between the causal softmax weights and the normalised φ(q)ᵀφ(k) weights) and its
/// gradient with respect to W and b, and runs gradient steps.
/// Inputs <c>w</c> <c>[H, F, Dk]</c> and <c>b</c> <c>[H, F]</c> (optional; default W = I, b = 0, the authors' init).
/// Deviations: one linear layer per head (the authors' MLP is that same single layer with exp); plain gradient descent
/// in float64 on the given q/k instead of the authors' optimiser over a training corpus.
/// </summary>
public sealed class HedgehogMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "hedgehog";

    /// <summary>The paper.</summary>
    public const string Paper = "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry (Zhang et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "learnable exp feature map [exp(Wx+b), exp(-(Wx+b))] (inputs w [H,F,Dk], b [H,F]), distillation against softmax")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("distill", "int", "0", "gradient steps of softmax distillation on these q/k before running (0: use w, b as given)"),
            new MethodParameter("lr", "float", "0.05", "learning rate of the distillation steps"),
        ],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        int steps = arguments.GetInt("distill", 0, 0, 10000);
        double lr = arguments.GetDouble("lr", 0.05, 0, 100);
        int h = shape.Heads, dk = shape.KeyDim;
        MethodTensor? w = inputs.Find("w");
        int f = w is null ? dk : (w.Shape.Count == 3 && w.Dim(0) == h && w.Dim(2) == dk ? w.Dim(1)
            : throw new ArgumentException($"Input 'w' {w} must be [H = {h}, F, Dk = {dk}].", "w"));
        float[]? b = OptionalInput(inputs, "b", (long)h * f, $"[H = {h}, F = {f}]");
        var weights = new HedgehogWeights(h, f, dk, w?.Data, b);
        string report = "";
        if (steps > 0)
        {
            if (inputs.Offsets != null || shape.Batch != 1) throw new ArgumentException("distill needs one sequence (B = 1, no varlen).", "distill");
            double[] losses = HedgehogDistillation.Train(inputs.Q.Data, inputs.K.Data, shape, weights, steps, lr);
            report = $"loss {losses[0]:0.####} -> {losses[^1]:0.####} over {steps} steps";
        }
        return new LinearCall(new LinearAttentionOptions { FeatureMap = new HedgehogFeatureMap(weights), Normalization = LinearNormalization.Denominator })
        {
            After = report.Length == 0 ? null : (_, _, r) => r.Report.Add(new("distillation", report)),
        };
    }
}

/// <summary>Hedgehog's per-head map weights: W <c>[H, F, Dk]</c> and b <c>[H, F]</c>, in float64 (they are trained).</summary>
public sealed class HedgehogWeights
{
    /// <summary>Weights from the given arrays, or the identity init (W = I when F = Dk, b = 0).</summary>
    /// <exception cref="ArgumentException">Mismatched lengths, or no W with F ≠ Dk.</exception>
    public HedgehogWeights(int heads, int features, int inputDim, float[]? w = null, float[]? b = null)
    {
        Heads = heads; Features = features; InputDim = inputDim;
        W = new double[(long)heads * features * inputDim];
        B = new double[(long)heads * features];
        if (w is null)
        {
            if (features != inputDim) throw new ArgumentException($"Without w, F must equal Dk ({features} vs {inputDim}).", nameof(w));
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < features; i++) W[((long)h * features + i) * inputDim + i] = 1;
        }
        else
        {
            if (w.LongLength != W.LongLength) throw new ArgumentException($"w has {w.Length} values; [H, F, Dk] needs {W.Length}.", nameof(w));
            for (long i = 0; i < w.LongLength; i++) W[i] = w[i];
        }
        if (b != null)
        {
            if (b.LongLength != B.LongLength) throw new ArgumentException($"b has {b.Length} values; [H, F] needs {B.Length}.", nameof(b));
            for (long i = 0; i < b.LongLength; i++) B[i] = b[i];
        }
    }

    /// <summary>H.</summary>
    public int Heads { get; }

    /// <summary>F (the map's width is 2F).</summary>
    public int Features { get; }

    /// <summary>Dk.</summary>
    public int InputDim { get; }

    /// <summary>W <c>[H, F, Dk]</c>.</summary>
    public double[] W { get; }

    /// <summary>b <c>[H, F]</c>.</summary>
    public double[] B { get; }

    /// <summary>y = W_h x + b_h.</summary>
    internal void Project<T>(int head, ReadOnlySpan<T> x, Span<T> y) where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        for (int i = 0; i < Features; i++)
        {
            double s = B[(long)head * Features + i];
            long row = ((long)head * Features + i) * InputDim;
            for (int j = 0; j < InputDim; j++) s += W[row + j] * double.CreateTruncating(x[j]);
            y[i] = T.CreateTruncating(s);
        }
    }
}

/// <summary>
/// φ(x) = [exp(W_h x + b_h), exp(−(W_h x + b_h))], kept inside float range: a query whose largest exponent m = max_i
/// |W_h q + b_h|_i exceeds <see cref="QueryExponentLimit"/> has its features scaled by e^(−(m − 40)), and a key's exponents
/// are clipped at <see cref="KeyExponentLimit"/>.
/// </summary>
/// <remarks>
/// Below both limits the map is exactly the paper's (the earlier unguarded map gave the same numbers there). Above them
/// the plain map overflows float32 (e^88) or, through the state's sums of e^x·v and their products with φ(q), turns the
/// rows NaN (at inputs of size ~20). The query scale cancels in Hedgehog's denominator normalisation up to its ε = 1e-6,
/// whose weight grows by e^(m − 40) (negligible against φ(q)·z once the largest query feature is e^40); the key clip changes
/// the weight of a key only where its projection exceeds 30. Together they keep every product φ(q)ᵢφ(k)ᵢ ≤ e^70, so the sums
/// stay finite for T · F · |v| up to ~10^8. A trained Hedgehog map's projections sit far inside these limits.
/// </remarks>
/// <param name="weights">The per-head weights (float64, used by the reference; a float32 copy taken here serves the engine).</param>
public sealed class HedgehogFeatureMap(HedgehogWeights weights) : FeatureMap
{
    /// <summary>Largest query exponent kept as is; larger queries are scaled down to it (e^40 ≈ 2.4e17).</summary>
    public const double QueryExponentLimit = 40;

    /// <summary>Largest exponent of a key feature (e^30 ≈ 1.1e13).</summary>
    public const double KeyExponentLimit = 30;

    /// <summary>The scale exponent of a query whose largest |projection| is <paramref name="largest"/>: max(0, largest − 40).</summary>
    internal static double QueryShift(double largest) => Math.Max(0, largest - QueryExponentLimit);

    private readonly float[] _w = Array.ConvertAll(weights.W, x => (float)x);
    private readonly float[] _b = Array.ConvertAll(weights.B, x => (float)x);

    /// <inheritdoc />
    public override string Name => $"hedgehog(F={weights.Features})";

    /// <inheritdoc />
    public override int OutputDim(int inputDim) => inputDim == weights.InputDim
        ? 2 * weights.Features
        : throw new ArgumentException($"Hedgehog weights take Dk = {weights.InputDim}; got {inputDim}.", nameof(inputDim));

    /// <inheritdoc />
    public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
    {
        int f = weights.Features, dk = weights.InputDim;
        if (typeof(T) == typeof(float))
        {
            // The engine's path: float32 rows, vectorised dot products.
            ReadOnlySpan<float> xf = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(x);
            Span<float> yf = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(y);
            for (int i = 0; i < f; i++)
                yf[i] = _b[head * f + i] + System.Numerics.Tensors.TensorPrimitives.Dot(_w.AsSpan((head * f + i) * dk, dk), xf);
            System.Numerics.Tensors.TensorPrimitives.Negate(yf[..f], yf.Slice(f, f));
            Span<float> both = yf[..(2 * f)];
            if (isKey) System.Numerics.Tensors.TensorPrimitives.Min(both, (float)KeyExponentLimit, both);
            else
            {
                float scaleDown = (float)QueryShift(System.Numerics.Tensors.TensorPrimitives.Max(both));
                if (scaleDown > 0) System.Numerics.Tensors.TensorPrimitives.Subtract(both, scaleDown, both);
            }
            System.Numerics.Tensors.TensorPrimitives.Exp(both, both);
            return;
        }
        weights.Project(head, x, y[..f]);
        T limit = T.CreateTruncating(KeyExponentLimit), shift = T.Zero;
        if (!isKey)
        {
            for (int i = 0; i < f; i++) shift = T.Max(shift, T.Abs(y[i]));
            shift = T.CreateTruncating(QueryShift(double.CreateTruncating(shift)));
        }
        for (int i = 0; i < f; i++)
        {
            T p = y[i];
            y[i] = T.Exp(isKey ? T.Min(p, limit) : p - shift);
            y[f + i] = T.Exp(isKey ? T.Min(-p, limit) : -p - shift);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// The query scale's own derivative is left out: it moves φ(q) along itself, which the normalisation cancels (up to its
    /// ε), so the loss's gradient along it is 0. A clipped key exponent has derivative 0.
    /// </remarks>
    public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int f = weights.Features, dk = weights.InputDim;
        Span<T> y = f <= 256 ? stackalloc T[f] : new T[f];
        weights.Project(head, x, y);
        T limit = T.CreateTruncating(KeyExponentLimit), shift = T.Zero;
        if (!isKey)
        {
            for (int i = 0; i < f; i++) shift = T.Max(shift, T.Abs(y[i]));
            shift = T.CreateTruncating(QueryShift(double.CreateTruncating(shift)));
        }
        dx.Clear();
        for (int i = 0; i < f; i++)
        {
            T up = isKey ? (y[i] < limit ? T.Exp(y[i]) : T.Zero) : T.Exp(y[i] - shift);
            T down = isKey ? (-y[i] < limit ? T.Exp(-y[i]) : T.Zero) : T.Exp(-y[i] - shift);
            T g = dy[i] * up - dy[f + i] * down;
            long row = ((long)head * f + i) * dk;
            for (int j = 0; j < dk; j++) dx[j] += g * T.CreateTruncating(weights.W[row + j]);
        }
    }
}

/// <summary>
/// Hedgehog's softmax-mimicry training: for one sequence, per head, the loss
/// <c>L = (1/T) Σ_t Σ_{s≤t} p_ts (log p_ts − log a_ts)</c> (the paper's cross-entropy minus the teacher's constant
/// entropy, i.e. the KL divergence: same gradient, 0 at perfect mimicry) between causal softmax weights <c>p_ts ∝ exp(q_t·k_s/√Dk)</c> and the
/// linear weights <c>a_ts = φ(q_t)·φ(k_s) / Σ_{s'≤t} φ(q_t)·φ(k_s')</c>, with its exact gradient in W and b (float64).
/// </summary>
public static class HedgehogDistillation
{
    /// <summary>The loss (summed over heads) and, when wanted, its gradients <paramref name="dW"/>, <paramref name="dB"/> (shaped like the weights).</summary>
    /// <param name="q">Queries <c>[1, T, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[1, T, Hkv, Dk]</c>.</param>
    /// <param name="shape">Their dimensions (B = 1).</param>
    /// <param name="weights">The map weights.</param>
    /// <param name="dW">Receives dL/dW, or null.</param>
    /// <param name="dB">Receives dL/db, or null.</param>
    public static double Loss(ReadOnlySpan<float> q, ReadOnlySpan<float> k, LinearShape shape, HedgehogWeights weights, double[]? dW, double[]? dB)
    {
        ArgumentNullException.ThrowIfNull(weights);
        int t = shape.Tokens, dk = shape.KeyDim, f = weights.Features, group = shape.Heads / shape.KvHeads;
        if (dW != null) Array.Clear(dW);
        if (dB != null) Array.Clear(dB);
        double total = 0, scale = 1 / Math.Sqrt(dk);
        var yq = new double[t][]; var yk = new double[t][];
        var pq = new double[t][]; var pk = new double[t][];
        var x = new double[dk];
        for (int h = 0; h < shape.Heads; h++)
        {
            int hk = h / group;
            for (int i = 0; i < t; i++)
            {
                for (int j = 0; j < dk; j++) x[j] = q[(i * shape.Heads + h) * dk + j];
                yq[i] = new double[f]; weights.Project<double>(h, x, yq[i]);
                pq[i] = (double[])x.Clone();
                for (int j = 0; j < dk; j++) x[j] = k[(i * shape.KvHeads + hk) * dk + j];
                yk[i] = new double[f]; weights.Project<double>(h, x, yk[i]);
                pk[i] = (double[])x.Clone();
            }
            double[][] fq = Features(yq), fk = Features(yk);
            var gq = new double[t][]; var gk = new double[t][];
            for (int i = 0; i < t; i++) { gq[i] = new double[2 * f]; gk[i] = new double[2 * f]; }
            var a = new double[t]; var p = new double[t];
            for (int i = 0; i < t; i++)
            {
                double z = 0, m = double.NegativeInfinity, sp = 0;
                for (int s = 0; s <= i; s++)
                {
                    a[s] = Dot(fq[i], fk[s]); z += a[s];
                    p[s] = Dot(pq[i], pk[s]) * scale; m = Math.Max(m, p[s]);
                }
                for (int s = 0; s <= i; s++) { p[s] = Math.Exp(p[s] - m); sp += p[s]; }
                for (int s = 0; s <= i; s++)
                {
                    p[s] /= sp;
                    total += p[s] * (Math.Log(p[s]) - Math.Log(a[s] / z)) / t;
                    // dL/da_s = (−p_s/a_s + 1/z) / T.
                    double g = (-p[s] / a[s] + 1 / z) / t;
                    for (int c = 0; c < 2 * f; c++) { gq[i][c] += g * fk[s][c]; gk[s][c] += g * fq[i][c]; }
                }
            }
            if (dW == null && dB == null) continue;
            for (int i = 0; i < t; i++)
            {
                Accumulate(h, f, dk, yq[i], gq[i], pq[i], dW, dB);
                Accumulate(h, f, dk, yk[i], gk[i], pk[i], dW, dB);
            }
        }
        return total;
    }

    /// <summary>Runs <paramref name="steps"/> gradient-descent steps on <paramref name="weights"/> (in place); returns the loss before each step and after the last.</summary>
    public static double[] Train(ReadOnlySpan<float> q, ReadOnlySpan<float> k, LinearShape shape, HedgehogWeights weights, int steps, double learningRate)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var losses = new double[steps + 1];
        var dW = new double[weights.W.Length];
        var dB = new double[weights.B.Length];
        for (int s = 0; s < steps; s++)
        {
            losses[s] = Loss(q, k, shape, weights, dW, dB);
            for (int i = 0; i < dW.Length; i++) weights.W[i] -= learningRate * dW[i];
            for (int i = 0; i < dB.Length; i++) weights.B[i] -= learningRate * dB[i];
        }
        losses[steps] = Loss(q, k, shape, weights, null, null);
        return losses;
    }

    private static double[][] Features(double[][] y)
    {
        var r = new double[y.Length][];
        for (int i = 0; i < y.Length; i++)
        {
            int f = y[i].Length;
            r[i] = new double[2 * f];
            for (int c = 0; c < f; c++) { r[i][c] = Math.Exp(y[i][c]); r[i][f + c] = Math.Exp(-y[i][c]); }
        }
        return r;
    }

    private static void Accumulate(int h, int f, int dk, double[] y, double[] g, double[] x, double[]? dW, double[]? dB)
    {
        for (int c = 0; c < f; c++)
        {
            double gy = g[c] * Math.Exp(y[c]) - g[f + c] * Math.Exp(-y[c]);
            if (dB != null) dB[(long)h * f + c] += gy;
            if (dW != null)
            {
                long row = ((long)h * f + c) * dk;
                for (int j = 0; j < dk; j++) dW[row + j] += gy * x[j];
            }
        }
    }

    private static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
