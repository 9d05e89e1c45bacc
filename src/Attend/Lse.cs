namespace Attend;

/// <summary>
/// The log-sum-exp algebra that joins partial softmax results. A partial result over a key set S is its normalised
/// output o_S and lse_S = ln Σ_{k∈S} exp(s_k) (natural log). Two disjoint partials combine exactly:
/// lse = ln(e^lse₁ + e^lse₂), o = e^(lse₁−lse)·o₁ + e^(lse₂−lse)·o₂. An empty partial has lse = −∞ and contributes
/// nothing; two empty partials give o = 0, lse = −∞.
/// </summary>
public static class Lse
{
    /// <summary>ln(e^<paramref name="lse1"/> + e^<paramref name="lse2"/>), exact for −∞ inputs.</summary>
    public static float Combine(float lse1, float lse2)
    {
        float max = MathF.Max(lse1, lse2);
        if (float.IsNegativeInfinity(max)) return float.NegativeInfinity;
        return max + MathF.Log(MathF.Exp(lse1 - max) + MathF.Exp(lse2 - max));
    }

    /// <summary>Merges two partial results of one row. <paramref name="output"/> may alias either input.</summary>
    /// <exception cref="ArgumentException">Rows of different lengths.</exception>
    public static void Merge(ReadOnlySpan<float> o1, float lse1, ReadOnlySpan<float> o2, float lse2, Span<float> output, out float lse)
    {
        if (o1.Length != o2.Length)
            throw new ArgumentException($"Partial outputs differ in length ({o1.Length} and {o2.Length}).", nameof(o2));
        if (output.Length != o1.Length)
            throw new ArgumentException($"The output has length {output.Length}; the partials have {o1.Length}.", nameof(output));
        if (float.IsNaN(lse1)) throw new ArgumentException("lse1 is NaN.", nameof(lse1));
        if (float.IsNaN(lse2)) throw new ArgumentException("lse2 is NaN.", nameof(lse2));
        float max = MathF.Max(lse1, lse2);
        if (float.IsNegativeInfinity(max))
        {
            lse = float.NegativeInfinity;
            output.Clear();
            return;
        }
        // Weights from the difference of the two LSEs (computed before any rounding of the merged LSE), so they stay
        // accurate when the LSEs are large: exp(lse₁ − lse) with a rounded lse ≈ 1e4 would be off by ~1e-3.
        float e = MathF.Exp(MathF.Min(lse1, lse2) - max);
        float big = 1f / (1f + e), small = e * big;
        (float w1, float w2) = lse1 >= lse2 ? (big, small) : (small, big);
        lse = max + MathF.Log(1f + e);
        for (int i = 0; i < output.Length; i++) output[i] = w1 * o1[i] + w2 * o2[i];
    }

    /// <summary>
    /// Merges two batches of partial results row by row: <paramref name="o1"/> and <paramref name="o2"/> hold
    /// N rows of D values, <paramref name="lse1"/> and <paramref name="lse2"/> N values. Outputs may alias inputs.
    /// </summary>
    /// <exception cref="ArgumentException">Lengths that do not describe the same N × D rows.</exception>
    public static void Merge(ReadOnlySpan<float> o1, ReadOnlySpan<float> lse1, ReadOnlySpan<float> o2, ReadOnlySpan<float> lse2,
        Span<float> output, Span<float> lse)
    {
        int rows = lse1.Length;
        if (rows == 0 || o1.Length % rows != 0)
            throw new ArgumentException($"o1 has {o1.Length} values, not a whole number of rows for {rows} LSE values.", nameof(o1));
        int d = o1.Length / rows;
        if (lse2.Length != rows) throw new ArgumentException($"lse2 has {lse2.Length} rows; lse1 has {rows}.", nameof(lse2));
        if (o2.Length != o1.Length) throw new ArgumentException($"o2 has {o2.Length} values; o1 has {o1.Length}.", nameof(o2));
        if (output.Length != o1.Length) throw new ArgumentException($"output has {output.Length} values; expected {o1.Length}.", nameof(output));
        if (lse.Length != rows) throw new ArgumentException($"lse has {lse.Length} rows; expected {rows}.", nameof(lse));
        for (int r = 0; r < rows; r++)
        {
            Merge(o1.Slice(r * d, d), lse1[r], o2.Slice(r * d, d), lse2[r], output.Slice(r * d, d), out float merged);
            lse[r] = merged;
        }
    }
}
