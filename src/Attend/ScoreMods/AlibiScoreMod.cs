using System.Numerics;

namespace Attend;

/// <summary>
/// ALiBi (Press et al., "Train Short, Test Long"): adds <c>−slope[h] · |q − k|</c> to the score, the symmetric form
/// FlashAttention applies (for causal masks only k ≤ q is seen, which is the paper's form).
/// </summary>
public readonly struct AlibiScoreMod : IScoreMod<AlibiScoreMod>
{
    private readonly float[] _slopes;

    /// <summary>Creates ALiBi with one slope per query head.</summary>
    /// <exception cref="ArgumentException">An empty or non-finite slope list.</exception>
    public AlibiScoreMod(ReadOnlySpan<float> slopes)
    {
        if (slopes.IsEmpty) throw new ArgumentException("ALiBi needs one slope per query head; got none.", nameof(slopes));
        foreach (float s in slopes)
            if (!float.IsFinite(s)) throw new ArgumentException($"ALiBi slopes must be finite; got {s}.", nameof(slopes));
        _slopes = slopes.ToArray();
    }

    /// <summary>Per-head slopes.</summary>
    public ReadOnlySpan<float> Slopes => _slopes;

    /// <summary>
    /// The paper's slopes for <paramref name="heads"/> heads: the geometric sequence starting at 2^(−8/n) for the
    /// largest power of two n ≤ heads, completed with every other slope of the sequence for 2n (the paper's rule for
    /// other head counts).
    /// </summary>
    public static AlibiScoreMod Standard(int heads)
    {
        if (heads < 1) throw new ArgumentOutOfRangeException(nameof(heads), heads, "ALiBi needs at least one head.");
        static double[] PowerOfTwo(int n)
        {
            double start = Math.Pow(2, -8.0 / n);
            var s = new double[n];
            for (int i = 0; i < n; i++) s[i] = Math.Pow(start, i + 1);
            return s;
        }
        int closest = 1 << (int)Math.Floor(Math.Log2(heads));
        var slopes = new List<double>(PowerOfTwo(closest));
        if (closest < heads)
        {
            double[] extra = PowerOfTwo(2 * closest);
            for (int i = 0; slopes.Count < heads; i += 2) slopes.Add(extra[i]);
        }
        var result = new float[heads];
        for (int i = 0; i < heads; i++) result[i] = (float)slopes[i];
        return new AlibiScoreMod(result);
    }

    /// <inheritdoc/>
    public T Apply<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> =>
        score - T.CreateTruncating(_slopes[head]) * T.CreateTruncating(Math.Abs(q - k));

    /// <inheritdoc/>
    public T Derivative<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> => T.One;

    /// <inheritdoc/>
    public bool IsIdentity => false;

    /// <inheritdoc/>
    public override string ToString() => "alibi";
}
