namespace Attend.Methods;

/// <summary>
/// What one <see cref="IAttentionMethod.Run"/> call produced: the output (shaped like the queries, with the value
/// head dim), any further tensors (<c>lse</c>, <c>state</c>, …), and for sparse and approximate methods the density
/// and coverage the bench needs.
/// </summary>
public sealed class MethodResult
{
    /// <summary>A result with output <paramref name="output"/>.</summary>
    public MethodResult(MethodTensor output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Output = output;
    }

    /// <summary>The attention output <c>[B, Tq, H, Dv]</c>.</summary>
    public MethodTensor Output { get; }

    /// <summary>Further named outputs: <c>lse</c> <c>[B, H, Tq]</c>, <c>state</c> <c>[B, H, Dk, Dv]</c> (linear family), …</summary>
    public Dictionary<string, MethodTensor> Extras { get; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Computed (q, k) pairs over visible pairs, for sparse and approximate methods; null for dense ones.</summary>
    public double? Density { get; init; }

    /// <summary>Time spent choosing what to compute (building the plan), in milliseconds, when the method has a selector.</summary>
    public double? SelectorMs { get; init; }

    /// <summary>Which (b, h, q, k) pairs the method computed exactly, so the bench can measure attention recall; null for dense methods.</summary>
    public IPairCoverage? Coverage { get; init; }

    /// <summary>Short facts to print after a run (the pattern chosen per head, clusters, …), in order.</summary>
    public List<KeyValuePair<string, string>> Report { get; } = [];
}

/// <summary>Which (batch, head, query, key) pairs a sparse plan computes exactly.</summary>
public interface IPairCoverage
{
    /// <summary>
    /// Marks in <paramref name="covered"/> (length Tk, cleared by the callee) the keys query row <paramref name="query"/>
    /// of head <paramref name="head"/> in batch <paramref name="batch"/> computes exactly.
    /// </summary>
    void CoveredKeys(int batch, int head, int query, Span<bool> covered);
}
