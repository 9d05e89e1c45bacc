namespace Attend;

/// <summary>No masking: every query sees every key.</summary>
public readonly struct FullMask : IMaskMod<FullMask>
{
    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => true;

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) => BlockKind.Full;

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => "full";
}
