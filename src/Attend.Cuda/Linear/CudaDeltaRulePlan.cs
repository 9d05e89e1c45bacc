using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;
using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>
/// A delta-rule call prepared for the GPU: <see cref="LinearUpdate.Delta"/> (DeltaNet, no decay) or
/// <see cref="LinearUpdate.GatedDelta"/> with a scalar decay (gated DeltaNet: a <c>[tokens, H]</c> log gate, or a fixed γ
/// per head) or a decay per key channel (Kimi Delta Attention: <see cref="LinearDecay.ChannelGate"/>, a
/// <c>[tokens, H, Dk]</c> log gate), identity feature map, no normalisation. Tensors stay on the device: q <c>[B, T, H, Dk]</c>, k
/// <c>[B, T, Hkv, Dk]</c>, v <c>[B, T, Hkv, Dv]</c>, output <c>[B, T, H, Dv]</c> in bf16 or fp16; β <c>[B, T, H]</c>,
/// gates (log α ≤ 0), initial and final states <c>[N, H, Dk, Dv]</c> in float32. A varlen call (offsets) has B = 1 and
/// one state per sequence.
/// </summary>
/// <remarks>
/// The chunked form (<c>linear_delta_chunk.cu</c>) is the WY/UT representation over 64-token chunks (Yang et al. 2024,
/// as flash-linear-attention's chunk_delta_rule): a first kernel computes, for every chunk and query head at once,
/// <c>T = (I + tril(diag(β) K Kᵀ ⊙ Γ, −1))⁻¹</c>, <c>w = T diag(β e^b) K</c>, <c>u = T diag(β) V</c> and the masked
/// <c>Q Kᵀ ⊙ Γ</c> (kept in scratch of the element type); a second walks each sequence's chunks in order with the state
/// in registers (one CTA per sequence, query head and <see cref="ValueGroups"/> × <see cref="ValueBlock"/> value columns, a
/// warp group per <see cref="ValueBlock"/> columns, the groups sharing the q, k, w and A tiles): <c>δ = u − w S</c>,
/// <c>o = e^b ⊙ q S + A δ</c>, <c>S' = e^{b_C} S + K̂ᵀ δ</c>. Unlike the additive kernels there are no segments: the
/// delta rule's state transition is a matrix, not a decay, so a sequence's chunks are not split across CTAs. The
/// recurrent form walks the tokens one by one (decode). The channel gate (KDA) has its own first kernel
/// (<c>attend_kda_prepare</c>, <c>linear_kda_prepare.cuh</c>): it computes the in-chunk decays per channel (exactly, in
/// float32, on the diagonal 16-token blocks) and also writes Q̃ = q ⊙ e^b, K̂ = k ⊙ e^{b_C − b} and e^{b_C} per chunk, so the
/// same chain kernel runs it with no exponentials. <see cref="LinearAttentionOptions.ChunkSize"/> and
/// <see cref="LinearAttentionOptions.Threads"/> apply to the CPU engine only.
/// </remarks>
public sealed unsafe partial class CudaDeltaRulePlan : IDisposable
{
    /// <summary>Tokens per chunk of the chunked form.</summary>
    public const int Chunk = 64;

    internal const string Source = "linear_delta_chunk.cu";
    internal const string PrepareEntry = "attend_delta_prepare", ChunkEntry = "attend_delta_chunk", RecurrentEntry = "attend_delta_recurrent";
    internal const string KdaPrepareEntry = "attend_kda_prepare";
    internal const int Threads = 128, RecurrentThreads = 256, RecurrentColumns = 32;

    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, int, int, int, string), CudaKernelFunction> s_loaded = new();
    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, int, int, int), CompiledKernel> s_images = new();
    private static readonly Lock s_gate = new();

    private readonly CudaKernelFunction? _prepare, _chunk, _recurrent;
    private readonly DeviceBuffer _headLogDecay, _sequenceTable, _chunkTable;
    private readonly DeviceBuffer? _w, _u, _a;
    private readonly DeviceBuffer? _gatedQ, _decayedK, _chunkDecay;   // channel gate only: Q̃, K̂ [tokens, H, Dk], e^{b_C} [chunks, H, Dk]
    private readonly CudaContext _context;
    private readonly int _sequences, _chunks;
    private readonly float _scale;
    private readonly bool _fixedDecay;

    /// <summary>Plans a call of <paramref name="shape"/> with <paramref name="options"/> (form chunked or recurrent).</summary>
    /// <param name="context">The device.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="elementType">bf16 or fp16.</param>
    /// <param name="options">The update must be Delta or GatedDelta.</param>
    /// <param name="offsets">Varlen offsets (then B = 1), or null.</param>
    /// <param name="valueBlock">Value columns per warp group of the chunked form (16, 32 or 64; null: <see cref="DefaultValueBlock"/>).</param>
    /// <param name="valueGroups">Warp groups per CTA of the chunked form (1 or 2; null: <see cref="DefaultValueGroups"/>): they share the q, k, w and A tiles.</param>
    /// <exception cref="NotSupportedException">A configuration the kernels do not compute; the message says why.</exception>
    /// <exception cref="ArgumentException">Invalid options, shape or offsets.</exception>
    public CudaDeltaRulePlan(CudaContext context, LinearShape shape, ElementType elementType, LinearAttentionOptions? options, SeqOffsets? offsets = null,
        int? valueBlock = null, int? valueGroups = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        options ??= new LinearAttentionOptions();
        if (!IsSupported(shape, elementType, options, out string reason)) throw new NotSupportedException(reason);
        if (shape.Batch < 0 || shape.Tokens < 0 || shape.Heads <= 0 || shape.KvHeads <= 0 || shape.Heads % shape.KvHeads != 0)
            throw new ArgumentException($"Shape {shape}: B and T must not be negative and H must be a positive multiple of Hkv.", nameof(shape));
        if (offsets is not null && (shape.Batch != 1 || offsets.TotalTokens != shape.Tokens))
            throw new ArgumentException($"A varlen call needs B = 1 and offsets covering T = {shape.Tokens} tokens; got B = {shape.Batch}, {offsets.TotalTokens} tokens.", nameof(offsets));
        ValueBlock = valueBlock ?? DefaultValueBlock(shape.ValueDim);
        ValueGroups = valueGroups ?? DefaultValueGroups(shape.ValueDim, ValueBlock);
        bool chunked = (options.Form ?? LinearForm.Chunked) == LinearForm.Chunked;
        // At most 64 columns per CTA: 64 x 2 would need 255 registers x 256 threads, more than an SM has.
        if (ValueBlock is not (16 or 32 or 64) || ValueGroups is not (1 or 2) || ValueBlock * ValueGroups > 64
            || (chunked && shape.ValueDim % (ValueBlock * ValueGroups) != 0))
            throw new ArgumentOutOfRangeException(ValueBlock is not (16 or 32 or 64) ? nameof(valueBlock) : nameof(valueGroups),
                $"The value block must be 16, 32 or 64 and the groups 1 or 2, at most 64 columns per CTA, dividing Dv = {shape.ValueDim}; got {ValueBlock} x {ValueGroups}.");
        _context = context;
        Shape = shape;
        ElementType = elementType;
        Form = options.Form ?? LinearForm.Chunked;
        Update = options.Update!.Value;
        Decay = options.Decay ?? (options.HeadDecay != null ? LinearDecay.FixedPerHead : LinearDecay.None);
        _scale = options.Scale ?? 1f;
        if (!float.IsFinite(_scale)) throw new ArgumentException($"Scale must be finite; got {_scale}.", nameof(options));
        float[] logDecay = LinearPlanInputs.LogHeadDecay(options, Decay, shape.Heads);
        _fixedDecay = Decay == LinearDecay.FixedPerHead;

        int[] starts, lengths;
        (starts, lengths) = LinearPlanInputs.Sequences(shape, offsets);
        _sequences = starts.Length;
        int[] sequenceTable = SequenceTable(starts, lengths);
        int[] chunkTable = ChunkTable(starts, lengths);
        _chunks = chunkTable.Length / 4;

        int gate = Update != LinearUpdate.GatedDelta ? 0 : Decay == LinearDecay.ChannelGate ? 2 : 1;
        if (Form == LinearForm.Recurrent)
            _recurrent = Kernel(context, shape.KeyDim, elementType, gate, 16, 1, RecurrentEntry, 0);
        else
        {
            _prepare = gate == 2
                ? Kernel(context, shape.KeyDim, elementType, gate, ValueBlock, ValueGroups, KdaPrepareEntry, KdaPrepareSharedBytes(shape.KeyDim))
                : Kernel(context, shape.KeyDim, elementType, gate, ValueBlock, ValueGroups, PrepareEntry, PrepareSharedBytes(shape.KeyDim));
            _chunk = Kernel(context, shape.KeyDim, elementType, gate, ValueBlock, ValueGroups, ChunkEntry, ChunkSharedBytes(shape.KeyDim, ValueBlock, ValueGroups));
        }

        var owned = new List<DeviceBuffer>();
        try
        {
            _headLogDecay = Track(DeviceBuffer.From<float>(context, logDecay), owned);
            _sequenceTable = Track(DeviceBuffer.From<int>(context, sequenceTable.Length == 0 ? new int[4] : sequenceTable), owned);
            _chunkTable = Track(DeviceBuffer.From<int>(context, chunkTable.Length == 0 ? new int[4] : chunkTable), owned);
            if (Form == LinearForm.Chunked)
            {
                long rows = Math.Max(1L, (long)shape.Batch * shape.Tokens * shape.Heads);
                const int size = 2; // bf16 or fp16
                _w = Track(new DeviceBuffer(context, rows * shape.KeyDim * size), owned);
                _u = Track(new DeviceBuffer(context, rows * shape.ValueDim * size), owned);
                _a = Track(new DeviceBuffer(context, rows * Chunk * size), owned);
                if (Decay == LinearDecay.ChannelGate)
                {
                    _gatedQ = Track(new DeviceBuffer(context, rows * shape.KeyDim * size), owned);
                    _decayedK = Track(new DeviceBuffer(context, rows * shape.KeyDim * size), owned);
                    _chunkDecay = Track(new DeviceBuffer(context, Math.Max(1L, (long)_chunks * shape.Heads) * shape.KeyDim * 4), owned);
                }
            }
        }
        catch
        {
            foreach (DeviceBuffer b in owned) b.Dispose();
            throw;
        }
    }

    private static DeviceBuffer Track(DeviceBuffer b, List<DeviceBuffer> owned)
    {
        owned.Add(b);
        return b;
    }

    /// <summary>The planned dimensions.</summary>
    public LinearShape Shape { get; }

    /// <summary>bf16 or fp16.</summary>
    public ElementType ElementType { get; }

    /// <summary>Chunked or recurrent.</summary>
    public LinearForm Form { get; }

    /// <summary>Delta or GatedDelta.</summary>
    public LinearUpdate Update { get; }

    /// <summary>None (Delta), FixedPerHead, ScalarGate or ChannelGate (GatedDelta).</summary>
    public LinearDecay Decay { get; }

    /// <summary>Value columns per warp group of the chunked form.</summary>
    public int ValueBlock { get; }

    /// <summary>Warp groups (of 4 warps, <see cref="ValueBlock"/> columns each) per CTA of the chunked form.</summary>
    public int ValueGroups { get; }

    /// <summary>64-token chunks over all sequences (the first kernel's grid, per head).</summary>
    public int Chunks => _chunks;

    /// <summary>
    /// The default value block: 16 columns per warp group, for every value dim (measured on the H100 at H = 16, D = 128,
    /// T = 16k, delta rule: 16 columns 0.552 / 0.541 ms, 32 columns 0.652 / 0.634 ms, 64 columns 0.911 ms: the per-warp
    /// work of the sequential kernel is its critical path, so the narrowest block on the most SMs wins).
    /// </summary>
    public static int DefaultValueBlock(int valueDim) => 16;

    /// <summary>
    /// The default warp groups per CTA: 1, for every shape (measured on the H100 at H = 16, D = 128, T = 16k: 16 × 2 took
    /// 0.643 ms against 0.541 ms for 16 × 1 (delta rule), 0.762 against 0.618 (gated): sharing the q, k, w, A tiles saves L2
    /// traffic but halves the SMs in use, and the kernel is latency-bound, not L2-bound).
    /// </summary>
    public static int DefaultValueGroups(int valueDim, int valueBlock) => 1;

    /// <summary>Whether these kernels compute this configuration; otherwise <paramref name="reason"/> says why.</summary>
    public static bool IsSupported(LinearShape shape, ElementType elementType, LinearAttentionOptions? options, out string reason)
    {
        options ??= new LinearAttentionOptions();
        LinearForm form = options.Form ?? LinearForm.Chunked;
        LinearUpdate update = options.Update ?? LinearUpdate.Additive;
        LinearDecay decay = options.Decay ?? (options.HeadDecay != null ? LinearDecay.FixedPerHead : LinearDecay.None);
        reason = "";
        if (update is not (LinearUpdate.Delta or LinearUpdate.GatedDelta))
            reason = $"the CUDA delta-rule kernels compute the Delta and GatedDelta updates; got {update} (the additive update runs in CudaLinearPlan)";
        else if (elementType is not (ElementType.BFloat16 or ElementType.Float16))
            reason = $"the CUDA delta-rule kernels take bf16 or fp16 tensors (tensor cores); got {elementType.ShortName()}";
        else if (form == LinearForm.Naive)
            reason = "the naive form is the float64 CPU reference";
        else if (options.FeatureMap is { } map && !ReferenceEquals(map, FeatureMaps.Identity))
            reason = $"the CUDA delta-rule kernels take the identity feature map (apply '{map.Name}' to q and k first; LinearAttention with Backend = \"cuda\" does so on the host for width-keeping maps such as l2norm)";
        else if ((options.Normalization ?? LinearNormalization.None) != LinearNormalization.None)
            reason = $"the CUDA delta-rule kernels compute no normalisation; {options.Normalization} is not on the GPU";
        else if (update == LinearUpdate.Delta && decay != LinearDecay.None)
            reason = $"the Delta update takes no decay (got {decay}); use GatedDelta";
        else if (update == LinearUpdate.GatedDelta && decay == LinearDecay.None)
            reason = "the GatedDelta update needs a decay (FixedPerHead, ScalarGate or ChannelGate)";
        else if (form == LinearForm.Chunked && shape.KeyDim is not (64 or 128))
            reason = $"the chunked CUDA delta-rule kernels are specialised for key dims 64 and 128; got Dk = {shape.KeyDim}";
        else if (form == LinearForm.Chunked && (shape.ValueDim <= 0 || shape.ValueDim % 64 != 0))
            reason = $"the chunked CUDA delta-rule kernels take value dims that are multiples of 64; got Dv = {shape.ValueDim}";
        else if (form == LinearForm.Recurrent && (shape.KeyDim <= 0 || shape.KeyDim % 8 != 0 || shape.KeyDim > 256))
            reason = $"the recurrent CUDA delta-rule kernel takes key dims that are multiples of 8 up to 256; got Dk = {shape.KeyDim}";
        else if (shape.ValueDim <= 0)
            reason = $"Dv must be positive; got {shape.ValueDim}";
        return reason.Length == 0;
    }

    /// <summary>
    /// Queues the call on <paramref name="stream"/> (null: the default stream). <paramref name="beta"/>: float32 β
    /// <c>[B, T, H]</c>, or null (β = 1); <paramref name="gate"/>: float32 log gates <c>[B, T, H]</c> (ScalarGate) or
    /// <c>[B, T, H, Dk]</c> (ChannelGate), else null; <paramref name="initialState"/> and <paramref name="finalState"/>: float32 <c>[N, H, Dk, Dv]</c> or null (zero /
    /// not wanted). The recurrent form may update the state in place (one buffer for both: each CTA reads its own state
    /// slice before it writes it, and no other CTA touches that slice); the chunked form reads the initial state through
    /// the read-only cache (<c>__restrict__</c>), so it takes two buffers that do not overlap. Allocates nothing, except the first
    /// Run with <see cref="KeepForBackward"/> (the backward's buffers).
    /// </summary>
    /// <exception cref="ArgumentException">Tensors that do not match the plan; the message names the argument.</exception>
    public void Run(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? beta, DeviceBuffer? gate, DeviceBuffer? initialState, CudaTensor output,
        DeviceBuffer? finalState, CudaStream? stream = null)
    {
        LinearShape s = Shape;
        LinearPlanInputs.RequireTensor(q, nameof(q), ElementType, Shape, s.Heads, s.KeyDim);
        LinearPlanInputs.RequireTensor(k, nameof(k), ElementType, Shape, s.KvHeads, s.KeyDim);
        LinearPlanInputs.RequireTensor(v, nameof(v), ElementType, Shape, s.KvHeads, s.ValueDim);
        LinearPlanInputs.RequireTensor(output, nameof(output), ElementType, Shape, s.Heads, s.ValueDim);
        long rows = (long)s.Batch * s.Tokens * s.Heads;
        long stateBytes = (long)_sequences * s.Heads * s.KeyDim * s.ValueDim * 4;
        if (beta is not null && beta.Bytes < rows * 4)
            throw new ArgumentException($"beta holds {beta.Bytes} bytes; [B, T, H] float32 needs {rows * 4}.", nameof(beta));
        if (Decay == LinearDecay.ScalarGate)
        {
            if (gate is null || gate.Bytes < rows * 4)
                throw new ArgumentException($"Decay ScalarGate needs a float32 gate [B, T, H] of {rows * 4} bytes; got {(gate is null ? "none" : gate.Bytes + " bytes")}.", nameof(gate));
        }
        else if (Decay == LinearDecay.ChannelGate)
        {
            if (gate is null || gate.Bytes < rows * s.KeyDim * 4)
                throw new ArgumentException($"Decay ChannelGate needs a float32 gate [B, T, H, Dk] of {rows * s.KeyDim * 4} bytes; got {(gate is null ? "none" : gate.Bytes + " bytes")}.", nameof(gate));
        }
        else if (gate is not null)
            throw new ArgumentException($"A gate was given but the decay is {Decay}.", nameof(gate));
        if (initialState is not null && initialState.Bytes < stateBytes)
            throw new ArgumentException($"initialState holds {initialState.Bytes} bytes; [N, H, Dk, Dv] float32 needs {stateBytes}.", nameof(initialState));
        if (finalState is not null && finalState.Bytes < stateBytes)
            throw new ArgumentException($"finalState holds {finalState.Bytes} bytes; [N, H, Dk, Dv] float32 needs {stateBytes}.", nameof(finalState));
        if (Form == LinearForm.Chunked && initialState is not null && finalState is not null
            && initialState.Pointer < finalState.Pointer + (ulong)stateBytes && finalState.Pointer < initialState.Pointer + (ulong)stateBytes)
            throw new ArgumentException("The chunked form reads initialState through the read-only cache while it writes finalState; give finalState a buffer that does not overlap initialState (the recurrent form may update in place).", nameof(finalState));
        _kept = null;
        if (_sequences == 0) return;

        var a = new Arguments
        {
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, O = output.Buffer.Pointer,
            Beta = beta?.Pointer ?? 0, Gate = gate?.Pointer ?? 0, HeadLogDecay = _fixedDecay ? _headLogDecay.Pointer : 0,
            S0 = initialState?.Pointer ?? 0, ST = finalState?.Pointer ?? 0,
            W = _w?.Pointer ?? 0, U = _u?.Pointer ?? 0, A = _a?.Pointer ?? 0,
            Seqs = _sequenceTable.Pointer, Chunks = _chunkTable.Pointer,
            Heads = s.Heads, KvHeads = s.KvHeads, Dv = s.ValueDim, Scale = _scale,
        };
        if (Form == LinearForm.Recurrent)
        {
            void** r = stackalloc void*[14];
            r[0] = &a.Q; r[1] = &a.K; r[2] = &a.V; r[3] = &a.O; r[4] = &a.Beta; r[5] = &a.Gate; r[6] = &a.HeadLogDecay; r[7] = &a.S0;
            r[8] = &a.ST; r[9] = &a.Seqs; r[10] = &a.Heads; r[11] = &a.KvHeads; r[12] = &a.Dv; r[13] = &a.Scale;
            uint columns = (uint)((s.ValueDim + RecurrentColumns - 1) / RecurrentColumns);
            _recurrent!.Launch(columns, (uint)s.Heads, (uint)_sequences, RecurrentThreads, 0, stream, r);
            return;
        }
        if (Decay == LinearDecay.ChannelGate)
        {
            // KDA: the first kernel writes Q̃, K̂ and e^{b_C}; the chain reads them in place of q, k and the gate.
            LaunchKdaPrepare(&a, stream);
            a.Q = _gatedQ!.Pointer;
            a.K = _decayedK!.Pointer;
            a.Gate = _chunkDecay!.Pointer;
            a.HeadLogDecay = 0;
            LaunchChain(&a, stream);
            return;
        }
        // KeepForBackward: T (and with All the checkpoints and δ) written beside the output (CudaDeltaRuleBackward.cs).
        bool keep = KeepForBackward != CudaDeltaKeep.None && BackwardRefusal(s, Form, Decay) is null;
        if (keep)
        {
            EnsureBackwardBuffers();
            a.Tout = _inverse!.Pointer;
            if (KeepForBackward == CudaDeltaKeep.All)
            {
                a.Hck = _checkpoints!.Pointer;
                a.Dnew = _delta!.Pointer;
            }
        }
        if (_chunks > 0)
        {
            void** p = stackalloc void*[15];
            p[0] = &a.Q; p[1] = &a.K; p[2] = &a.V; p[3] = &a.Beta; p[4] = &a.Gate; p[5] = &a.HeadLogDecay; p[6] = &a.W; p[7] = &a.U;
            p[8] = &a.A; p[9] = &a.Chunks; p[10] = &a.Heads; p[11] = &a.KvHeads; p[12] = &a.Dv; p[13] = &a.Tout; p[14] = &a.Tin;
            _prepare!.Launch((uint)_chunks, (uint)s.Heads, 1, Threads, (uint)PrepareSharedBytes(s.KeyDim), stream, p);
        }
        LaunchChain(&a, stream);
        if (keep)
        {
            _kept = InputKey(q, k, v, beta, gate, initialState);
            _keptMode = KeepForBackward;
        }
    }

    // attend_kda_prepare with the arguments in `a` (Q, K, V, Beta, Gate as given; W, U, A and the plan's Q̃, K̂, e^{b_C} scratch).
    private void LaunchKdaPrepare(Arguments* a, CudaStream? stream)
    {
        if (_chunks == 0) return;
        ulong qg = _gatedQ!.Pointer, kh = _decayedK!.Pointer, dec = _chunkDecay!.Pointer;
        void** p = stackalloc void*[15];
        p[0] = &a->Q; p[1] = &a->K; p[2] = &a->V; p[3] = &a->Beta; p[4] = &a->Gate; p[5] = &a->W; p[6] = &a->U; p[7] = &a->A;
        p[8] = &qg; p[9] = &kh; p[10] = &dec; p[11] = &a->Chunks; p[12] = &a->Heads; p[13] = &a->KvHeads; p[14] = &a->Dv;
        _prepare!.Launch((uint)_chunks, (uint)Shape.Heads, 1, Threads, (uint)KdaPrepareSharedBytes(Shape.KeyDim), stream, p);
    }

    // The sequential kernel (attend_delta_chunk) with the arguments in `a`; the backward sets Hck and Dnew (the
    // checkpoints) and O = 0 (no output).
    private void LaunchChain(Arguments* a, CudaStream? stream)
    {
        LinearShape s = Shape;
        void** c = stackalloc void*[17];
        c[0] = &a->Q; c[1] = &a->K; c[2] = &a->W; c[3] = &a->U; c[4] = &a->A; c[5] = &a->Gate; c[6] = &a->HeadLogDecay; c[7] = &a->S0;
        c[8] = &a->ST; c[9] = &a->O; c[10] = &a->Seqs; c[11] = &a->Heads; c[12] = &a->KvHeads; c[13] = &a->Dv; c[14] = &a->Scale;
        c[15] = &a->Hck; c[16] = &a->Dnew;
        _chunk!.Launch((uint)(s.ValueDim / (ValueBlock * ValueGroups)), (uint)s.Heads, (uint)_sequences, (uint)(Threads * ValueGroups),
            (uint)ChunkSharedBytes(s.KeyDim, ValueBlock, ValueGroups), stream, c);
    }

    /// <summary>The first kernel alone (w, u and A into the plan's scratch), for the bench's split of the time.</summary>
    internal void RunPrepareOnly(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? beta, DeviceBuffer? gate, CudaStream? stream)
    {
        _kept = null;
        if (Form != LinearForm.Chunked || _chunks == 0) return;
        var a = new Arguments
        {
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, Beta = beta?.Pointer ?? 0, Gate = gate?.Pointer ?? 0,
            HeadLogDecay = _fixedDecay ? _headLogDecay.Pointer : 0, W = _w!.Pointer, U = _u!.Pointer, A = _a!.Pointer, Chunks = _chunkTable.Pointer,
            Heads = Shape.Heads, KvHeads = Shape.KvHeads, Dv = Shape.ValueDim,
        };
        if (Decay == LinearDecay.ChannelGate)
        {
            LaunchKdaPrepare(&a, stream);
            return;
        }
        void** p = stackalloc void*[15];
        p[0] = &a.Q; p[1] = &a.K; p[2] = &a.V; p[3] = &a.Beta; p[4] = &a.Gate; p[5] = &a.HeadLogDecay; p[6] = &a.W; p[7] = &a.U;
        p[8] = &a.A; p[9] = &a.Chunks; p[10] = &a.Heads; p[11] = &a.KvHeads; p[12] = &a.Dv; p[13] = &a.Tout; p[14] = &a.Tin;
        _prepare!.Launch((uint)_chunks, (uint)Shape.Heads, 1, Threads, (uint)PrepareSharedBytes(Shape.KeyDim), stream, p);
    }

    /// <summary>Dynamic shared memory of <c>attend_delta_prepare</c> (mirrors its P_OFF_* layout): Q, K, a V block, two T tiles, L (float32), b and β.</summary>
    internal static int PrepareSharedBytes(int keyDim) => 2 * Chunk * keyDim * 2 + 3 * Chunk * 64 * 2 + Chunk * 65 * 4 + 2 * Chunk * 4;

    /// <summary>
    /// Dynamic shared memory of <c>attend_kda_prepare</c> (mirrors its K_OFF_* layout): Q, K, a V block (A before it), T diag(β),
    /// L (float32), the cumulative gate tile (float32, pitch Dk + 4) and β.
    /// </summary>
    internal static int KdaPrepareSharedBytes(int keyDim) => 2 * Chunk * keyDim * 2 + 2 * Chunk * 64 * 2 + Chunk * 65 * 4 + Chunk * (keyDim + 4) * 4 + Chunk * 4;

    /// <summary>
    /// Dynamic shared memory of <c>attend_delta_chunk</c> (mirrors its C_OFF_* layout): two stages of q, k, w, A, gates and
    /// each group's u, then per group two state tiles and δ.
    /// </summary>
    internal static int ChunkSharedBytes(int keyDim, int valueBlock, int valueGroups)
    {
        int stage = 3 * Chunk * keyDim * 2 + valueGroups * Chunk * valueBlock * 2 + Chunk * 64 * 2 + Chunk * 4;
        return 2 * stage + valueGroups * (2 * keyDim * valueBlock * 2 + Chunk * valueBlock * 2);
    }

    /// <summary>
    /// The second kernel's table: one row (sequence, first token, length, first chunk) per sequence; the first chunk is
    /// the sequence's first row in <see cref="ChunkTable"/> (the backward's checkpoints are indexed by it).
    /// </summary>
    internal static int[] SequenceTable(int[] starts, int[] lengths)
    {
        var table = new int[starts.Length * 4];
        int chunk = 0;
        for (int n = 0; n < starts.Length; n++)
        {
            table[4 * n] = n;
            table[4 * n + 1] = starts[n];
            table[4 * n + 2] = lengths[n];
            table[4 * n + 3] = chunk;
            chunk += (lengths[n] + Chunk - 1) / Chunk;
        }
        return table;
    }

    /// <summary>
    /// The first kernel's table: one row (sequence, first token, length ≤ 64, 0) per 64-token chunk of each sequence,
    /// sequence by sequence; an empty sequence has none (the chunked kernel still writes its final state).
    /// </summary>
    internal static int[] ChunkTable(int[] starts, int[] lengths)
    {
        var rows = new List<int>();
        for (int n = 0; n < starts.Length; n++)
            for (int begin = 0; begin < lengths[n]; begin += Chunk)
                rows.AddRange([n, starts[n] + begin, Math.Min(Chunk, lengths[n] - begin), 0]);
        return rows.ToArray();
    }

    private static CudaKernelFunction Kernel(CudaContext context, int keyDim, ElementType type, int gate, int valueBlock, int groups, string entry, int smem)
    {
        var key = (context, keyDim, type, gate, valueBlock, groups, entry);
        if (s_loaded.TryGetValue(key, out CudaKernelFunction? f)) return f;
        lock (s_gate)
        {
            if (s_loaded.TryGetValue(key, out f)) return f;
            if (smem > context.MaxSharedBytesPerBlock)
                throw new NotSupportedException($"{Source}:{entry} at Dk = {keyDim}, value block {valueBlock} needs {smem} bytes of shared memory per block; {context.Name} allows {context.MaxSharedBytesPerBlock}.");
            CompiledKernel image = s_images.GetOrAdd((context, keyDim, type, gate, valueBlock, groups),
                _ => KernelCompiler.Build(Source, KernelCompiler.Source(Source), Options(keyDim, type, gate, valueBlock, groups), context.Architecture));
            f = new CudaKernelFunction(context, image, entry, smem);
            s_loaded[key] = f;
            return f;
        }
    }

    /// <summary>The NVRTC options of one specialisation.</summary>
    internal static string[] Options(int keyDim, ElementType type, int gate, int valueBlock, int groups) =>
    [
        $"-DDK={keyDim}",
        $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}",
        $"-DGATE={gate}",
        $"-DBV={valueBlock}",
        $"-DVH={groups}",
        "--use_fast_math",
        "--std=c++17",
    ];

    /// <summary>One line per loaded kernel: registers, local memory, compile time.</summary>
    public static IEnumerable<string> Describe()
    {
        foreach (KeyValuePair<(CudaContext, int, ElementType, int, int, int, string), CudaKernelFunction> entry in s_loaded)
        {
            (_, int dk, ElementType type, int gate, int bv, int groups, string kernel) = entry.Key;
            CudaKernelFunction f = entry.Value;
            string origin = f.Image.FromCache ? "from the disk cache" : string.Create(CultureInfo.InvariantCulture, $"compiled in {f.Image.CompileSeconds:F2} s");
            yield return $"{Source}:{kernel} Dk={dk} {type.ShortName()} gate={gate} BV={bv}x{groups}: {f.Registers} registers, {f.LocalBytes} B local, {origin}";
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Arguments
    {
        public ulong Q, K, V, O, Beta, Gate, HeadLogDecay, S0, ST, W, U, A, Seqs, Chunks, Hck, Dnew, Tout, Tin;
        public int Heads, KvHeads, Dv;
        public float Scale;
    }

    /// <summary>Frees the plan's device buffers (the loaded kernels stay for later plans).</summary>
    public void Dispose()
    {
        _headLogDecay.Dispose();
        _sequenceTable.Dispose();
        _chunkTable.Dispose();
        _w?.Dispose();
        _u?.Dispose();
        _a?.Dispose();
        _gatedQ?.Dispose();
        _decayedK?.Dispose();
        _chunkDecay?.Dispose();
        DisposeBackwardBuffers();
    }
}
