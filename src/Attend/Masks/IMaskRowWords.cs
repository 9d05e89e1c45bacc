namespace Attend;

/// <summary>
/// Optional fast path of a mask: the visibility of 64 consecutive keys for one query as one 64-bit word, so a kernel
/// plan that carries per-row mask words (the CUDA flash kernel's partial blocks) builds them at a word per row rather
/// than 64 <see cref="IMaskMod.IsVisible"/> calls. Must agree bit for bit with <see cref="IMaskMod.IsVisible"/>.
/// </summary>
public interface IMaskRowWords
{
    /// <summary>
    /// Bit j set when query position <paramref name="q"/> sees key <paramref name="k0"/> + j (j = 0 … 63), exactly as
    /// <see cref="IMaskMod.IsVisible"/> answers for (<paramref name="batch"/>, <paramref name="head"/>, q, k0 + j).
    /// </summary>
    /// <param name="batch">Batch entry (or varlen sequence).</param>
    /// <param name="head">Query head.</param>
    /// <param name="q">Query position (key axis, bottom-right aligned; may be negative).</param>
    /// <param name="k0">First key, a multiple of 64 (≥ 0).</param>
    /// <param name="candidates">The bits the caller wants (keys inside the sequence and the block); bits outside it may
    /// come back either way, and an implementation that evaluates <see cref="IMaskMod.IsVisible"/> per key (a combination
    /// such as <see cref="AndMask{TA, TB}"/>) must evaluate it only there: a mask need not answer for keys past the end.</param>
    /// <exception cref="ArgumentException">Implementations that read 64-key words may refuse a <paramref name="k0"/> that is not a multiple of 64.</exception>
    ulong RowWord(int batch, int head, int q, int k0, ulong candidates);
}

/// <summary>Row words of any mask: its own <see cref="IMaskRowWords"/> when it has one, else one <see cref="IMaskMod.IsVisible"/> per bit.</summary>
public static class MaskRowWords
{
    /// <summary>
    /// Bits of keys [<paramref name="k0"/>, <paramref name="k0"/> + 64) that query position <paramref name="q"/> sees,
    /// evaluated only where <paramref name="candidates"/> is set (the rest are 0). <paramref name="words"/> is
    /// <paramref name="mask"/> boxed as <see cref="IMaskRowWords"/> (box it once per plan, not per row), or null.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="k0"/> negative or not a multiple of 64.</exception>
    public static ulong Row<TMask>(in TMask mask, IMaskRowWords? words, int batch, int head, int q, int k0, ulong candidates = ulong.MaxValue)
        where TMask : struct, IMaskMod<TMask>
    {
        if (k0 < 0 || (k0 & 63) != 0) throw new ArgumentException($"The first key of a row word must be a multiple of 64 ≥ 0; got {k0}.", nameof(k0));
        if (candidates == 0) return 0;
        if (words is not null) return words.RowWord(batch, head, q, k0, candidates) & candidates;
        ulong word = 0;
        for (ulong rest = candidates; rest != 0; rest &= rest - 1)
        {
            int j = System.Numerics.BitOperations.TrailingZeroCount(rest);
            if (mask.IsVisible(batch, head, q, k0 + j)) word |= 1UL << j;
        }
        return word;
    }

    /// <summary>Bits j with k0 + j ≤ q (the causal part of a row word).</summary>
    public static ulong AtMost(int q, int k0)
    {
        long n = (long)q - k0 + 1; // keys k0 … q
        return n <= 0 ? 0 : n >= 64 ? ulong.MaxValue : (1UL << (int)n) - 1;
    }

    /// <summary>Bits j with lo ≤ k0 + j &lt; hi.</summary>
    public static ulong Range(long lo, long hi, int k0)
    {
        long a = Math.Max(lo - k0, 0), b = Math.Min(hi - k0, 64);
        if (a >= b) return 0;
        ulong upTo = b >= 64 ? ulong.MaxValue : (1UL << (int)b) - 1;
        return upTo & ~((1UL << (int)a) - 1);
    }
}
