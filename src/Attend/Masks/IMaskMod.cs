namespace Attend;

/// <summary>
/// What may be seen: a predicate over (batch, head, query position, key position).
/// </summary>
/// <remarks>
/// <para>Positions are on the key axis: query row <c>i</c> of a sequence with <c>Tq</c> queries and <c>Tk</c> keys
/// sits at position <c>i + Tk − Tq</c> (bottom-right alignment, as FlashAttention documents for causal masks).
/// When <c>Tq == Tk</c> the position is the row index; for decode (one query against a cache of <c>Tk</c>) it is
/// <c>Tk − 1</c>. Positions may be negative when <c>Tq &gt; Tk</c>.</para>
/// <para>Implement masks as structs deriving from <see cref="IMaskMod{TSelf}"/>: kernels are generic over the
/// concrete type, so the JIT specialises and inlines <see cref="IsVisible"/>.</para>
/// </remarks>
public interface IMaskMod
{
    /// <summary>True when query position <paramref name="q"/> may attend to key position <paramref name="k"/>.</summary>
    bool IsVisible(int batch, int head, int q, int k);

    /// <summary>
    /// Classifies the block of query positions [<paramref name="qStart"/>, <paramref name="qEnd"/>) and key positions
    /// [<paramref name="kStart"/>, <paramref name="kEnd"/>): <see cref="BlockKind.Empty"/> only when no pair is
    /// visible, <see cref="BlockKind.Full"/> only when every pair is; <see cref="BlockKind.Partial"/> is always safe.
    /// Masks without a closed form can return <see cref="BlockClassifier.ByEvaluation{TMask}"/>.
    /// </summary>
    BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd);

    /// <summary>True when the mask differs between heads (a block mask then keeps one structure per head).</summary>
    bool DependsOnHead { get; }

    /// <summary>True when the mask differs between batch entries.</summary>
    bool DependsOnBatch { get; }

    /// <summary>Calls <paramref name="visitor"/> with the concrete mask type (dispatch from a boxed mask to generic kernels).</summary>
    TResult Accept<TVisitor, TResult>(ref TVisitor visitor) where TVisitor : struct, IMaskVisitor<TResult>;
}

/// <summary>Base interface of mask structs; supplies <see cref="IMaskMod.Accept{TVisitor, TResult}"/>.</summary>
/// <typeparam name="TSelf">The implementing struct.</typeparam>
public interface IMaskMod<TSelf> : IMaskMod where TSelf : struct, IMaskMod<TSelf>
{
    TResult IMaskMod.Accept<TVisitor, TResult>(ref TVisitor visitor) => visitor.Visit((TSelf)this);
}

/// <summary>Receives a mask as its concrete struct type.</summary>
public interface IMaskVisitor<TResult>
{
    /// <summary>Called with the concrete mask.</summary>
    TResult Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask>;
}

/// <summary>How a block of (query, key) pairs relates to a mask.</summary>
public enum BlockKind : byte
{
    /// <summary>No pair is visible: the block is never visited.</summary>
    Empty = 0,

    /// <summary>Some pairs are visible: the kernel evaluates the mask per element.</summary>
    Partial = 1,

    /// <summary>Every pair is visible: the kernel skips the mask.</summary>
    Full = 2,
}

/// <summary>Helpers for classifying blocks.</summary>
public static class BlockClassifier
{
    /// <summary>
    /// Classifies a block by evaluating the mask on its pairs, stopping as soon as both a visible and a hidden
    /// pair have been seen. Costs up to one evaluation per pair of the block, never a T×T allocation.
    /// </summary>
    public static BlockKind ByEvaluation<TMask>(in TMask mask, int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
        where TMask : struct, IMaskMod
    {
        bool anyVisible = false, anyHidden = false;
        for (int q = qStart; q < qEnd; q++)
        {
            for (int k = kStart; k < kEnd; k++)
            {
                if (mask.IsVisible(batch, head, q, k)) anyVisible = true; else anyHidden = true;
                if (anyVisible && anyHidden) return BlockKind.Partial;
            }
        }
        return anyVisible ? BlockKind.Full : BlockKind.Empty;
    }
}
