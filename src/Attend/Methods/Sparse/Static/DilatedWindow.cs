namespace Attend.Methods.Sparse.Static;

/// <summary>
/// Dilated sliding window (Longformer: Beltagy et al., "Longformer: The Long-Document Transformer", 2020): a query sees
/// <see cref="Window"/> keys on each side spaced <see cref="Dilation"/> apart (|q − k| ≤ (window − 1)·dilation and
/// q − k ≡ 0 mod dilation), so the receptive field grows by the dilation at the same cost.
/// </summary>
/// <remarks>
/// Deviations: Longformer gives different heads different dilations and adds global tokens; here one dilation for all
/// heads (<c>dilations</c> lists one per head when given), no global tokens (compose with <see cref="SinkWindowMask"/>).
/// </remarks>
public readonly struct DilatedWindowMask : IMaskMod<DilatedWindowMask>
{
    private readonly int[]? _perHead;

    /// <summary>A window of <paramref name="window"/> ≥ 1 keys per side with dilation <paramref name="dilation"/> ≥ 1 (or one per head).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A window or dilation below 1.</exception>
    public DilatedWindowMask(int window, int dilation, int[]? headDilations = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dilation, 1);
        if (headDilations is not null)
            foreach (int d in headDilations) ArgumentOutOfRangeException.ThrowIfLessThan(d, 1, nameof(headDilations));
        Window = window;
        Dilation = dilation;
        _perHead = headDilations;
    }

    /// <summary>Keys per side (self included).</summary>
    public int Window { get; }

    /// <summary>Spacing between keys (when no per-head list is given).</summary>
    public int Dilation { get; }

    private int DilationOf(int head) => _perHead is null ? Dilation : _perHead[head % _perHead.Length];

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        long delta = Math.Abs((long)q - k);
        int d = DilationOf(head);
        return delta <= (long)(Window - 1) * d && delta % d == 0;
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int d = DilationOf(head);
        int reach = (int)Math.Min(int.MaxValue, (long)(Window - 1) * d);
        BlockKind band = new SlidingWindowMask(reach, reach).ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (band == BlockKind.Empty || d == 1) return band;
        // Inside the band every key residue class appears when the block is at least `d` wide; otherwise evaluate.
        return Math.Min(qEnd - qStart, kEnd - kStart) >= d ? BlockKind.Partial : BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd);
    }

    /// <inheritdoc/>
    public bool DependsOnHead => _perHead is not null;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => _perHead is null ? $"dilated({Window},{Dilation})" : $"dilated({Window},[{string.Join(",", _perHead)}])";
}

/// <summary>The <c>dilated-window</c> method: <see cref="DilatedWindowMask"/> on the exact kernel.</summary>
public sealed class DilatedWindowMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("dilated-window", "sparse", "static",
        "Longformer: The Long-Document Transformer (Beltagy, Peters, Cohan, 2020)", ["cpu", "cuda"], "implemented",
        "dilated sliding window: keys spaced `dilation` apart, `window` per side")
    {
        Parameters =
        [
            new("window", "int", "256", "keys per side (self included)"), new("dilation", "int", "4", "spacing between keys"),
            new("dilations", "list", "", "one dilation per head (cycled), overrides dilation"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new DilatedWindowMask(arguments.GetInt("window", 256, 1), arguments.GetInt("dilation", 4, 1), IntList(arguments, "dilations", 1));
}
