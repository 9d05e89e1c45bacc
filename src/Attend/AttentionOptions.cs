namespace Attend;

/// <summary>
/// Options of a softmax attention call. Immutable; every field is optional and null means "the default", never a
/// sentinel value.
/// </summary>
public sealed record AttentionOptions
{
    /// <summary>Options with every default: scale 1/√D, no mask, no score mod.</summary>
    public static AttentionOptions Default { get; } = new();

    /// <summary>Multiplier of q·k; null means 1/√D. Must be finite.</summary>
    public float? Scale { get; init; }

    /// <summary>What may be seen; null means every key (see <see cref="IMaskMod"/> for position alignment).</summary>
    public IMaskMod? Mask { get; init; }

    /// <summary>How scores change (ALiBi, relative bias, …); applied after <see cref="Softcap"/>. Null: none.</summary>
    public IScoreMod? ScoreMod { get; init; }

    /// <summary>
    /// Logit soft cap <c>cap·tanh(s/cap)</c>, applied to the scaled score before <see cref="ScoreMod"/> (FlashAttention's
    /// order). Null: none.
    /// </summary>
    public float? Softcap { get; init; }

    /// <summary>
    /// A prebuilt block structure to reuse across calls (it must match the call's shape and be built from the same
    /// mask, which then may be left out here). Null: built from <see cref="Mask"/> for each call.
    /// </summary>
    public BlockMask? BlockMask { get; init; }

    /// <summary>Cumulative query offsets of a packed variable-length batch (inputs then have batch 1). Null: a regular batch.</summary>
    public SeqOffsets? QueryOffsets { get; init; }

    /// <summary>Cumulative key offsets of a packed variable-length batch; null means the same as <see cref="QueryOffsets"/>.</summary>
    public SeqOffsets? KeyOffsets { get; init; }

    /// <summary>For the allocating overloads: also return the log-sum-exp.</summary>
    public bool ReturnLse { get; init; }

    /// <summary>Backward: produce bitwise-identical gradients on every run (costs a second pass for dQ on the CPU).</summary>
    public bool Deterministic { get; init; }

    /// <summary>Force one kernel variant by name (see <see cref="KernelRegistry"/>); null picks the first that supports the call.</summary>
    public string? Variant { get; init; }

    /// <summary>
    /// The backend to run on: <c>cpu</c> (the default when null) or <c>cuda</c> (after <c>Attend.Cuda.CudaBackend.Register()</c>;
    /// host spans are then copied to the GPU and back). A call picks among that backend's variants only; a
    /// <see cref="Variant"/> forced by name runs on its own backend. Float32 host tensors on <c>cuda</c> are rounded to bf16
    /// on the way in and the output widened back (bf16 precision; forward only). Null also defers to an
    /// <see cref="AttentionBackend.Use"/> scope, through which whole methods run on a backend.
    /// </summary>
    public string? Backend { get; init; }

    /// <summary>Worker threads to use; null means all cores.</summary>
    public int? MaxThreads { get; init; }
}
