namespace Attend;

/// <summary>
/// Cumulative token offsets of a packed variable-length batch (N+1 values, starting at 0, non-decreasing),
/// the form FlashAttention calls <c>cu_seqlens</c>. Sequence <c>n</c> owns tokens <c>[Offsets[n], Offsets[n+1])</c>.
/// </summary>
public sealed class SeqOffsets
{
    private readonly int[] _offsets;

    /// <summary>Creates offsets from N+1 cumulative values.</summary>
    /// <exception cref="ArgumentException">Fewer than two values, a first value other than 0, or a decreasing pair.</exception>
    public SeqOffsets(ReadOnlySpan<int> offsets)
    {
        if (offsets.Length < 2)
            throw new ArgumentException($"Sequence offsets need at least 2 values (N+1 for N sequences); got {offsets.Length}.", nameof(offsets));
        if (offsets[0] != 0)
            throw new ArgumentException($"Sequence offsets must start at 0; got {offsets[0]}.", nameof(offsets));
        for (int i = 1; i < offsets.Length; i++)
        {
            if (offsets[i] < offsets[i - 1])
                throw new ArgumentException($"Sequence offsets must not decrease; offsets[{i}] = {offsets[i]} < offsets[{i - 1}] = {offsets[i - 1]}.", nameof(offsets));
        }
        _offsets = offsets.ToArray();
    }

    /// <summary>Builds offsets from the length of each sequence.</summary>
    public static SeqOffsets FromLengths(ReadOnlySpan<int> lengths)
    {
        var offsets = new int[lengths.Length + 1];
        for (int i = 0; i < lengths.Length; i++)
        {
            if (lengths[i] < 0)
                throw new ArgumentException($"Sequence length {i} is negative ({lengths[i]}).", nameof(lengths));
            offsets[i + 1] = checked(offsets[i] + lengths[i]);
        }
        return new SeqOffsets(offsets);
    }

    /// <summary>Number of sequences N.</summary>
    public int Count => _offsets.Length - 1;

    /// <summary>Total number of tokens (the last offset).</summary>
    public int TotalTokens => _offsets[^1];

    /// <summary>The N+1 offsets.</summary>
    public ReadOnlySpan<int> Offsets => _offsets;

    /// <summary>First token of sequence <paramref name="sequence"/>.</summary>
    public int Start(int sequence) => _offsets[sequence];

    /// <summary>Number of tokens of sequence <paramref name="sequence"/>.</summary>
    public int Length(int sequence) => _offsets[sequence + 1] - _offsets[sequence];

    /// <summary>The longest sequence.</summary>
    public int MaxLength
    {
        get
        {
            int max = 0;
            for (int i = 0; i < Count; i++) max = Math.Max(max, Length(i));
            return max;
        }
    }

    /// <summary>Index of the sequence that holds <paramref name="token"/>, or -1 when it is outside [0, TotalTokens).</summary>
    public int SequenceOf(int token)
    {
        if ((uint)token >= (uint)TotalTokens) return -1;
        int lo = 0, hi = Count - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (_offsets[mid] <= token) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <inheritdoc/>
    public override string ToString() => "[" + string.Join(", ", _offsets) + "]";
}
