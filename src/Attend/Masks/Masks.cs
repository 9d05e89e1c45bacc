namespace Attend;

/// <summary>Factories for the built-in masks and their combinations.</summary>
public static class Masks
{
    /// <summary>No masking.</summary>
    public static FullMask Full => default;

    /// <summary>Causal, bottom-right aligned.</summary>
    public static CausalMask Causal => default;

    /// <summary>Sliding window [q − left, q + right]; null sides are unbounded.</summary>
    public static SlidingWindowMask SlidingWindow(int? left, int? right) => new(left, right);

    /// <summary>Prefix LM: the first <paramref name="prefixLength"/> keys are bidirectional, the rest causal.</summary>
    public static PrefixLmMask PrefixLm(int prefixLength) => new(prefixLength);

    /// <summary>Block-causal chunks of <paramref name="chunkSize"/>.</summary>
    public static BlockCausalMask BlockCausal(int chunkSize) => new(chunkSize);

    /// <summary>Attention within documents packed at <paramref name="documents"/>.</summary>
    public static DocumentMask Document(SeqOffsets documents) => new(documents);

    /// <summary>Intersection of two masks.</summary>
    public static AndMask<TA, TB> And<TA, TB>(TA a, TB b) where TA : struct, IMaskMod<TA> where TB : struct, IMaskMod<TB> => new(a, b);

    /// <summary>Union of two masks.</summary>
    public static OrMask<TA, TB> Or<TA, TB>(TA a, TB b) where TA : struct, IMaskMod<TA> where TB : struct, IMaskMod<TB> => new(a, b);

    /// <summary>Complement of a mask.</summary>
    public static NotMask<TA> Not<TA>(TA a) where TA : struct, IMaskMod<TA> => new(a);
}
