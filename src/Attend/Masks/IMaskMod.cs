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
