namespace Attend.Methods.Sparse.Static;

/// <summary>
/// Sliding window with attention sinks (StreamingLLM: Xiao et al., "Efficient Streaming Language Models with Attention
/// Sinks", 2023): a query sees the first <see cref="Sinks"/> keys and the keys within <see cref="Window"/> positions of
/// it (|q − k| &lt; window; with causal, the last <c>window</c> keys including itself).
/// </summary>
/// <remarks>
/// Deviation: StreamingLLM is a KV-cache policy for decode with positions re-numbered inside the cache; here it is the
/// equivalent prefill mask over original positions (no position re-indexing: the positional encoding is the caller's).
/// </remarks>
public readonly struct SinkWindowMask : IMaskMod<SinkWindowMask>
{
    /// <summary>A window of <paramref name="window"/> ≥ 1 keys on each side (self included) plus <paramref name="sinks"/> ≥ 0 sink keys.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A window below 1 or negative sinks.</exception>
    public SinkWindowMask(int sinks, int window)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sinks);
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        Sinks = sinks;
        Window = window;
    }

    /// <summary>Sink keys at the start of the sequence.</summary>
    public int Sinks { get; }

    /// <summary>Window (keys within Window − 1 positions of the query).</summary>
    public int Window { get; }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => k < Sinks || Math.Abs((long)q - k) < Window;

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        if (kEnd <= Sinks) return BlockKind.Full;
        BlockKind band = new SlidingWindowMask(Window - 1, Window - 1).ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);
        if (band == BlockKind.Full) return BlockKind.Full;
        return kStart < Sinks || band == BlockKind.Partial ? BlockKind.Partial : BlockKind.Empty;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"sinks({Sinks})+window({Window})";
}

/// <summary>The <c>streaming-llm</c> method: <see cref="SinkWindowMask"/> on the exact kernel.</summary>
public sealed class StreamingLlmMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("streaming-llm", "sparse", "static",
        "Efficient Streaming Language Models with Attention Sinks (Xiao et al., 2023)", ["cpu", "cuda"], "implemented",
        "sliding window plus attention sinks (first tokens), as a prefill mask")
    {
        Parameters = [new("sinks", "int", "4", "sink keys at the start"), new("window", "int", "1024", "keys in the window (self included)"), CausalParameter],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal) =>
        new SinkWindowMask(arguments.GetInt("sinks", 4, 0), arguments.GetInt("window", 1024, 1));
}
