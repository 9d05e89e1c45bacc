using System.Numerics;
using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// NaLaFormer (Meng, Luo, Huo, Wang, Li, Zhang, "NaLaFormer: Norm-Aware Linear Attention for Transformer Models", 2025):
/// linear attention whose kernel splits q and k into norm and direction. The direction goes through a non-negative,
/// norm-preserving map in which opposite-signed components never meet (cosine inhibition); the norm sets the map's
/// spikiness, so the query norm — which the L1 denominator would cancel — again controls the entropy of the weights.
/// Here: <c>φ(x) = ψ(x/‖x‖; p(‖x‖))</c>, <c>ψ(u; p) = [u₊^p, u₋^p] / ‖[u₊^p, u₋^p]‖₂</c> (width 2·Dk, unit norm,
/// non-negative), <c>p(r) = 1 + λ·tanh(r)</c>, then the running L1 denominator.
/// Deviations: the paper's exact kernel (its power function of the norm and its cosine-based map) could not be read
/// from this machine; this is our reading of the abstract — the same three properties (norm-driven spikiness,
/// non-negativity, inhibition of opposite directions) in a simple closed form. The depthwise convolution on V
/// belongs to the layer.
/// </summary>
public sealed class NaLaFormerMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "nalaformer";

    /// <summary>The paper.</summary>
    public const string Paper = "NaLaFormer: Norm-Aware Linear Attention for Transformer Models (Meng et al., 2025)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "norm-aware kernel: direction map [u₊^p, u₋^p] with power p = 1 + λ tanh(‖x‖), L1 denominator")
    {
        Parameters = [FormParameter, ChunkParameter, new MethodParameter("lambda", "float", "2", "λ: how strongly the norm sharpens the map")],
    };

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        float lambda = (float)arguments.GetDouble("lambda", 2, 0, 16);
        return new LinearCall(new LinearAttentionOptions { FeatureMap = new NormAwareMap(lambda), Normalization = LinearNormalization.Denominator });
    }
}

/// <summary>NaLaFormer's norm-aware feature map as implemented here (see <see cref="NaLaFormerMethod"/>).</summary>
/// <param name="lambda">λ in p(r) = 1 + λ·tanh(r).</param>
public sealed class NormAwareMap(float lambda) : FeatureMap
{
    private const double Tiny = 1e-12;

    /// <inheritdoc />
    public override string Name => $"norm-aware(λ={lambda})";

    /// <inheritdoc />
    public override int OutputDim(int inputDim) => 2 * inputDim;

    /// <inheritdoc />
    public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
    {
        int d = x.Length;
        T r = Norm(x);
        if (r <= T.CreateTruncating(Tiny)) { y.Clear(); return; }
        T p = T.One + T.CreateTruncating(lambda) * T.Tanh(r);
        if (typeof(T) == typeof(float))
        {
            // The engine's path, vectorised: |u|^p for the whole row, then each value to its sign's slot.
            ReadOnlySpan<float> xf = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(x);
            Span<float> yf = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(y);
            Span<float> a = yf.Slice(d, d);
            System.Numerics.Tensors.TensorPrimitives.Abs(xf, a);
            System.Numerics.Tensors.TensorPrimitives.Multiply(a, 1f / float.CreateTruncating(r), a);
            System.Numerics.Tensors.TensorPrimitives.Pow(a, float.CreateTruncating(p), a);
            for (int i = 0; i < d; i++)
            {
                float ai = a[i];
                yf[i] = xf[i] > 0 ? ai : 0f;
                a[i] = xf[i] < 0 ? ai : 0f;
            }
            float norm = System.Numerics.Tensors.TensorPrimitives.Norm(yf[..(2 * d)]);
            System.Numerics.Tensors.TensorPrimitives.Multiply(yf[..(2 * d)], 1f / norm, yf[..(2 * d)]);
            return;
        }
        T z = T.Zero;
        for (int i = 0; i < d; i++)
        {
            T u = x[i] / r;
            T a = T.Pow(T.Abs(u), p);
            y[i] = u > T.Zero ? a : T.Zero;
            y[d + i] = u < T.Zero ? a : T.Zero;
            z += a * a;
        }
        z = T.Sqrt(z);
        for (int i = 0; i < 2 * d; i++) y[i] /= z;
    }

    /// <inheritdoc />
    public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int d = x.Length;
        T r = Norm(x);
        if (r <= T.CreateTruncating(Tiny)) { dx.Clear(); return; }
        T lam = T.CreateTruncating(lambda), th = T.Tanh(r);
        T p = T.One + lam * th;
        // a_i = |u_i|^p in its slot; y = a/‖a‖. da = (dy_slot − y (y·dy)) / ‖a‖.
        T z = T.Zero;
        for (int i = 0; i < d; i++) { T a = T.Pow(T.Abs(x[i] / r), p); z += a * a; }
        z = T.Sqrt(z);
        T ydy = T.Zero;
        for (int i = 0; i < d; i++)
        {
            T u = x[i] / r, a = T.Pow(T.Abs(u), p) / z;
            ydy += u > T.Zero ? a * dy[i] : u < T.Zero ? a * dy[d + i] : T.Zero;
        }
        T dp = T.Zero, udu = T.Zero;
        Span<T> du = dx; // reuse dx for du, then transform in place
        for (int i = 0; i < d; i++)
        {
            T u = x[i] / r, au = T.Abs(u);
            if (au == T.Zero) { du[i] = T.Zero; continue; }
            T a = T.Pow(au, p);
            T dyi = u > T.Zero ? dy[i] : dy[d + i];
            T da = (dyi - a / z * ydy) / z;
            du[i] = da * p * T.Pow(au, p - T.One) * (u > T.Zero ? T.One : -T.One);
            dp += da * a * T.Log(au);
            udu += u * du[i];
        }
        // u = x/r: dx = (du − u(u·du))/r; p(r): dx += dp·λ(1 − tanh²r)·u.
        T radial = dp * lam * (T.One - th * th);
        for (int i = 0; i < d; i++)
        {
            T u = x[i] / r;
            du[i] = (du[i] - u * udu) / r + radial * u;
        }
    }

    private static T Norm<T>(ReadOnlySpan<T> x) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T s = T.Zero;
        for (int i = 0; i < x.Length; i++) s += x[i] * x[i];
        return T.Sqrt(s);
    }
}
