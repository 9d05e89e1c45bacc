namespace Attend;

/// <summary>The complement of a mask.</summary>
public readonly struct NotMask<TA> : IMaskMod<NotMask<TA>>
    where TA : struct, IMaskMod<TA>
{
    private readonly TA _a;

    /// <summary>Negates a mask.</summary>
    public NotMask(TA a) => _a = a;

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => !_a.IsVisible(batch, head, q, k);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        _a.ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd) switch
        {
            BlockKind.Full => BlockKind.Empty,
            BlockKind.Empty => BlockKind.Full,
            _ => BlockKind.Partial,
        };

    /// <inheritdoc/>
    public bool DependsOnHead => _a.DependsOnHead;

    /// <inheritdoc/>
    public bool DependsOnBatch => _a.DependsOnBatch;

    /// <inheritdoc/>
    public override string ToString() => $"!{_a}";
}
