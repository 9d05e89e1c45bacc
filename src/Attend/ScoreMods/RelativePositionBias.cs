using System.Numerics;

namespace Attend;

/// <summary>
/// A learned relative-position bias table (T5, Raffel et al.): adds <c>table[h, bucket(k − q)]</c>, with T5's
/// buckets (half exact for small distances, the rest logarithmic up to <see cref="MaxDistance"/>; bidirectional
/// tables split the buckets between the two signs).
/// </summary>
public readonly struct RelativePositionBias : IScoreMod<RelativePositionBias>
{
    private readonly float[] _table;

    /// <summary>Creates the bias from a [heads, buckets] table (row-major).</summary>
    /// <exception cref="ArgumentException">A table whose size is not heads × buckets, or bad bucket parameters.</exception>
    public RelativePositionBias(ReadOnlySpan<float> table, int heads, int buckets = 32, int maxDistance = 128, bool bidirectional = true)
    {
        if (heads < 1) throw new ArgumentOutOfRangeException(nameof(heads), heads, "Need at least one head.");
        if (buckets < (bidirectional ? 4 : 2)) throw new ArgumentOutOfRangeException(nameof(buckets), buckets, "Too few buckets for the T5 scheme.");
        if (maxDistance < buckets) throw new ArgumentOutOfRangeException(nameof(maxDistance), maxDistance, "maxDistance must be ≥ the number of buckets.");
        if (table.Length != heads * buckets)
            throw new ArgumentException($"The bias table must have heads × buckets = {heads} × {buckets} = {heads * buckets} values; got {table.Length}.", nameof(table));
        _table = table.ToArray();
        Heads = heads;
        Buckets = buckets;
        MaxDistance = maxDistance;
        Bidirectional = bidirectional;
    }

    /// <summary>Query heads in the table.</summary>
    public int Heads { get; }

    /// <summary>Buckets per head.</summary>
    public int Buckets { get; }

    /// <summary>Distance beyond which all offsets share the last bucket.</summary>
    public int MaxDistance { get; }

    /// <summary>True when keys after the query have their own buckets.</summary>
    public bool Bidirectional { get; }

    /// <summary>The T5 bucket of relative offset <c>k − q</c>.</summary>
    public int Bucket(int relative)
    {
        int buckets = Buckets;
        int bucket = 0;
        int n;
        if (Bidirectional)
        {
            buckets /= 2;
            if (relative > 0) bucket += buckets;
            n = Math.Abs(relative);
        }
        else
        {
            n = Math.Max(-relative, 0);
        }
        int maxExact = buckets / 2;
        if (n < maxExact) return bucket + n;
        int large = maxExact + (int)(Math.Log((double)n / maxExact) / Math.Log((double)MaxDistance / maxExact) * (buckets - maxExact));
        return bucket + Math.Min(large, buckets - 1);
    }

    /// <inheritdoc/>
    public T Apply<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> =>
        score + T.CreateTruncating(_table[head * Buckets + Bucket(k - q)]);

    /// <inheritdoc/>
    public T Derivative<T>(T score, int batch, int head, int q, int k) where T : IFloatingPointIeee754<T> => T.One;

    /// <inheritdoc/>
    public bool IsIdentity => false;

    /// <inheritdoc/>
    public override string ToString() => $"relative-bias({Buckets} buckets)";
}
