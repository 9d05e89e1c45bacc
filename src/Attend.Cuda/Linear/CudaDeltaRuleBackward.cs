using System.Collections.Concurrent;
using System.Globalization;
using Attend.Cuda.Interop;
using Attend.Linear;

namespace Attend.Cuda.Linear;

// The chunked backward of the delta rules (linear_delta_bwd.cu): recompute the forward's w, u, A and the state at each
// chunk's start (with δ), a reverse chain for the state gradient at each chunk's end (and dδ, dS0), then dq, dk, dv, dβ
// and d log α per chunk.
public sealed unsafe partial class CudaDeltaRulePlan
{
    internal const string BackwardSource = "linear_delta_bwd.cu";
    internal const string StateGradientEntry = "attend_delta_bwd_dstate", ChunkBackwardEntry = "attend_delta_bwd_chunk";

    /// <summary>The channel gate's (KDA's) chunk kernel, in GATE 2 builds of <see cref="BackwardSource"/>.</summary>
    internal const string KdaChunkBackwardEntry = "attend_kda_bwd_chunk";

    /// <summary>Threads per CTA of <c>attend_kda_bwd_chunk</c>.</summary>
    internal const int KdaChunkBackwardThreads = 256;

    /// <summary>Value columns per CTA of the reverse chain (<c>attend_delta_bwd_dstate</c>).</summary>
    internal const int BackwardValueBlock = 16;

    /// <summary>
    /// Warps per CTA of <c>attend_delta_bwd_chunk</c> by default: 8 (two warps per 16 token rows, each with half of every
    /// product's columns), as the one CTA that fits an SM (201 KB of shared memory at Dk = Dv = 128) is latency-bound at 4.
    /// </summary>
    internal const int DefaultChunkWarps = 8;

    private static readonly ConcurrentDictionary<(CudaContext, int, int, bool, ElementType, int, int, string), CudaKernelFunction> s_backwardLoaded = new();
    private static readonly ConcurrentDictionary<(CudaContext, int, int, bool, ElementType, int, int), CompiledKernel> s_backwardImages = new();

    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, int, int, int), CudaKernelFunction> s_recomputeLoaded = new();

    // attend_kda_prepare built with KDA_TOUT (it also writes T), the KDA backward's recomputation.
    private static readonly ConcurrentDictionary<(CudaContext, int, ElementType, int, int), CudaKernelFunction> s_kdaPrepareKeepingT = new();

    // CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: the recomputed chain and the reverse chain ask for all of an
    // SM's shared memory (100 %), so that one CTA of each fits an SM at once (78.5 + 126.5 KB at Dk = Dv = 128).
    private const int PreferredCarveoutAttribute = 9;

    private DeviceBuffer? _checkpoints, _stateGradients, _delta, _deltaGradient, _inverse;
    // The side stream of the backward's recomputed chain (it runs beside the reverse chain: both need only the first
    // kernel's w and A), and the events that fork it from and join it to the caller's stream.
    private CudaStream? _side;
    private CudaEvent? _fork, _join;
    // The inputs (the buffer objects of q, k, v, β, gate, initial state) whose forward values a Run with KeepForBackward
    // left in the buffers, and which (_keptMode); null when none (every Run resets it, a Backward that recomputes too).
    // Objects, not device addresses: a buffer freed after the Run and a new one the allocator puts at the same address
    // must not match.
    private (DeviceBuffer Q, DeviceBuffer K, DeviceBuffer V, DeviceBuffer? Beta, DeviceBuffer? Gate, DeviceBuffer? S0)? _kept;
    private CudaDeltaKeep _keptMode;

    /// <summary>
    /// What <see cref="Run"/> keeps for <see cref="Backward"/> (<see cref="CudaDeltaKeep.None"/> by default; the chunked
    /// form with no decay, a fixed γ or a scalar gate). <see cref="CudaDeltaKeep.Inverse"/> keeps T, as
    /// flash-linear-attention's forward keeps its A, and the backward recomputes w, u, A and the chain from it;
    /// <see cref="CudaDeltaKeep.All"/> also keeps the state at each chunk's start and δ, and the backward recomputes nothing.
    /// Only a <see cref="Backward"/> given the same q, k, v, β, gate and initial-state buffer objects as the last Run uses
    /// them (with other buffers it recomputes, even a new buffer at a freed one's address), and the caller must not change
    /// those buffers' contents in between (they are not read again to check). The price
    /// is memory: the first such Run allocates the backward's buffers (<see cref="BackwardBufferBytes"/>), and T
    /// (<c>[B, T, H, 64]</c>), or with All also the checkpoints (<c>[chunks, H, Dk, Dv]</c>) and δ (<c>[B, T, H, Dv]</c>),
    /// element type, hold the forward's values from the Run to the Backward. With the channel gate (KDA) a Run keeps
    /// nothing and the backward always recomputes.
    /// </summary>
    public CudaDeltaKeep KeepForBackward { get; set; }

    /// <summary>Warps per CTA of the backward's chunk kernel (4 or 8; <see cref="DefaultChunkWarps"/>); the bench's A/B switch.</summary>
    internal int ChunkWarps { get; set; } = DefaultChunkWarps;

    // The key of the inputs that the kept forward values belong to (compared by reference: DeviceBuffer has no value equality).
    private static (DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer?, DeviceBuffer?, DeviceBuffer?) InputKey(CudaTensor q, CudaTensor k, CudaTensor v,
        DeviceBuffer? beta, DeviceBuffer? gate, DeviceBuffer? initialState) =>
        (q.Buffer, k.Buffer, v.Buffer, beta, gate, initialState);

    /// <summary>
    /// How many of the backward's three stages <see cref="Backward"/> queues (3, all; the bench sets 1 for the forward's
    /// recomputation alone, 2 for it and the reverse chain, to split the time). The gradients are complete only at 3.
    /// </summary>
    internal int BackwardStages { get; set; } = 3;

    /// <summary>
    /// Whether <see cref="Backward"/> computes this configuration; otherwise <paramref name="reason"/> says why. The
    /// backward takes what the chunked forward takes: any value dim that is a multiple of 64 without a gate, with a fixed γ
    /// or a scalar gate (the chunk kernel runs one CTA per block of <see cref="BackwardValueColumns"/> value columns and adds
    /// the blocks' shares), value dims 64 and 128 with the channel gate (KDA).
    /// </summary>
    public static bool IsBackwardSupported(LinearShape shape, ElementType elementType, LinearAttentionOptions? options, out string reason)
    {
        options ??= new LinearAttentionOptions();
        if (!IsSupported(shape, elementType, options, out reason)) return false;
        reason = BackwardRefusal(shape, options.Form ?? LinearForm.Chunked, options.Decay ?? LinearDecay.None) ?? "";
        return reason.Length == 0;
    }

    // Why the backward cannot compute a configuration the forward takes, or null.
    internal static string? BackwardRefusal(LinearShape shape, LinearForm form, LinearDecay decay)
    {
        // Every decay the forward takes: none, fixed γ, scalar gate, channel gate (KDA; its chunk kernel holds the whole value dim).
        if (form != LinearForm.Chunked)
            return $"the CUDA delta-rule backward is the chunked form's; got form {form}";
        if (shape.ValueDim is not (64 or 128) && decay == LinearDecay.ChannelGate)
            return $"the CUDA delta-rule backward with the channel gate (KDA) takes value dims 64 and 128; got Dv = {shape.ValueDim}";
        if (shape.ValueDim <= 0 || shape.ValueDim % 64 != 0)
            return $"the CUDA delta-rule backward takes value dims that are multiples of 64; got Dv = {shape.ValueDim}";
        return null;
    }

    /// <summary>
    /// Value columns per CTA of <c>attend_delta_bwd_chunk</c> (its DV): 128 when they divide <paramref name="valueDim"/>,
    /// else 64. A chunk's state and state-gradient tiles of that width fit one CTA's shared memory; a wider value dim takes
    /// <c>valueDim / columns</c> CTAs per (chunk, query head), whose shares of dq, dk, dβ and d log α are added atomically
    /// (every gradient but dv is linear in the value columns' contributions) and which write dv for their own columns.
    /// </summary>
    internal static int BackwardValueColumns(int valueDim) => valueDim % 128 == 0 ? 128 : 64;

    /// <summary>
    /// Queues the gradients of <c>L = Σ dO·O + Σ dS_T·S_T</c> on <paramref name="stream"/>: the forward's first kernel
    /// and its chain again (keeping the state at each chunk's start and δ), the reverse chain (the state gradient at each
    /// chunk's end, dδ and <paramref name="initialStateGradient"/>), then dq, dk, dv, dβ and d log α per chunk. q, k, v,
    /// <paramref name="beta"/>, <paramref name="gate"/>, <paramref name="initialState"/> as for <see cref="Run"/>;
    /// <paramref name="outputGradient"/> like the output; <paramref name="finalStateGradient"/> float32
    /// <c>[N, H, Dk, Dv]</c> or null (zero). The gradients are float32: <paramref name="queryGradient"/>
    /// <c>[B, T, H, Dk]</c>, <paramref name="keyGradient"/> <c>[B, T, Hkv, Dk]</c> and <paramref name="valueGradient"/>
    /// <c>[B, T, Hkv, Dv]</c> (summed over the query heads of a group), <paramref name="betaGradient"/> <c>[B, T, H]</c>
    /// (only with β), <paramref name="gateGradient"/> dL/d(log α) <c>[B, T, H]</c> (only with a scalar gate; <c>[B, T, H, Dk]</c>
    /// with the channel gate, KDA, whose chunk kernel is <c>attend_kda_bwd_chunk</c>),
    /// <paramref name="initialStateGradient"/> <c>[N, H, Dk, Dv]</c>; each of the last three may be null (not wanted).
    /// The first call allocates the checkpoints (two <c>[chunks, H, Dk, Dv]</c>, two <c>[B, T, H, Dv]</c> and one
    /// <c>[B, T, H, 64]</c> array of the element type); later calls allocate nothing. The recomputed chain runs on the
    /// plan's own non-blocking side stream, forked from and joined back to <paramref name="stream"/> by events, so it
    /// overlaps the reverse chain on any stream, the legacy default stream (null) included; when the call returns,
    /// everything <paramref name="stream"/> queues afterwards (a copy of the gradients included) runs after the whole
    /// backward.
    /// </summary>
    /// <exception cref="NotSupportedException">A configuration <see cref="IsBackwardSupported"/> rejects.</exception>
    /// <exception cref="ArgumentException">Tensors that do not match the plan; the message names the argument.</exception>
    public void Backward(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? beta, DeviceBuffer? gate, DeviceBuffer? initialState,
        CudaTensor outputGradient, DeviceBuffer? finalStateGradient, DeviceBuffer queryGradient, DeviceBuffer keyGradient, DeviceBuffer valueGradient,
        DeviceBuffer? betaGradient, DeviceBuffer? gateGradient, DeviceBuffer? initialStateGradient, CudaStream? stream = null)
    {
        LinearShape s = Shape;
        if (BackwardRefusal(s, Form, Decay) is { } refusal) throw new NotSupportedException(refusal);
        ArgumentNullException.ThrowIfNull(queryGradient);
        ArgumentNullException.ThrowIfNull(keyGradient);
        ArgumentNullException.ThrowIfNull(valueGradient);
        LinearPlanInputs.RequireTensor(q, nameof(q), ElementType, Shape, s.Heads, s.KeyDim);
        LinearPlanInputs.RequireTensor(k, nameof(k), ElementType, Shape, s.KvHeads, s.KeyDim);
        LinearPlanInputs.RequireTensor(v, nameof(v), ElementType, Shape, s.KvHeads, s.ValueDim);
        LinearPlanInputs.RequireTensor(outputGradient, nameof(outputGradient), ElementType, Shape, s.Heads, s.ValueDim);
        long rows = (long)s.Batch * s.Tokens;
        long stateBytes = (long)_sequences * s.Heads * s.KeyDim * s.ValueDim * 4;
        if (beta is not null) RequireBytes(beta, nameof(beta), rows * s.Heads * 4);
        if (betaGradient is not null)
        {
            if (beta is null) throw new ArgumentException("betaGradient was given but beta was not (β = 1 has no gradient).", nameof(betaGradient));
            RequireBytes(betaGradient, nameof(betaGradient), rows * s.Heads * 4);
        }
        if (Decay == LinearDecay.ScalarGate)
        {
            if (gate is null) throw new ArgumentException($"Decay ScalarGate needs its float32 gate [B, T, H] ({rows * s.Heads * 4} bytes) for the backward.", nameof(gate));
            RequireBytes(gate, nameof(gate), rows * s.Heads * 4);
            if (gateGradient is not null) RequireBytes(gateGradient, nameof(gateGradient), rows * s.Heads * 4);
        }
        else if (Decay == LinearDecay.ChannelGate)
        {
            if (gate is null) throw new ArgumentException($"Decay ChannelGate needs its float32 gate [B, T, H, Dk] ({rows * s.Heads * s.KeyDim * 4} bytes) for the backward.", nameof(gate));
            RequireBytes(gate, nameof(gate), rows * s.Heads * s.KeyDim * 4);
            if (gateGradient is not null) RequireBytes(gateGradient, nameof(gateGradient), rows * s.Heads * s.KeyDim * 4);
        }
        else if (gate is not null || gateGradient is not null)
            throw new ArgumentException($"A gate (or gate gradient) was given but the decay is {Decay}.", gate is not null ? nameof(gate) : nameof(gateGradient));
        if (initialState is not null) RequireBytes(initialState, nameof(initialState), stateBytes);
        if (finalStateGradient is not null) RequireBytes(finalStateGradient, nameof(finalStateGradient), stateBytes);
        if (initialStateGradient is not null) RequireBytes(initialStateGradient, nameof(initialStateGradient), stateBytes);
        if (initialState is not null && initialStateGradient is not null
            && initialState.Pointer < initialStateGradient.Pointer + (ulong)stateBytes && initialStateGradient.Pointer < initialState.Pointer + (ulong)stateBytes)
            throw new ArgumentException("initialStateGradient overlaps initialState: the recomputed forward (on a side stream) may still read the initial state while the reverse chain writes its gradient; give the gradient its own buffer.", nameof(initialStateGradient));
        RequireBytes(queryGradient, nameof(queryGradient), rows * s.Heads * s.KeyDim * 4);
        RequireBytes(keyGradient, nameof(keyGradient), rows * s.KvHeads * s.KeyDim * 4);
        RequireBytes(valueGradient, nameof(valueGradient), rows * s.KvHeads * s.ValueDim * 4);
        if (_sequences == 0) return;

        // The gate kind of the build: 2, the channel gate (KDA), whose reverse chain reads Q̃, K̂ and e^{b_C} from
        // attend_kda_prepare and whose chunk kernel is attend_kda_bwd_chunk.
        int gateKind = Update != LinearUpdate.GatedDelta ? 0 : Decay == LinearDecay.ChannelGate ? 2 : 1;
        bool channelGate = gateKind == 2;
        CudaContext context = _context;
        int warps = ChunkWarps is 4 or 8 ? ChunkWarps : throw new InvalidOperationException($"ChunkWarps must be 4 or 8; got {ChunkWarps}.");
        CudaKernelFunction dstate = BackwardKernel(context, s.KeyDim, s.ValueDim, ElementType, gateKind, warps, StateGradientEntry, BackwardStateSharedBytes(s.KeyDim));
        CudaKernelFunction chunk = channelGate
            ? BackwardKernel(context, s.KeyDim, s.ValueDim, ElementType, gateKind, warps, KdaChunkBackwardEntry, KdaBackwardChunkSharedBytes(s.KeyDim, s.ValueDim))
            : BackwardKernel(context, s.KeyDim, s.ValueDim, ElementType, gateKind, warps, ChunkBackwardEntry, BackwardChunkSharedBytes(s.KeyDim, s.ValueDim));
        EnsureBackwardBuffers();
        if (s.Heads != s.KvHeads)
        {
            // Summed atomically over the query heads of a group: zeroed on the kernels' own stream, so any kind of stream orders the two.
            keyGradient.Fill(0, stream);
            valueGradient.Fill(0, stream);
        }
        // attend_delta_bwd_chunk's value blocks (grid.z): one at Dv 64 and 128, Dv / BackwardValueColumns(Dv) past them.
        int valueBlocks = channelGate ? 1 : s.ValueDim / BackwardValueColumns(s.ValueDim);
        if (valueBlocks > 1 && _chunks > 0 && BackwardStages >= 3)
        {
            // The value blocks' shares of dq, dk, dβ and d log α are added atomically (dv: each block's own columns).
            queryGradient.Fill(0, stream);
            if (s.Heads == s.KvHeads) keyGradient.Fill(0, stream);
            betaGradient?.Fill(0, stream);
            gateGradient?.Fill(0, stream);
        }

        var a = new Arguments
        {
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, O = 0,
            Beta = beta?.Pointer ?? 0, Gate = gate?.Pointer ?? 0, HeadLogDecay = _fixedDecay ? _headLogDecay.Pointer : 0,
            S0 = initialState?.Pointer ?? 0, ST = 0,
            W = _w!.Pointer, U = _u!.Pointer, A = _a!.Pointer,
            Seqs = _sequenceTable.Pointer, Chunks = _chunkTable.Pointer, Hck = _checkpoints!.Pointer, Dnew = _delta!.Pointer, Tout = _inverse!.Pointer,
            Heads = s.Heads, KvHeads = s.KvHeads, Dv = s.ValueDim, Scale = _scale,
        };
        // 1. The forward again: w, u, A and T, then the chain keeping the state at each chunk's start and δ (no output);
        // skipped when a Run with KeepForBackward left them for these inputs.
        bool forked = false;
        // (A KDA Run keeps nothing: its backward always recomputes.)
        CudaDeltaKeep kept = !channelGate && KeepForBackward != CudaDeltaKeep.None && _kept == InputKey(q, k, v, beta, gate, initialState) ? _keptMode : CudaDeltaKeep.None;
        if (kept == CudaDeltaKeep.None) _kept = null;   // the recomputation below overwrites what a Run kept
        if (_chunks > 0 && kept != CudaDeltaKeep.All)
        {
            if (kept == CudaDeltaKeep.Inverse)
            {
                a.Tin = a.Tout;   // T as the forward wrote it: read, not written
                a.Tout = 0;
            }
            Arguments chainArgs = a;
            if (channelGate)
            {
                // KDA: w, u, A, Q̃, K̂ and e^{b_C} (as the forward) and T (for the chunk kernel); the chain reads Q̃, K̂, e^{b_C}
                // in place of q, k and the gate.
                LaunchKdaPrepareKeepingT(&a, stream);
                chainArgs.Q = _gatedQ!.Pointer;
                chainArgs.K = _decayedK!.Pointer;
                chainArgs.Gate = _chunkDecay!.Pointer;
                chainArgs.HeadLogDecay = 0;
            }
            else
            {
                void** p = stackalloc void*[15];
                p[0] = &a.Q; p[1] = &a.K; p[2] = &a.V; p[3] = &a.Beta; p[4] = &a.Gate; p[5] = &a.HeadLogDecay; p[6] = &a.W; p[7] = &a.U;
                p[8] = &a.A; p[9] = &a.Chunks; p[10] = &a.Heads; p[11] = &a.KvHeads; p[12] = &a.Dv; p[13] = &a.Tout; p[14] = &a.Tin;
                _prepare!.Launch((uint)_chunks, (uint)s.Heads, 1, Threads, (uint)PrepareSharedBytes(s.KeyDim), stream, p);
            }
            // The chain (checkpoints and δ, no output) on the side stream, after the first kernel; the reverse chain below
            // needs only w and A, so the two sequential kernels share the SMs.
            _fork!.Record(stream);
            CudaException.CheckDriver(Driver.cuStreamWaitEvent(_side!.Handle, _fork.Handle, 0), nameof(Driver.cuStreamWaitEvent));
            LaunchRecomputeChain(&chainArgs, _side);
            _join!.Record(_side);
            forked = true;
        }
        if (BackwardStages < 2)
        {
            if (forked) Join(stream);
            return;
        }

        // 2. The reverse chain: the state gradient at each chunk's end, dδ, dS0.
        var b = new BackwardArguments
        {
            Q = a.Q, K = a.K, V = a.V, DO = outputGradient.Buffer.Pointer, Dnew = a.Dnew, DDelta = _deltaGradient!.Pointer, W = a.W, U = a.U, A = a.A, T = _inverse!.Pointer,
            Hck = a.Hck, DHck = _stateGradients!.Pointer, Beta = a.Beta, Gate = a.Gate, HeadLogDecay = a.HeadLogDecay,
            DST = finalStateGradient?.Pointer ?? 0, DS0 = initialStateGradient?.Pointer ?? 0,
            DQ = queryGradient.Pointer, DK = keyGradient.Pointer, DV = valueGradient.Pointer, DBeta = betaGradient?.Pointer ?? 0, DGate = gateGradient?.Pointer ?? 0,
            Seqs = a.Seqs, Chunks = a.Chunks, Heads = s.Heads, KvHeads = s.KvHeads, Dv = s.ValueDim, Scale = _scale,
        };
        // The reverse chain of the channel gate reads Q̃, K̂ and e^{b_C} (what the recomputation wrote) where the others read
        // q, k and the raw gate; the chunk kernels read the raw inputs.
        BackwardArguments rb = b;
        if (channelGate)
        {
            rb.Q = _gatedQ!.Pointer;
            rb.K = _decayedK!.Pointer;
            rb.Gate = _chunkDecay!.Pointer;
            rb.HeadLogDecay = 0;
        }
        void** r = stackalloc void*[16];
        r[0] = &rb.Q; r[1] = &rb.K; r[2] = &rb.W; r[3] = &rb.A; r[4] = &rb.DO; r[5] = &rb.Gate; r[6] = &rb.HeadLogDecay; r[7] = &rb.DST;
        r[8] = &rb.DS0; r[9] = &rb.DHck; r[10] = &rb.DDelta; r[11] = &rb.Seqs; r[12] = &rb.Heads; r[13] = &rb.KvHeads; r[14] = &rb.Dv; r[15] = &rb.Scale;
        try
        {
            dstate.Launch((uint)(s.ValueDim / BackwardValueBlock), (uint)s.Heads, (uint)_sequences, Threads, (uint)BackwardStateSharedBytes(s.KeyDim), stream, r);
        }
        finally
        {
            // Also when the launch throws: the caller's stream must not run ahead of the side chain still reading w, u, A.
            if (forked) Join(stream);
        }
        if (_chunks == 0 || BackwardStages < 3) return;

        // 3. dq, dk, dv, dβ, d log α per (chunk, query head).
        if (channelGate)
        {
            // T as attend_kda_prepare wrote it (its Tout) in step 1.
            void** kc = stackalloc void*[22];
            kc[0] = &b.Q; kc[1] = &b.K; kc[2] = &b.V; kc[3] = &b.DO; kc[4] = &b.Dnew; kc[5] = &b.DDelta; kc[6] = &b.W; kc[7] = &b.U;
            kc[8] = &b.T; kc[9] = &b.Hck; kc[10] = &b.DHck; kc[11] = &b.Beta; kc[12] = &b.Gate; kc[13] = &b.DQ; kc[14] = &b.DK; kc[15] = &b.DV;
            kc[16] = &b.DBeta; kc[17] = &b.DGate; kc[18] = &b.Chunks; kc[19] = &b.Heads; kc[20] = &b.KvHeads; kc[21] = &b.Scale;
            chunk.Launch((uint)_chunks, (uint)s.Heads, 1, KdaChunkBackwardThreads, (uint)KdaBackwardChunkSharedBytes(s.KeyDim, s.ValueDim), stream, kc);
            return;
        }
        void** c = stackalloc void*[23];
        c[0] = &b.Q; c[1] = &b.K; c[2] = &b.V; c[3] = &b.DO; c[4] = &b.Dnew; c[5] = &b.DDelta; c[6] = &b.W; c[7] = &b.U; c[8] = &b.T;
        c[9] = &b.Hck; c[10] = &b.DHck; c[11] = &b.Beta; c[12] = &b.Gate; c[13] = &b.HeadLogDecay; c[14] = &b.DQ; c[15] = &b.DK; c[16] = &b.DV;
        c[17] = &b.DBeta; c[18] = &b.DGate; c[19] = &b.Chunks; c[20] = &b.Heads; c[21] = &b.KvHeads; c[22] = &b.Scale;
        // grid.z: the value blocks (one at Dv 64 and 128; past them a WIDE build, whose dv is DV · gridDim.z and which adds its
        // shares atomically).
        chunk.Launch((uint)_chunks, (uint)s.Heads, (uint)valueBlocks, (uint)(32 * warps), (uint)BackwardChunkSharedBytes(s.KeyDim, s.ValueDim), stream, c);
    }

    // attend_kda_prepare built with KDA_TOUT, with the arguments in `a` as LaunchKdaPrepare takes them, and T written to
    // a->Tout (the forward's own build writes no T: the store cost its forward about 0.1 ms at T = 16k).
    private void LaunchKdaPrepareKeepingT(Arguments* a, CudaStream? stream)
    {
        if (_chunks == 0) return;
        LinearShape s = Shape;
        int smem = KdaPrepareKeepingTSharedBytes(s.KeyDim);
        var key = (_context, s.KeyDim, ElementType, ValueBlock, ValueGroups);
        if (!s_kdaPrepareKeepingT.TryGetValue(key, out CudaKernelFunction? f))
        {
            lock (s_gate)
            {
                if (!s_kdaPrepareKeepingT.TryGetValue(key, out f))
                {
                    string[] options = [.. Options(s.KeyDim, ElementType, 2, ValueBlock, ValueGroups), "-DKDA_TOUT=1"];
                    CompiledKernel image = KernelCompiler.Build(Source, KernelCompiler.Source(Source), options, _context.Architecture);
                    f = new CudaKernelFunction(_context, image, KdaPrepareEntry, smem);
                    s_kdaPrepareKeepingT[key] = f;
                }
            }
        }
        ulong qg = _gatedQ!.Pointer, kh = _decayedK!.Pointer, dec = _chunkDecay!.Pointer;
        void** p = stackalloc void*[16];
        p[0] = &a->Q; p[1] = &a->K; p[2] = &a->V; p[3] = &a->Beta; p[4] = &a->Gate; p[5] = &a->W; p[6] = &a->U; p[7] = &a->A;
        p[8] = &qg; p[9] = &kh; p[10] = &dec; p[11] = &a->Chunks; p[12] = &a->Heads; p[13] = &a->KvHeads; p[14] = &a->Dv; p[15] = &a->Tout;
        f.Launch((uint)_chunks, (uint)s.Heads, 1, Threads, (uint)smem, stream, p);
    }

    /// <summary>Dynamic shared memory of <c>attend_kda_prepare</c> built with KDA_TOUT: the forward's, and T staged for Tout.</summary>
    internal static int KdaPrepareKeepingTSharedBytes(int keyDim) => KdaPrepareSharedBytes(keyDim) + Chunk * 64 * 2;

    // The caller's stream waits for the side stream's recomputed chain.
    private void Join(CudaStream? stream) =>
        CudaException.CheckDriver(Driver.cuStreamWaitEvent(stream?.Handle ?? 0, _join!.Handle, 0), nameof(Driver.cuStreamWaitEvent));

    // attend_delta_chunk compiled with CHAIN_NOOUT (no q, A tiles: the checkpoints Hck and δ only) with the arguments in `a`.
    private void LaunchRecomputeChain(Arguments* a, CudaStream stream)
    {
        LinearShape s = Shape;
        // The chain's gate kind as the plan compiled it (2, the channel gate, reads Q̃, K̂ and e^{b_C} from attend_kda_prepare).
        int gateKind = Update != LinearUpdate.GatedDelta ? 0 : Decay == LinearDecay.ChannelGate ? 2 : 1;
        int smem = RecomputeChainSharedBytes(s.KeyDim, ValueBlock, ValueGroups);
        var key = (_context, s.KeyDim, ElementType, gateKind, ValueBlock, ValueGroups);
        if (!s_recomputeLoaded.TryGetValue(key, out CudaKernelFunction? f))
        {
            lock (s_gate)
            {
                if (!s_recomputeLoaded.TryGetValue(key, out f))
                {
                    string[] options = [.. Options(s.KeyDim, ElementType, gateKind, ValueBlock, ValueGroups), "-DCHAIN_NOOUT=1"];
                    CompiledKernel image = KernelCompiler.Build(Source, KernelCompiler.Source(Source), options, _context.Architecture);
                    f = new CudaKernelFunction(_context, image, ChunkEntry, smem);
                    CudaException.CheckDriver(Driver.cuFuncSetAttribute(f.Function, PreferredCarveoutAttribute, 100), nameof(Driver.cuFuncSetAttribute));
                    s_recomputeLoaded[key] = f;
                }
            }
        }
        void** c = stackalloc void*[17];
        c[0] = &a->Q; c[1] = &a->K; c[2] = &a->W; c[3] = &a->U; c[4] = &a->A; c[5] = &a->Gate; c[6] = &a->HeadLogDecay; c[7] = &a->S0;
        c[8] = &a->ST; c[9] = &a->O; c[10] = &a->Seqs; c[11] = &a->Heads; c[12] = &a->KvHeads; c[13] = &a->Dv; c[14] = &a->Scale;
        c[15] = &a->Hck; c[16] = &a->Dnew;
        f.Launch((uint)(s.ValueDim / (ValueBlock * ValueGroups)), (uint)s.Heads, (uint)_sequences, (uint)(Threads * ValueGroups), (uint)smem, stream, c);
    }

    /// <summary>
    /// Dynamic shared memory of <c>attend_delta_chunk</c> compiled with CHAIN_NOOUT (its C_OFF_* layout without q and A):
    /// two stages of k, w, gates and each group's u, then per group two state tiles and δ.
    /// </summary>
    internal static int RecomputeChainSharedBytes(int keyDim, int valueBlock, int valueGroups)
    {
        int stage = 2 * Chunk * keyDim * 2 + valueGroups * Chunk * valueBlock * 2 + Chunk * 4;
        return 2 * stage + valueGroups * (2 * keyDim * valueBlock * 2 + Chunk * valueBlock * 2);
    }

    /// <summary>
    /// Dynamic shared memory of <c>attend_delta_bwd_dstate</c> (mirrors its R_OFF_* layout): two stages of q, k, w, A, the
    /// dO slice and the raw gates, two X tiles and dδ.
    /// </summary>
    internal static int BackwardStateSharedBytes(int keyDim)
    {
        int stage = 3 * Chunk * keyDim * 2 + Chunk * 64 * 2 + Chunk * BackwardValueBlock * 2 + Chunk * 4;
        return 2 * stage + 2 * keyDim * BackwardValueBlock * 2 + Chunk * BackwardValueBlock * 2;
    }

    /// <summary>
    /// Dynamic shared memory of <c>attend_delta_bwd_chunk</c> (mirrors its B_OFF_* layout): q, k, v, dO, δ, dδ, the state and
    /// state-gradient tiles, dw, T, two 64 × 64 tiles, and five float32 rows; the value tiles are the kernel's value block of
    /// <see cref="BackwardValueColumns"/>(<paramref name="valueDim"/>) columns (the tensors' value dim itself at 64 and 128).
    /// </summary>
    internal static int BackwardChunkSharedBytes(int keyDim, int valueDim) => ChunkSharedBytesOfBlock(keyDim, BackwardValueColumns(valueDim));

    private static int ChunkSharedBytesOfBlock(int keyDim, int dv) =>
        2 * Chunk * keyDim * 2 + 4 * Chunk * dv * 2 + 2 * keyDim * dv * 2 + Chunk * keyDim * 2 + 3 * Chunk * 64 * 2 + 4 * Chunk * 4 + 16 * 4;

    /// <summary>
    /// Shared memory of <c>attend_kda_bwd_chunk</c> (mirrors its KB_OFF_* layout): b (float32 <c>[64][Dk]</c>), q, k, dA, T,
    /// then four regions that phases reuse (dO and S, later w, u, v, later the decayed K_end, Q_st, βK_st; X, later K̂ ⊙ dK̂
    /// in float32; δ, later P and G; dδ and dw, later db in float32), β, dβ, the state term (<c>[Dk]</c>) and the scans' partial
    /// sums (two per thread): 216,064 bytes at Dk = Dv = 128 (one CTA per SM).
    /// </summary>
    internal static int KdaBackwardChunkSharedBytes(int keyDim, int valueDim)
    {
        int qb = Chunk * keyDim * 2, vb = Chunk * valueDim * 2, sb = keyDim * valueDim * 2, mb = Chunk * 64 * 2, fb = Chunk * keyDim * 4;
        return fb + 2 * qb + 2 * mb + Math.Max(Math.Max(vb + sb, qb + 2 * vb), 3 * qb) + Math.Max(sb, fb) + Math.Max(vb, 2 * mb)
            + Math.Max(vb + qb, fb) + 2 * Chunk * 4 + keyDim * 4 + 2 * KdaChunkBackwardThreads * 4;
    }

    /// <summary>The NVRTC options of one backward specialisation.</summary>
    internal static string[] BackwardOptions(int keyDim, int valueDim, ElementType type, int gate, int chunkWarps = DefaultChunkWarps, bool wide = false) =>
    [
        $"-DDK={keyDim}",
        $"-DDV={valueDim}",
        $"-DWIDE={(wide ? 1 : 0)}",
        $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}",
        $"-DGATE={gate}",
        $"-DCW={chunkWarps}",
        "--use_fast_math",
        "--std=c++17",
    ];

    // valueDim: the tensors' value dim. The build's DV is the chunk kernel's value block (BackwardValueColumns: the value dim
    // itself at 64 and 128; the reverse chain reads only its dv argument, 16 columns per CTA, never DV, so it shares the
    // build), or with the channel gate the whole value dim (attend_kda_bwd_chunk holds it). Value dims past the block are a
    // WIDE build (the strides and the atomic adds of the value blocks' shares at run time); 64 and 128 keep compile-time
    // strides and plain stores.
    private static CudaKernelFunction BackwardKernel(CudaContext context, int keyDim, int valueDim, ElementType type, int gate, int warps, string entry, int smem)
    {
        bool wide = gate != 2 && BackwardValueColumns(valueDim) != valueDim;
        if (gate != 2) valueDim = BackwardValueColumns(valueDim);
        var key = (context, keyDim, valueDim, wide, type, gate, warps, entry);
        if (s_backwardLoaded.TryGetValue(key, out CudaKernelFunction? f)) return f;
        lock (s_gate)
        {
            if (s_backwardLoaded.TryGetValue(key, out f)) return f;
            if (smem > context.MaxSharedBytesPerBlock)
                throw new NotSupportedException($"{BackwardSource}:{entry} at Dk = {keyDim}, Dv = {valueDim} needs {smem} bytes of shared memory per block; {context.Name} allows {context.MaxSharedBytesPerBlock}.");
            CompiledKernel image = s_backwardImages.GetOrAdd((context, keyDim, valueDim, wide, type, gate, warps),
                _ => KernelCompiler.Build(BackwardSource, KernelCompiler.Source(BackwardSource), BackwardOptions(keyDim, valueDim, type, gate, warps, wide), context.Architecture));
            f = new CudaKernelFunction(context, image, entry, smem);
            if (entry == StateGradientEntry)
                CudaException.CheckDriver(Driver.cuFuncSetAttribute(f.Function, PreferredCarveoutAttribute, 100), nameof(Driver.cuFuncSetAttribute));
            s_backwardLoaded[key] = f;
            return f;
        }
    }

    /// <summary>One line per loaded backward kernel: registers, local memory, compile time.</summary>
    public static IEnumerable<string> DescribeBackward()
    {
        foreach (KeyValuePair<(CudaContext, int, int, bool, ElementType, int, int, string), CudaKernelFunction> entry in s_backwardLoaded)
        {
            (_, int dk, int dv, bool wide, ElementType type, int gate, int warps, string kernel) = entry.Key;
            CudaKernelFunction f = entry.Value;
            string origin = f.Image.FromCache ? "from the disk cache" : string.Create(CultureInfo.InvariantCulture, $"compiled in {f.Image.CompileSeconds:F2} s");
            yield return $"{BackwardSource}:{kernel} Dk={dk} Dv={dv}{(wide ? " wide" : "")} {type.ShortName()} gate={gate} CW={warps}: {f.Registers} registers, {f.LocalBytes} B local, {origin}";
        }
    }

    /// <summary>Bytes of the backward's buffers (allocated by the first Backward, or by the first Run with a <see cref="KeepForBackward"/>).</summary>
    public long BackwardBufferBytes
    {
        get
        {
            LinearShape s = Shape;
            long stateElements = (long)_chunks * s.Heads * s.KeyDim * s.ValueDim;
            long valueElements = (long)s.Batch * s.Tokens * s.Heads * s.ValueDim;
            return 2 * (2 * stateElements + 2 * valueElements + (long)s.Batch * s.Tokens * s.Heads * Chunk);
        }
    }

    // Allocates the backward's buffers once (the checkpoints, state gradients, δ, dδ and T).
    private void EnsureBackwardBuffers()
    {
        if (_checkpoints is not null) return;
        LinearShape s = Shape;
        long stateElements = (long)_chunks * s.Heads * s.KeyDim * s.ValueDim;
        long valueElements = (long)s.Batch * s.Tokens * s.Heads * s.ValueDim;
        _checkpoints = new DeviceBuffer(_context, Math.Max(4, stateElements * 2));
        _stateGradients = new DeviceBuffer(_context, Math.Max(4, stateElements * 2));
        _delta = new DeviceBuffer(_context, Math.Max(4, valueElements * 2));
        _deltaGradient = new DeviceBuffer(_context, Math.Max(4, valueElements * 2));
        _inverse = new DeviceBuffer(_context, Math.Max(4, (long)s.Batch * s.Tokens * s.Heads * Chunk * 2));
        // Non-blocking: a blocking side stream would serialise with the legacy default stream (a null stream argument),
        // and the recomputed chain would no longer overlap the reverse chain there; the fork and join events order it.
        _side = new CudaStream(_context, nonBlocking: true);
        _fork = new CudaEvent(_context);
        _join = new CudaEvent(_context);
    }

    private void DisposeBackwardBuffers()
    {
        _checkpoints?.Dispose();
        _stateGradients?.Dispose();
        _delta?.Dispose();
        _deltaGradient?.Dispose();
        _inverse?.Dispose();
        _side?.Dispose();
        _fork?.Dispose();
        _join?.Dispose();
    }

    private static void RequireBytes(DeviceBuffer buffer, string name, long bytes)
    {
        ArgumentNullException.ThrowIfNull(buffer, name);
        if (buffer.Bytes < bytes) throw new ArgumentException($"{name} holds {buffer.Bytes} bytes; it needs {bytes}.", name);
    }

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct BackwardArguments
    {
        public ulong Q, K, V, DO, Dnew, DDelta, W, U, A, T, Hck, DHck, Beta, Gate, HeadLogDecay, DST, DS0, DQ, DK, DV, DBeta, DGate, Seqs, Chunks;
        public int Heads, KvHeads, Dv;
        public float Scale;
    }
}
