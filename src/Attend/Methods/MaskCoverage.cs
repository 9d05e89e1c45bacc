namespace Attend.Methods;

/// <summary>
/// The coverage of a sparse plan that is a mask (a static pattern, or a base mask intersected with a
/// <see cref="BlockSelectionMask"/>): query row <c>q</c> covers key <c>k</c> when the mask lets the pair through.
/// </summary>
public sealed class MaskCoverage : IPairCoverage
{
    private readonly IMaskMod _mask;
    private readonly int _queryLength, _keyLength;

    /// <summary>Coverage of <paramref name="mask"/> for sequences of <paramref name="queryLength"/> queries and <paramref name="keyLength"/> keys.</summary>
    public MaskCoverage(IMaskMod mask, int queryLength, int keyLength)
    {
        ArgumentNullException.ThrowIfNull(mask);
        ArgumentOutOfRangeException.ThrowIfNegative(queryLength);
        ArgumentOutOfRangeException.ThrowIfNegative(keyLength);
        _mask = mask;
        _queryLength = queryLength;
        _keyLength = keyLength;
    }

    /// <inheritdoc/>
    public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
    {
        if (covered.Length != _keyLength)
            throw new ArgumentException($"The span has {covered.Length} entries but there are {_keyLength} keys.", nameof(covered));
        int position = query + _keyLength - _queryLength;
        for (int k = 0; k < covered.Length; k++) covered[k] = _mask.IsVisible(batch, head, position, k);
    }
}
