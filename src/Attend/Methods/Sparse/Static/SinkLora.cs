namespace Attend.Methods.Sparse.Static;

/// <summary>
/// SinkLoRA's SF-Attn (Zhang, "SinkLoRA: Enhanced Efficiency and Chat Capabilities for Long-Context Large Language
/// Models", 2024), on LongLoRA's shifted sparse attention: tokens are cut into groups of <see cref="GroupSize"/>;
/// the first half of the heads attend within their group, the second half within groups shifted by half a group
/// (LongLoRA's S²-Attn), and every query also sees the first <see cref="Sinks"/> tokens (SinkLoRA's global sink
/// attention). SinkLoRA's segmentation-and-reassembly (shifting the shifted heads back) is what this mask expresses
/// directly on original positions.
/// </summary>
/// <remarks>Deviation: no H2O cache compression (a decode-time cache policy, not this prefill mask). With one head only the unshifted groups exist.</remarks>
public readonly struct ShiftedGroupMask : IMaskMod<ShiftedGroupMask>
{
    /// <summary>Groups of <paramref name="groupSize"/> ≥ 1 tokens among <paramref name="heads"/> ≥ 1 heads, plus <paramref name="sinks"/> ≥ 0 sink tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A group size or head count below 1, or negative sinks.</exception>
    public ShiftedGroupMask(int groupSize, int heads, int sinks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(groupSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(sinks);
        GroupSize = groupSize;
        Heads = heads;
        Sinks = sinks;
    }

    /// <summary>Tokens per group.</summary>
    public int GroupSize { get; }

    /// <summary>Query heads (the second half is shifted).</summary>
    public int Heads { get; }

    /// <summary>Sink tokens every query sees.</summary>
    public int Sinks { get; }

    private int Shift(int head) => head >= Heads - Heads / 2 && Heads > 1 ? GroupSize / 2 : 0;

    private int Group(int position, int shift) => PatternBlocks.FloorDiv(position + shift, GroupSize);

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => k < Sinks || Group(q, Shift(head)) == Group(k, Shift(head));

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        if (kEnd <= Sinks) return BlockKind.Full;
        int s = Shift(head);
        int q0 = Group(qStart, s), q1 = Group(qEnd - 1, s), k0 = Group(kStart, s), k1 = Group(kEnd - 1, s);
        if (q0 == q1 && k0 == k1 && q0 == k0) return BlockKind.Full;
        bool groupsMeet = q0 <= k1 && k0 <= q1;
        return groupsMeet || kStart < Sinks ? BlockKind.Partial : BlockKind.Empty;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => Heads > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"shifted-groups({GroupSize}, sinks {Sinks})";
}

/// <summary>The <c>sinklora</c> method: <see cref="ShiftedGroupMask"/> on the exact kernel.</summary>
public sealed class SinkLoraMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("sinklora", "sparse", "static",
        "SinkLoRA: Enhanced Efficiency and Chat Capabilities for Long-Context Large Language Models (Zhang, 2024)", ["cpu", "cuda"], "implemented",
        "shifted group attention (half the heads shifted by half a group) plus global sink tokens")
    {
        Parameters = [new("group", "int", "1024", "tokens per group"), new("sinks", "int", "4", "sink tokens"), CausalParameter],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new ShiftedGroupMask(arguments.GetInt("group", 1024, 1), heads, arguments.GetInt("sinks", 4, 0));
}
