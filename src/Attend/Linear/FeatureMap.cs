using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Attend.Linear;

/// <summary>
/// A feature map φ applied row by row to queries and keys (one head's <c>Dk</c> values at a time) before they meet the
/// state. Maps may widen the row (<see cref="OutputDim"/>) and may depend on the head (learned maps such as Hedgehog's).
/// Written once generically so the float32 engine and the float64 reference share the same definition.
/// </summary>
public abstract class FeatureMap
{
    /// <summary>Short name for reports (<c>identity</c>, <c>elu+1</c>, …).</summary>
    public abstract string Name { get; }

    /// <summary>The width Df of φ(x) for an input of width <paramref name="inputDim"/>.</summary>
    /// <exception cref="ArgumentException">The map cannot take rows of this width.</exception>
    public abstract int OutputDim(int inputDim);

    /// <summary>Writes φ(<paramref name="x"/>) of head <paramref name="head"/> into <paramref name="y"/> (length <see cref="OutputDim"/>).</summary>
    /// <param name="head">The query head (for keys: the key/value head's first query head).</param>
    /// <param name="isKey">True for keys, false for queries (maps such as NaLaFormer's treat them differently).</param>
    /// <param name="x">The input row.</param>
    /// <param name="y">The feature row.</param>
    public abstract void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y) where T : unmanaged, IFloatingPointIeee754<T>;

    /// <summary>Writes <c>J_φ(x)ᵀ dy</c> into <paramref name="dx"/> (overwriting it).</summary>
    public abstract void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) where T : unmanaged, IFloatingPointIeee754<T>;

    /// <inheritdoc/>
    public override string ToString() => Name;
}

/// <summary>The built-in feature maps.</summary>
public static class FeatureMaps
{
    /// <summary>φ(x) = x (GLA, RetNet, Lightning, the delta rules before their normalisation).</summary>
    public static FeatureMap Identity { get; } = new IdentityMap();

    /// <summary>φ(x) = elu(x) + 1 (Katharopoulos et al., 2020): positive, so the denominator never vanishes.</summary>
    public static FeatureMap EluPlusOne { get; } = new EluPlusOneMap();

    /// <summary>φ(x) = max(x, 0) (the ReLU kernel of TransNormer and many baselines).</summary>
    public static FeatureMap Relu { get; } = new ReluMap();

    /// <summary>φ(x) = x / ‖x‖₂ (DeltaNet's q/k normalisation, which keeps the delta rule's update contractive).</summary>
    public static FeatureMap L2Norm { get; } = new L2NormMap();

    /// <summary>
    /// Based's 2nd-order Taylor map of exp(q·k/√d): φ(x) = [1, x / d^¼, vec(x xᵀ) / (√2·√d)], width 1 + d + d², so
    /// φ(q)·φ(k) = 1 + q·k/√d + (q·k)²/(2d).
    /// </summary>
    public static FeatureMap Taylor2 { get; } = new Taylor2Map();

    private sealed class IdentityMap : FeatureMap
    {
        public override string Name => "identity";
        public override int OutputDim(int inputDim) => inputDim;
        public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y) => x.CopyTo(y);
        public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) => dy.CopyTo(dx);
    }

    private sealed class EluPlusOneMap : FeatureMap
    {
        public override string Name => "elu+1";
        public override int OutputDim(int inputDim) => inputDim;

        public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
        {
            if (typeof(T) == typeof(float))
            {
                // elu(x) + 1 = e^{min(x, 0)} + max(x, 0), vectorised.
                ReadOnlySpan<float> xf = MemoryMarshal.Cast<T, float>(x);
                Span<float> yf = MemoryMarshal.Cast<T, float>(y)[..xf.Length];
                Span<float> pos = xf.Length <= 1024 ? stackalloc float[xf.Length] : new float[xf.Length];
                TensorPrimitives.Min(xf, 0f, yf);
                TensorPrimitives.Exp(yf, yf);
                TensorPrimitives.Max(xf, 0f, pos);
                TensorPrimitives.Add(yf, pos, yf);
                return;
            }
            for (int i = 0; i < x.Length; i++) y[i] = x[i] > T.Zero ? x[i] + T.One : T.Exp(x[i]);
        }

        public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
        {
            for (int i = 0; i < x.Length; i++) dx[i] = x[i] > T.Zero ? dy[i] : dy[i] * T.Exp(x[i]);
        }
    }

    private sealed class ReluMap : FeatureMap
    {
        public override string Name => "relu";
        public override int OutputDim(int inputDim) => inputDim;

        public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
        {
            if (typeof(T) == typeof(float))
            {
                TensorPrimitives.Max(MemoryMarshal.Cast<T, float>(x), 0f, MemoryMarshal.Cast<T, float>(y)[..x.Length]);
                return;
            }
            for (int i = 0; i < x.Length; i++) y[i] = x[i] > T.Zero ? x[i] : T.Zero;
        }

        public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
        {
            for (int i = 0; i < x.Length; i++) dx[i] = x[i] > T.Zero ? dy[i] : T.Zero;
        }
    }

    private sealed class L2NormMap : FeatureMap
    {
        // ε inside the root keeps a zero row finite (it maps to zero), as the authors' l2norm does.
        private const double Epsilon = 1e-6;

        public override string Name => "l2norm";
        public override int OutputDim(int inputDim) => inputDim;

        public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
        {
            T inv = T.One / T.Sqrt(SumSquares(x) + T.CreateTruncating(Epsilon));
            for (int i = 0; i < x.Length; i++) y[i] = x[i] * inv;
        }

        public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
        {
            // y = x·r with r = (‖x‖² + ε)^-½: dx = r·dy − r³·x·(x·dy).
            T r = T.One / T.Sqrt(SumSquares(x) + T.CreateTruncating(Epsilon));
            T dot = T.Zero;
            for (int i = 0; i < x.Length; i++) dot += x[i] * dy[i];
            T c = r * r * r * dot;
            for (int i = 0; i < x.Length; i++) dx[i] = r * dy[i] - c * x[i];
        }

        private static T SumSquares<T>(ReadOnlySpan<T> x) where T : unmanaged, IFloatingPointIeee754<T>
        {
            T s = T.Zero;
            for (int i = 0; i < x.Length; i++) s += x[i] * x[i];
            return s;
        }
    }

    private sealed class Taylor2Map : FeatureMap
    {
        public override string Name => "taylor2";
        public override int OutputDim(int inputDim) => 1 + inputDim + inputDim * inputDim;

        public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
        {
            int d = x.Length;
            T first = T.One / T.Sqrt(T.Sqrt(T.CreateTruncating(d)));
            T second = T.One / T.Sqrt(T.CreateTruncating(2.0 * d));
            y[0] = T.One;
            for (int i = 0; i < d; i++) y[1 + i] = x[i] * first;
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) y[1 + d + i * d + j] = x[i] * x[j] * second;
        }

        public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
        {
            int d = x.Length;
            T first = T.One / T.Sqrt(T.Sqrt(T.CreateTruncating(d)));
            T second = T.One / T.Sqrt(T.CreateTruncating(2.0 * d));
            for (int i = 0; i < d; i++) dx[i] = dy[1 + i] * first;
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++)
                {
                    T g = dy[1 + d + i * d + j] * second;
                    dx[i] += g * x[j];
                    dx[j] += g * x[i];
                }
        }
    }
}
