namespace Attend.Methods.Sparse.Static;

/// <summary>
/// One mask per sequence of a packed (varlen) batch: the kernel's <c>batch</c> argument is the sequence index there,
/// and sequence s is answered by its own mask. A static pattern whose settings depend on the length (a window that
/// grows with T, a grid that factors T) is built per sequence and combined with this, so a packed batch gives each
/// sequence exactly what it gives alone.
/// </summary>
/// <typeparam name="TMask">The mask type of every sequence.</typeparam>
public readonly struct PerSequenceMask<TMask> : IMaskMod<PerSequenceMask<TMask>>, IMaskRowWords
    where TMask : struct, IMaskMod<TMask>
{
    private readonly TMask[] _masks;
    private readonly IMaskRowWords?[] _words; // each part boxed once, when it has row words

    /// <summary>Sequence s uses <paramref name="masks"/>[s].</summary>
    /// <exception cref="ArgumentException">No masks.</exception>
    public PerSequenceMask(TMask[] masks)
    {
        ArgumentNullException.ThrowIfNull(masks);
        if (masks.Length == 0) throw new ArgumentException("At least one sequence is needed.", nameof(masks));
        _masks = (TMask[])masks.Clone();
        _words = new IMaskRowWords?[masks.Length];
        for (int s = 0; s < masks.Length; s++) _words[s] = masks[s] as IMaskRowWords;
    }

    /// <summary>Number of sequences.</summary>
    public int Sequences => _masks.Length;

    /// <summary>The mask of sequence <paramref name="sequence"/>.</summary>
    public TMask Of(int sequence) => _masks[sequence];

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => _masks[batch].IsVisible(batch, head, q, k);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        _masks[batch].ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public ulong RowWord(int batch, int head, int q, int k0, ulong candidates) =>
        MaskRowWords.Row(_masks[batch], _words[batch], batch, head, q, k0, candidates);

    /// <inheritdoc/>
    public bool DependsOnHead
    {
        get
        {
            foreach (TMask m in _masks) if (m.DependsOnHead) return true;
            return false;
        }
    }

    /// <inheritdoc/>
    public bool DependsOnBatch => _masks.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => _masks.Length == 1 ? _masks[0].ToString() ?? "" : $"per-sequence[{string.Join("; ", _masks)}]";
}

/// <summary>Builds a <see cref="PerSequenceMask{TMask}"/> from boxed masks of one type.</summary>
public static class PerSequenceMask
{
    /// <summary>
    /// The masks of the sequences (index = sequence) as one mask; they must share one concrete type (one pattern
    /// built with different lengths).
    /// </summary>
    /// <exception cref="ArgumentException">No masks, or masks of different types.</exception>
    public static IMaskMod Create(IReadOnlyList<IMaskMod> masks)
    {
        ArgumentNullException.ThrowIfNull(masks);
        if (masks.Count == 0) throw new ArgumentException("At least one sequence is needed.", nameof(masks));
        var builder = new Builder(masks);
        return masks[0].Accept<Builder, IMaskMod>(ref builder);
    }

    private readonly struct Builder(IReadOnlyList<IMaskMod> masks) : IMaskVisitor<IMaskMod>
    {
        public IMaskMod Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask>
        {
            var typed = new TMask[masks.Count];
            for (int s = 0; s < typed.Length; s++)
                typed[s] = masks[s] is TMask m ? m : throw new ArgumentException($"Sequence {s}'s mask {masks[s]} is not a {typeof(TMask).Name} like sequence 0's.", nameof(masks));
            return new PerSequenceMask<TMask>(typed);
        }
    }
}
