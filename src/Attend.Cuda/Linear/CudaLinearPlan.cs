using System.Runtime.InteropServices;
using Attend.Linear;

namespace Attend.Cuda.Linear;

/// <summary>
/// A linear-attention call prepared for the GPU (additive update; feature map identity, elu+1 or ReLU, applied to q and
/// k by a device pre-pass; no normalisation or the denominator one; decay none, a fixed scalar per head, a scalar gate
/// per token or a gate per key channel): the segment table, the per-head decays
/// and the scratch for the segments' local states uploaded once, the kernel loaded. <see cref="Run"/> then only
/// launches. Tensors stay on the device: q <c>[B, T, H, Dk]</c>, k <c>[B, T, Hkv, Dk]</c>, v <c>[B, T, Hkv, Dv]</c>,
/// output <c>[B, T, H, Dv]</c> in bf16 or fp16; gates (log α ≤ 0), initial and final states <c>[N, H, Dk, Dv]</c> in
/// float32. A varlen call (offsets) has B = 1 and one state per sequence.
/// </summary>
/// <remarks>
/// The chunked form splits each sequence into segments of whole 64-token chunks so the grid fills the GPU: the local
/// states of all but the last segment are computed first (pass 0), then every segment starts from the sequence's
/// initial state folded with the local states before it and writes its outputs (pass 1). The recurrent form walks the
/// tokens one by one with the state in registers (decode). <see cref="LinearAttentionOptions.ChunkSize"/> and
/// <see cref="LinearAttentionOptions.Threads"/> apply to the CPU engine only: the CUDA chunk is 64 tokens.
/// With the denominator normalisation the states are the CPU's augmented <c>[N, H, Dk, Dv + 1]</c> (z last): a second
/// run of the same kernel over a unit value column computes the denominator <c>scale · φ(q_t)·z_t</c> (decayed like the
/// state), and an element-wise pass divides the output by it plus ε.
/// </remarks>
public sealed unsafe class CudaLinearPlan : IDisposable
{
    private const int MaxSegmentsPerSequence = 32;
    private readonly CudaContext _context;
    private readonly CudaKernelFunction _kernel;
    private readonly CudaLinearGate _gate;
    private readonly DeviceBuffer _segments, _partSegments, _partState, _partDecay, _headLogDecay;
    private readonly int _segmentCount, _partCount, _sequences;
    private readonly float _scale;
    private readonly int[] _starts, _lengths;
    // The backward's tables and checkpoints, made at its first call: the chunk table, the segments' local state
    // gradients, the state at each chunk's start and the state gradient at each chunk's end ([chunks, H, Dk, Dv] in the element type).
    private DeviceBuffer? _chunkTable, _partStateGradient, _partDecayGradient, _chunkStates, _chunkStateGradients;
    // The element-wise passes (null without a feature map or the denominator): φ(q), φ(k); the denominator's own plan,
    // unit value column, read-out and states; the states' main [N, H, Dk, Dv] parts.
    private readonly CudaLinearFeatureMap _map;
    private readonly float _epsilon;
    private readonly CudaLinearPlan? _denominatorPlan;
    private readonly CudaTensor? _mappedQ, _mappedK, _unitValues, _denominator;
    private readonly DeviceBuffer? _initialMain, _finalMain, _initialZ, _finalZ;
    // The final states [N, H, Dk, Dv] float32, written by the backward's forward sweep when the gate gradient is wanted.
    private DeviceBuffer? _finalStateScratch;
    private int _chunkCount;

    /// <summary>Plans a call of <paramref name="shape"/> with <paramref name="options"/> (form chunked or recurrent).</summary>
    /// <exception cref="NotSupportedException">A configuration the CUDA kernels do not compute; the message says why.</exception>
    /// <exception cref="ArgumentException">Invalid options or offsets (as on the CPU).</exception>
    public CudaLinearPlan(CudaContext context, LinearShape shape, ElementType elementType, LinearAttentionOptions? options, SeqOffsets? offsets = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        options ??= new LinearAttentionOptions();
        if (!IsSupported(shape, elementType, options, out string reason)) throw new NotSupportedException(reason);
        if (shape.Batch < 0 || shape.Tokens < 0 || shape.Heads <= 0 || shape.KvHeads <= 0 || shape.Heads % shape.KvHeads != 0)
            throw new ArgumentException($"Shape {shape}: B and T must not be negative and H must be a positive multiple of Hkv.", nameof(shape));
        if (offsets is not null && (shape.Batch != 1 || offsets.TotalTokens != shape.Tokens))
            throw new ArgumentException($"A varlen call needs B = 1 and offsets covering T = {shape.Tokens} tokens; got B = {shape.Batch}, {offsets.TotalTokens} tokens.", nameof(offsets));
        _context = context;
        Shape = shape;
        ElementType = elementType;
        Form = options.Form ?? LinearForm.Chunked;
        _scale = options.Scale ?? 1f;
        if (!float.IsFinite(_scale)) throw new ArgumentException($"Scale must be finite; got {_scale}.", nameof(options));
        Decay = options.Decay ?? (options.HeadDecay != null ? LinearDecay.FixedPerHead : LinearDecay.None);
        _gate = Decay switch
        {
            LinearDecay.None => CudaLinearGate.None,
            LinearDecay.ChannelGate => CudaLinearGate.Channel,
            _ => CudaLinearGate.Scalar,
        };
        float[] logDecay = LinearPlanInputs.LogHeadDecay(options, Decay, shape.Heads);

        // Sequences: (first token in the flattened [B·T] axis, length).
        (int[] starts, int[] lengths) = LinearPlanInputs.Sequences(shape, offsets);
        _sequences = starts.Length;

        _starts = starts;
        _lengths = lengths;
        _kernel = Form == LinearForm.Recurrent
            ? CudaLinearKernels.Recurrent(context, shape.KeyDim, elementType, _gate)
            : CudaLinearKernels.Chunked(context, shape.KeyDim, elementType, _gate);

        _map = MapOf(options.FeatureMap);
        Normalization = options.Normalization ?? LinearNormalization.None;
        _epsilon = options.Epsilon ?? 1e-6f;
        if (!(_epsilon >= 0f) || !float.IsFinite(_epsilon)) throw new ArgumentException($"Epsilon must be finite and ≥ 0; got {_epsilon}.", nameof(options));
        var owned = new List<DeviceBuffer>();
        try
        {
            if (_map != CudaLinearFeatureMap.Identity)
            {
                _mappedQ = CudaTensor.Create(context, elementType, shape.Batch, shape.Tokens, shape.Heads, shape.KeyDim);
                owned.Add(_mappedQ.Buffer);
                _mappedK = CudaTensor.Create(context, elementType, shape.Batch, shape.Tokens, shape.KvHeads, shape.KeyDim);
                owned.Add(_mappedK.Buffer);
            }
            if (Normalization == LinearNormalization.Denominator)
            {
                // The denominator's run: the same decay on a value block whose column 0 is 1 (a channel gate's kernel takes 128 columns).
                int zc = DenominatorColumns(Decay);
                _denominatorPlan = new CudaLinearPlan(context, shape with { ValueDim = zc }, elementType,
                    options with { FeatureMap = FeatureMaps.Identity, Normalization = LinearNormalization.None }, offsets);
                _unitValues = CudaTensor.Create(context, elementType, shape.Batch, shape.Tokens, shape.KvHeads, zc);
                owned.Add(_unitValues.Buffer);
                _denominator = CudaTensor.Create(context, elementType, shape.Batch, shape.Tokens, shape.Heads, zc);
                owned.Add(_denominator.Buffer);
                long rows = Math.Max(1L, (long)(offsets?.Count ?? shape.Batch) * shape.Heads * shape.KeyDim);
                _initialMain = Track(new DeviceBuffer(context, rows * shape.ValueDim * 4), owned);
                _finalMain = Track(new DeviceBuffer(context, rows * shape.ValueDim * 4), owned);
                _initialZ = Track(new DeviceBuffer(context, rows * zc * 4), owned);
                _finalZ = Track(new DeviceBuffer(context, rows * zc * 4), owned);
                long units = (long)shape.Batch * shape.Tokens * shape.KvHeads;
                int zcArg = zc;
                void** u = stackalloc void*[3];
                ulong x = _unitValues.Buffer.Pointer;
                u[0] = &x; u[1] = &units; u[2] = &zcArg;
                LaunchElementwise("attend_linear_unit_column", units * zc, u);
            }
            _headLogDecay = Track(DeviceBuffer.From<float>(context, logDecay), owned);
            if (Form == LinearForm.Recurrent)
            {
                var table = new int[Math.Max(1, _sequences) * 2];
                for (int n = 0; n < _sequences; n++) { table[2 * n] = starts[n]; table[2 * n + 1] = lengths[n]; }
                _segments = Track(DeviceBuffer.From<int>(context, table), owned);
                _segmentCount = _sequences;
                _partSegments = Track(new DeviceBuffer(context, 4), owned);
                _partState = Track(new DeviceBuffer(context, 4), owned);
                _partDecay = Track(new DeviceBuffer(context, 4), owned);
            }
            else
            {
                int slots = context.Multiprocessors * CudaLinearKernels.ChunkCtasPerSm(shape.KeyDim, _gate);
                (int[] all, int[] parts, int segmentCount, int partCount) = BuildSegments(slots, CudaLinearKernels.ChunkColumnsFor(_gate), shape, starts, lengths);
                _segmentCount = segmentCount;
                _partCount = partCount;
                _segments = Track(DeviceBuffer.From<int>(context, all), owned);
                _partSegments = Track(DeviceBuffer.From<int>(context, parts), owned);
                _partState = Track(new DeviceBuffer(context, Math.Max(1L, (long)partCount * shape.Heads * shape.KeyDim * shape.ValueDim) * 4), owned);
                _partDecay = Track(new DeviceBuffer(context, Math.Max(1L, (long)partCount * shape.Heads * shape.KeyDim) * 4), owned);
            }
        }
        catch
        {
            foreach (DeviceBuffer b in owned) b.Dispose();
            _denominatorPlan?.Dispose();
            throw;
        }
    }

    // The value columns of the denominator's run: 64, or 128 for the channel gate's kernel (two 64-column halves).
    private static int DenominatorColumns(LinearDecay decay) => decay == LinearDecay.ChannelGate ? 2 * CudaLinearKernels.ValueBlock : CudaLinearKernels.ValueBlock;

    private static CudaLinearFeatureMap MapOf(FeatureMap? map) =>
        map is null || ReferenceEquals(map, FeatureMaps.Identity) ? CudaLinearFeatureMap.Identity
        : ReferenceEquals(map, FeatureMaps.EluPlusOne) ? CudaLinearFeatureMap.EluPlusOne
        : ReferenceEquals(map, FeatureMaps.Relu) ? CudaLinearFeatureMap.Relu
        : CudaLinearFeatureMap.Unsupported;

    // One grid-stride launch of an element-wise kernel of linear_prep.cu over `count` elements.
    private void LaunchElementwise(string entry, long count, void** arguments, CudaStream? stream = null)
    {
        if (count <= 0) return;
        CudaKernelFunction f = CudaLinearKernels.Prep(_context, ElementType, entry);
        uint blocks = (uint)Math.Min((count + 255) / 256, 8L * _context.Multiprocessors * 4);
        f.Launch(blocks, 1, 1, 256, 0, stream, arguments);
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

    /// <summary>The decay kind.</summary>
    public LinearDecay Decay { get; }

    /// <summary>The normalisation (none or the denominator).</summary>
    public LinearNormalization Normalization { get; }

    /// <summary>Segments the chunked form runs (CTAs per head and value block); the sequences for the recurrent form.</summary>
    public int Segments => _segmentCount;

    /// <summary>Registers per thread of the loaded kernel.</summary>
    public int KernelRegisters => _kernel.Registers;

    /// <summary>Whether the CUDA kernels compute this configuration; otherwise <paramref name="reason"/> says why.</summary>
    public static bool IsSupported(LinearShape shape, ElementType elementType, LinearAttentionOptions? options, out string reason)
    {
        options ??= new LinearAttentionOptions();
        LinearForm form = options.Form ?? LinearForm.Chunked;
        reason = "";
        if (elementType is not (ElementType.BFloat16 or ElementType.Float16))
            reason = $"the CUDA linear kernels take bf16 or fp16 tensors (tensor cores); got {elementType.ShortName()}";
        else if (form == LinearForm.Naive)
            reason = "the naive form is the float64 CPU reference";
        else if (MapOf(options.FeatureMap) == CudaLinearFeatureMap.Unsupported)
            reason = $"the CUDA linear kernels take the element-wise feature maps identity, elu+1 and relu; '{options.FeatureMap!.Name}' is not on the GPU (apply it to q and k first)";
        else if ((options.Update ?? LinearUpdate.Additive) != LinearUpdate.Additive)
            reason = $"CudaLinearPlan computes the additive update; the {options.Update} rule runs in CudaDeltaRulePlan (forward, chunked and recurrent; it takes β), which Backend = \"cuda\" picks for it";
        else if ((options.Normalization ?? LinearNormalization.None) is not (LinearNormalization.None or LinearNormalization.Denominator))
            reason = $"the CUDA linear kernels compute no normalisation or the denominator one; {options.Normalization} is not on the GPU yet";
        else if (options.Normalization == LinearNormalization.Denominator && elementType == ElementType.Float16)
            // The numerator and the running denominator are kept in the element type; fp16 tops out at 65504, which an
            // undecayed elu+1 denominator passes after a few thousand tokens (≈ 15 per token at Dk = 128), giving 0 or NaN.
            reason = "the denominator normalisation on the GPU takes bf16 (fp16's range, 65504, overflows the running denominator after a few thousand tokens)";
        else if (form == LinearForm.Chunked && shape.KeyDim is not (64 or 128))
            reason = $"the chunked CUDA kernel is specialised for key dims 64 and 128; got Dk = {shape.KeyDim}";
        else if (form == LinearForm.Chunked && (shape.ValueDim <= 0 || shape.ValueDim % CudaLinearKernels.ValueBlock != 0))
            reason = $"the chunked CUDA kernel takes value dims that are multiples of {CudaLinearKernels.ValueBlock}; got Dv = {shape.ValueDim}";
        else if (form == LinearForm.Chunked && options.Decay == LinearDecay.ChannelGate && shape.ValueDim % (2 * CudaLinearKernels.ValueBlock) != 0)
            reason = $"the chunked CUDA kernel with a channel gate takes value dims that are multiples of {2 * CudaLinearKernels.ValueBlock}; got Dv = {shape.ValueDim}";
        else if (form == LinearForm.Recurrent && (shape.KeyDim <= 0 || shape.KeyDim % 8 != 0 || shape.KeyDim > 256))
            reason = $"the recurrent CUDA kernel takes key dims that are multiples of 8 up to 256; got Dk = {shape.KeyDim}";
        else if (shape.ValueDim <= 0)
            reason = $"Dv must be positive; got {shape.ValueDim}";
        return reason.Length == 0;
    }

    // The chunked form's segment table: each sequence cut into segments of whole chunks so that the CTAs fill the
    // GPU's resident slots once (not 1.1 waves: a second, mostly empty wave would cost a whole segment's time), at
    // least 4 chunks and at most 32 segments per sequence (each CTA folds the local states of the segments before it).
    internal static (int[] All, int[] Parts, int SegmentCount, int PartCount) BuildSegments(int slots, int columns, LinearShape shape, int[] starts, int[] lengths)
    {
        const int c = CudaLinearKernels.Chunk;
        long totalChunks = 0;
        foreach (int len in lengths) totalChunks += Math.Max(1, (len + c - 1) / c);
        long ctasPerSegment = (long)shape.Heads * (shape.ValueDim / columns);
        long segmentsThatFit = Math.Max(1, slots / ctasPerSegment);
        int segChunks = (int)Math.Max(4, (totalChunks + segmentsThatFit - 1) / segmentsThatFit);
        var all = new List<int>();
        var parts = new List<int>();
        int partCount = 0, segmentCount = 0, chunkBase = 0;
        for (int n = 0; n < starts.Length; n++)
        {
            int chunks = (lengths[n] + c - 1) / c;
            int count = Math.Max(1, Math.Min(MaxSegmentsPerSequence, (chunks + segChunks - 1) / segChunks));
            int per = count == 0 ? 0 : (chunks + count - 1) / count;
            count = per == 0 ? 1 : (chunks + per - 1) / per;
            int firstPart = partCount;
            for (int i = 0; i < count; i++)
            {
                int begin = i * per * c;
                int len = Math.Max(0, Math.Min(lengths[n] - begin, per * c));
                bool last = i == count - 1;
                // The last field is the segment's first chunk in the sequence-major chunk numbering (the backward's checkpoints).
                int[] row = [n, starts[n] + begin, len, last ? -1 : partCount, firstPart, i, last ? 1 : 0, chunkBase + i * per];
                all.AddRange(row);
                if (!last)
                {
                    parts.AddRange(row);
                    partCount++;
                }
                segmentCount++;
            }
            chunkBase += chunks;
        }
        if (parts.Count == 0) parts.AddRange(new int[8]);
        if (all.Count == 0) all.AddRange(new int[8]);
        return (all.ToArray(), parts.ToArray(), segmentCount, partCount);
    }

    /// <summary>
    /// Queues the call on <paramref name="stream"/> (null: the default stream). <paramref name="gate"/>: float32 log
    /// gates <c>[B, T, H]</c> (ScalarGate) or <c>[B, T, H, Dk]</c> (ChannelGate), else null; <paramref name="initialState"/>
    /// and <paramref name="finalState"/>: float32 <c>[N, H, Dk, Dv]</c> or null (zero / not wanted). Allocates nothing.
    /// </summary>
    /// <exception cref="ArgumentException">Tensors that do not match the plan; the message names the argument.</exception>
    public void Run(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? gate, DeviceBuffer? initialState, CudaTensor output, DeviceBuffer? finalState,
        CudaStream? stream = null)
    {
        if (_map == CudaLinearFeatureMap.Identity && Normalization == LinearNormalization.None)
        {
            Launch(q, k, v, gate, initialState, output, finalState, stream, 0);
            return;
        }
        LinearShape s = Shape;
        LinearPlanInputs.RequireTensor(q, nameof(q), ElementType, Shape, s.Heads, s.KeyDim);
        LinearPlanInputs.RequireTensor(k, nameof(k), ElementType, Shape, s.KvHeads, s.KeyDim);
        LinearPlanInputs.RequireTensor(v, nameof(v), ElementType, Shape, s.KvHeads, s.ValueDim);
        LinearPlanInputs.RequireTensor(output, nameof(output), ElementType, Shape, s.Heads, s.ValueDim);
        if (_map != CudaLinearFeatureMap.Identity)
        {
            MapFeatures(q, _mappedQ!, stream);
            MapFeatures(k, _mappedK!, stream);
            q = _mappedQ!;
            k = _mappedK!;
        }
        if (Normalization == LinearNormalization.None)
        {
            Launch(q, k, v, gate, initialState, output, finalState, stream, 0);
            return;
        }

        // The denominator: the states are [N, H, Dk, Dv + 1]; their z column runs through the denominator's own plan.
        long rows = (long)_sequences * s.Heads * s.KeyDim;
        long augmentedBytes = rows * (s.ValueDim + 1) * 4;
        if (initialState is not null && initialState.Bytes < augmentedBytes)
            throw new ArgumentException($"initialState holds {initialState.Bytes} bytes; [N, H, Dk, Dv + 1] float32 (z last) needs {augmentedBytes}.", nameof(initialState));
        if (finalState is not null && finalState.Bytes < augmentedBytes)
            throw new ArgumentException($"finalState holds {finalState.Bytes} bytes; [N, H, Dk, Dv + 1] float32 (z last) needs {augmentedBytes}.", nameof(finalState));
        int dv = s.ValueDim, zc = _denominator!.Dim;
        if (initialState is not null) StatePass("attend_linear_state_split", initialState, _initialMain!, _initialZ!, rows, dv, zc, stream);
        Launch(q, k, v, gate, initialState is null ? null : _initialMain, output, finalState is null ? null : _finalMain, stream, 0);
        _denominatorPlan!.Launch(q, k, _unitValues!, gate, initialState is null ? null : _initialZ, _denominator, finalState is null ? null : _finalZ, stream, 0);
        long outputRows = (long)s.Batch * s.Tokens * s.Heads;
        ulong o = output.Buffer.Pointer, den = _denominator.Buffer.Pointer;
        float eps = _epsilon;
        void** a = stackalloc void*[6];
        a[0] = &o; a[1] = &den; a[2] = &outputRows; a[3] = &dv; a[4] = &zc; a[5] = &eps;
        LaunchElementwise("attend_linear_normalise", outputRows * dv, a, stream);
        if (finalState is not null) StatePass("attend_linear_state_join", _finalMain!, _finalZ!, finalState, rows, dv, zc, stream);
    }

    private void MapFeatures(CudaTensor x, CudaTensor y, CudaStream? stream)
    {
        ulong xp = x.Buffer.Pointer, yp = y.Buffer.Pointer;
        long n = x.Length;
        int map = (int)_map;
        void** a = stackalloc void*[4];
        a[0] = &xp; a[1] = &yp; a[2] = &n; a[3] = &map;
        LaunchElementwise("attend_linear_feature_map", n, a, stream);
    }

    // split: (augmented, main, z); join: (main, z, augmented).
    private void StatePass(string entry, DeviceBuffer first, DeviceBuffer second, DeviceBuffer third, long rows, int dv, int zc, CudaStream? stream)
    {
        ulong p0 = first.Pointer, p1 = second.Pointer, p2 = third.Pointer;
        void** a = stackalloc void*[6];
        a[0] = &p0; a[1] = &p1; a[2] = &p2; a[3] = &rows; a[4] = &dv; a[5] = &zc;
        LaunchElementwise(entry, rows * (dv + 1), a, stream);
    }

    // chunkStates != 0: pass 2 instead of pass 1 (no outputs; the state at each chunk's start written there).
    private void Launch(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? gate, DeviceBuffer? initialState, CudaTensor? output, DeviceBuffer? finalState,
        CudaStream? stream, ulong chunkStates)
    {
        LinearShape s = Shape;
        LinearPlanInputs.RequireTensor(q, nameof(q), ElementType, Shape, s.Heads, s.KeyDim);
        LinearPlanInputs.RequireTensor(k, nameof(k), ElementType, Shape, s.KvHeads, s.KeyDim);
        LinearPlanInputs.RequireTensor(v, nameof(v), ElementType, Shape, s.KvHeads, s.ValueDim);
        if (chunkStates == 0) LinearPlanInputs.RequireTensor(output!, nameof(output), ElementType, Shape, s.Heads, s.ValueDim);
        long rows = (long)s.Batch * s.Tokens * s.Heads;
        long stateBytes = (long)_sequences * s.Heads * s.KeyDim * s.ValueDim * 4;
        if (Decay is LinearDecay.ScalarGate or LinearDecay.ChannelGate)
        {
            long want = rows * (Decay == LinearDecay.ChannelGate ? s.KeyDim : 1) * 4;
            if (gate is null || gate.Bytes < want)
                throw new ArgumentException($"Decay {Decay} needs a float32 gate of {want} bytes; got {(gate is null ? "none" : gate.Bytes + " bytes")}.", nameof(gate));
        }
        else if (gate is not null)
            throw new ArgumentException($"A gate was given but the decay is {Decay}.", nameof(gate));
        if (initialState is not null && initialState.Bytes < stateBytes)
            throw new ArgumentException($"initialState holds {initialState.Bytes} bytes; [N, H, Dk, Dv] float32 needs {stateBytes}.", nameof(initialState));
        if (finalState is not null && finalState.Bytes < stateBytes)
            throw new ArgumentException($"finalState holds {finalState.Bytes} bytes; [N, H, Dk, Dv] float32 needs {stateBytes}.", nameof(finalState));
        // In place is safe only for the recurrent step (each thread owns its state entries). The chunked form reads the
        // initial state in every segment while the last segment writes the final one, in the same launch.
        if (Form != LinearForm.Recurrent && initialState is not null && finalState is not null && initialState.Pointer == finalState.Pointer)
            throw new ArgumentException("finalState is the same buffer as initialState; the chunked form needs two buffers (only the recurrent step updates in place).", nameof(finalState));
        if (_sequences == 0) return;

        var a = new Arguments
        {
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, O = output?.Buffer.Pointer ?? 0,
            Gate = gate?.Pointer ?? 0, HeadLogDecay = Decay == LinearDecay.FixedPerHead ? _headLogDecay.Pointer : 0,
            S0 = initialState?.Pointer ?? 0, ST = finalState?.Pointer ?? 0,
            PartState = _partState.Pointer, PartDecay = _partDecay.Pointer, Segs = _segments.Pointer,
            Heads = s.Heads, KvHeads = s.KvHeads, Dv = s.ValueDim, Scale = _scale,
        };
        if (Form == LinearForm.Recurrent)
        {
            void** r = stackalloc void*[13];
            r[0] = &a.Q; r[1] = &a.K; r[2] = &a.V; r[3] = &a.O; r[4] = &a.Gate; r[5] = &a.HeadLogDecay; r[6] = &a.S0; r[7] = &a.ST;
            r[8] = &a.Segs; r[9] = &a.Heads; r[10] = &a.KvHeads; r[11] = &a.Dv; r[12] = &a.Scale;
            uint columns = (uint)((s.ValueDim + CudaLinearKernels.RecurrentColumns - 1) / CudaLinearKernels.RecurrentColumns);
            _kernel.Launch(columns, (uint)s.Heads, (uint)_sequences, CudaLinearKernels.RecurrentThreads, 0, stream, r);
            return;
        }
        void** p = stackalloc void*[17];
        p[0] = &a.Q; p[1] = &a.K; p[2] = &a.V; p[3] = &a.O; p[4] = &a.Gate; p[5] = &a.HeadLogDecay; p[6] = &a.S0; p[7] = &a.ST;
        p[8] = &a.PartState; p[9] = &a.PartDecay; p[10] = &a.Segs; p[11] = &a.Heads; p[12] = &a.KvHeads; p[13] = &a.Dv; p[14] = &a.Scale;
        p[15] = &a.Pass; p[16] = &a.ChunkStates;
        uint blocks = (uint)(s.ValueDim / CudaLinearKernels.ChunkColumnsFor(_gate));
        uint threads = (uint)CudaLinearKernels.ChunkThreadsFor(_gate);
        uint smem = (uint)CudaLinearKernels.ChunkSharedBytes(s.KeyDim, _gate);
        if (_partCount > 0)
        {
            a.Segs = _partSegments.Pointer;
            a.Pass = 0;
            _kernel.Launch(blocks, (uint)s.Heads, (uint)_partCount, threads, smem, stream, p);
        }
        a.Segs = _segments.Pointer;
        a.Pass = chunkStates == 0 ? 1 : 2;
        a.ChunkStates = chunkStates;
        _kernel.Launch(blocks, (uint)s.Heads, (uint)_segmentCount, threads, smem, stream, p);
    }

    /// <summary>
    /// Whether <see cref="Backward(CudaTensor, CudaTensor, CudaTensor, DeviceBuffer?, DeviceBuffer?, CudaTensor, DeviceBuffer?, DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer?, DeviceBuffer?, CudaStream?)"/>
    /// computes this configuration: the chunked form with no decay, a fixed decay per head, a scalar gate per token
    /// (simple GLA) or a channel gate (GLA, bf16 only), Dk 64 or 128 and Dv 64 or 128 (128 with a channel gate);
    /// otherwise <paramref name="reason"/> says why.
    /// </summary>
    public static bool IsBackwardSupported(LinearShape shape, ElementType elementType, LinearAttentionOptions? options, out string reason)
    {
        options ??= new LinearAttentionOptions();
        if (options.Update is LinearUpdate.Delta or LinearUpdate.GatedDelta)
        {
            reason = $"the {options.Update} rule's forward and backward run in CudaDeltaRulePlan (see CudaDeltaRulePlan.IsBackwardSupported), not in this plan";
            return false;
        }
        if (!IsSupported(shape, elementType, options, out reason)) return false;
        reason = BackwardRefusal(shape, elementType, options.Form ?? LinearForm.Chunked,
            options.Decay ?? (options.HeadDecay != null ? LinearDecay.FixedPerHead : LinearDecay.None), MapOf(options.FeatureMap),
            options.Normalization ?? LinearNormalization.None) ?? "";
        return reason.Length == 0;
    }

    // Why the CUDA backward cannot compute a configuration the forward supports, or null when it can.
    internal static string? BackwardRefusal(LinearShape shape, ElementType elementType, LinearForm form, LinearDecay decay, CudaLinearFeatureMap map,
        LinearNormalization normalization)
    {
        if (form != LinearForm.Chunked)
            return "the CUDA linear backward is the chunked form's";
        if (map != CudaLinearFeatureMap.Identity)
            return "the CUDA linear backward takes the identity feature map; the elu+1 and relu pre-passes are forward-only on the GPU";
        if (normalization != LinearNormalization.None)
            return $"the CUDA linear backward computes no normalisation; {normalization} is forward-only on the GPU";
        if (shape.ValueDim > CudaLinearKernels.BackwardMaxValueDim)
            return $"the CUDA linear backward takes value dims 64 and 128; got Dv = {shape.ValueDim}";
        if (decay == LinearDecay.ChannelGate && elementType != ElementType.BFloat16)
            return $"the CUDA linear backward with a channel gate runs on bf16 only (its decayed products need bf16's exponent range); got {elementType.ShortName()}";
        return null;
    }

    /// <summary>
    /// The gradients without a gate (no decay or a fixed decay per head): the overload with a gate, passing none.
    /// </summary>
    /// <exception cref="NotSupportedException">A configuration <see cref="IsBackwardSupported"/> rejects, or a gated plan (it needs the gate).</exception>
    /// <exception cref="ArgumentException">Tensors that do not match the plan; the message names the argument.</exception>
    public void Backward(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? initialState, CudaTensor outputGradient, DeviceBuffer? finalStateGradient,
        DeviceBuffer queryGradient, DeviceBuffer keyGradient, DeviceBuffer valueGradient, DeviceBuffer? initialStateGradient, CudaStream? stream = null) =>
        Backward(q, k, v, null, initialState, outputGradient, finalStateGradient, queryGradient, keyGradient, valueGradient, null, initialStateGradient, stream);

    /// <summary>
    /// Queues the gradients of <c>L = Σ dO·O + Σ dS_T·S_T</c> on <paramref name="stream"/>: a forward sweep that keeps
    /// the state at each chunk's start, a reverse sweep (on the forward's segments) for the state gradient at each chunk's end (and
    /// <paramref name="initialStateGradient"/>), then dq, dk, dv (and the gate gradient) per chunk. q, k, v,
    /// <paramref name="gate"/>, <paramref name="outputGradient"/> as for <see cref="Run"/>; <paramref name="initialState"/>,
    /// <paramref name="finalStateGradient"/> float32 <c>[N, H, Dk, Dv]</c> or null (zero). The gradients are float32:
    /// <paramref name="queryGradient"/> <c>[B, T, H, Dk]</c>, <paramref name="keyGradient"/> <c>[B, T, Hkv, Dk]</c>,
    /// <paramref name="valueGradient"/> <c>[B, T, Hkv, Dv]</c> (summed over the query heads of a group),
    /// <paramref name="gateGradient"/> dL/d(log gate) shaped like the gate, or null (not wanted; only with a gate),
    /// <paramref name="initialStateGradient"/> <c>[N, H, Dk, Dv]</c> or null (not wanted).
    /// The first call allocates the checkpoints (two <c>[chunks, H, Dk, Dv]</c> arrays of the element type); later calls allocate nothing.
    /// </summary>
    /// <exception cref="NotSupportedException">A configuration <see cref="IsBackwardSupported"/> rejects.</exception>
    /// <exception cref="ArgumentException">Tensors that do not match the plan; the message names the argument.</exception>
    public void Backward(CudaTensor q, CudaTensor k, CudaTensor v, DeviceBuffer? gate, DeviceBuffer? initialState, CudaTensor outputGradient,
        DeviceBuffer? finalStateGradient, DeviceBuffer queryGradient, DeviceBuffer keyGradient, DeviceBuffer valueGradient, DeviceBuffer? gateGradient,
        DeviceBuffer? initialStateGradient, CudaStream? stream = null)
    {
        LinearShape s = Shape;
        if (BackwardRefusal(s, ElementType, Form, Decay, _map, Normalization) is { } refusal) throw new NotSupportedException(refusal);
        LinearPlanInputs.RequireTensor(q, nameof(q), ElementType, Shape, s.Heads, s.KeyDim);
        LinearPlanInputs.RequireTensor(k, nameof(k), ElementType, Shape, s.KvHeads, s.KeyDim);
        LinearPlanInputs.RequireTensor(v, nameof(v), ElementType, Shape, s.KvHeads, s.ValueDim);
        LinearPlanInputs.RequireTensor(outputGradient, nameof(outputGradient), ElementType, Shape, s.Heads, s.ValueDim);
        long rows = (long)s.Batch * s.Tokens;
        long stateBytes = (long)_sequences * s.Heads * s.KeyDim * s.ValueDim * 4;
        bool gated = Decay is LinearDecay.ScalarGate or LinearDecay.ChannelGate;
        long gateBytes = rows * s.Heads * (Decay == LinearDecay.ChannelGate ? s.KeyDim : 1) * 4;
        if (gated)
        {
            if (gate is null) throw new ArgumentException($"Decay {Decay} needs its float32 gate ({gateBytes} bytes) for the backward.", nameof(gate));
            RequireBytes(gate, nameof(gate), gateBytes);
            if (gateGradient is not null) RequireBytes(gateGradient, nameof(gateGradient), gateBytes);
        }
        else if (gate is not null || gateGradient is not null)
            throw new ArgumentException($"A gate (or gate gradient) was given but the decay is {Decay}.", gate is not null ? nameof(gate) : nameof(gateGradient));
        RequireBytes(queryGradient, nameof(queryGradient), rows * s.Heads * s.KeyDim * 4);
        RequireBytes(keyGradient, nameof(keyGradient), rows * s.KvHeads * s.KeyDim * 4);
        RequireBytes(valueGradient, nameof(valueGradient), rows * s.KvHeads * s.ValueDim * 4);
        if (finalStateGradient is not null) RequireBytes(finalStateGradient, nameof(finalStateGradient), stateBytes);
        if (initialStateGradient is not null) RequireBytes(initialStateGradient, nameof(initialStateGradient), stateBytes);
        if (_sequences == 0) return;
        EnsureBackwardBuffers(gateGradient is not null);
        if (s.Heads != s.KvHeads)
        {
            // Summed atomically over the query heads of a group: zeroed on the kernels' own stream, so any kind of stream orders the two.
            keyGradient.Fill(0, stream);
            valueGradient.Fill(0, stream);
        }

        // 1. The state at each chunk's start (the forward's pass 2) and, for the gate gradient, the final states.
        if (_chunkCount > 0)
            Launch(q, k, v, gate, initialState, null, gateGradient is not null ? _finalStateScratch : null, stream, _chunkStates!.Pointer);

        if (BackwardStages < 2) return;

        // 2. The state gradient at each chunk's end, last chunk to first, and dS0.
        var a = new BackwardArguments
        {
            PartLocal = _partStateGradient!.Pointer, PartDecay = _partDecayGradient!.Pointer, Segs = _segments.Pointer,
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, DO = outputGradient.Buffer.Pointer,
            Gate = gate?.Pointer ?? 0, HeadLogDecay = Decay == LinearDecay.FixedPerHead ? _headLogDecay.Pointer : 0,
            DST = finalStateGradient?.Pointer ?? 0, DS0 = initialStateGradient?.Pointer ?? 0,
            H0s = _chunkStates!.Pointer, DHs = _chunkStateGradients!.Pointer, FinalStates = _finalStateScratch?.Pointer ?? 0,
            DQ = queryGradient.Pointer, DK = keyGradient.Pointer, DV = valueGradient.Pointer, DG = gateGradient?.Pointer ?? 0,
            Chunks = _chunkTable!.Pointer, Heads = s.Heads, KvHeads = s.KvHeads, Dv = s.ValueDim, Scale = _scale,
        };
        CudaKernelFunction dstate = CudaLinearKernels.StateGradient(_context, s.KeyDim, ElementType, _gate);
        void** r = stackalloc void*[14];
        r[0] = &a.Q; r[1] = &a.DO; r[2] = &a.Gate; r[3] = &a.HeadLogDecay; r[4] = &a.DST; r[5] = &a.DS0; r[6] = &a.DHs; r[7] = &a.PartLocal;
        r[8] = &a.PartDecay; r[9] = &a.Segs; r[10] = &a.Heads; r[11] = &a.Dv; r[12] = &a.Scale; r[13] = &a.Pass;
        // On the forward's segments, mirrored: pass 0 the local contributions of all but each sequence's first segment, pass 1 the rest.
        int blocksPerCta = CudaLinearKernels.StateGradientValueBlocks(_gate);
        uint ctaColumns = (uint)(s.ValueDim / (CudaLinearKernels.ValueBlock * blocksPerCta)), dstateThreads = (uint)(128 * blocksPerCta);
        uint dstateSmem = (uint)CudaLinearKernels.StateGradientSharedBytes(s.KeyDim, _gate);
        if (_partCount > 0)
        {
            a.Pass = 0;
            dstate.Launch(ctaColumns, (uint)s.Heads, (uint)_segmentCount, dstateThreads, dstateSmem, stream, r);
        }
        a.Pass = 1;
        dstate.Launch(ctaColumns, (uint)s.Heads, (uint)_segmentCount, dstateThreads, dstateSmem, stream, r);
        if (_chunkCount == 0) return;

        // 3. dq, dk, dv (and d log gate) per (chunk, query head).
        if (BackwardStages < 3) return;
        bool channel = _gate == CudaLinearGate.Channel;
        CudaKernelFunction chunk = channel ? CudaLinearKernels.ChannelBackward(_context, s.KeyDim) : CudaLinearKernels.ChunkBackward(_context, s.KeyDim, ElementType, _gate);
        void** p = stackalloc void*[18];
        p[0] = &a.Q; p[1] = &a.K; p[2] = &a.V; p[3] = &a.DO; p[4] = &a.Gate; p[5] = &a.HeadLogDecay; p[6] = &a.H0s; p[7] = &a.DHs;
        p[8] = &a.FinalStates; p[9] = &a.DQ; p[10] = &a.DK; p[11] = &a.DV; p[12] = &a.DG; p[13] = &a.Chunks; p[14] = &a.Heads;
        p[15] = &a.KvHeads; p[16] = &a.Dv; p[17] = &a.Scale;
        if (channel)
            chunk.Launch((uint)_chunkCount, (uint)s.Heads, 1, CudaLinearKernels.ChannelBackwardThreads, (uint)CudaLinearKernels.ChannelBackwardSharedBytes(s.KeyDim), stream, p);
        else
            chunk.Launch((uint)_chunkCount, (uint)s.Heads, 1, 128, (uint)CudaLinearKernels.BackwardSharedBytes(s.KeyDim, _gate), stream, p);
    }

    /// <summary>
    /// How many of the backward's three launches <see cref="Backward(CudaTensor, CudaTensor, CudaTensor, DeviceBuffer?, DeviceBuffer?, CudaTensor, DeviceBuffer?, DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer?, DeviceBuffer?, CudaStream?)"/>
    /// queues (3, all; the bench sets 1 for the checkpoints alone, 2 for them and the state-gradient sweep, to split the
    /// time). The gradients are complete only at 3.
    /// </summary>
    internal int BackwardStages { get; set; } = 3;

    private void EnsureBackwardBuffers(bool finalStates)
    {
        if (finalStates && _finalStateScratch is null)
            _finalStateScratch = new DeviceBuffer(_context, Math.Max(4L, (long)_sequences * Shape.Heads * Shape.KeyDim * Shape.ValueDim * 4));
        if (_chunkTable is not null) return;
        const int c = CudaLinearKernels.Chunk;
        var chunks = new List<int>();
        int count = 0;
        for (int n = 0; n < _sequences; n++)
        {
            for (int begin = 0; begin < _lengths[n]; begin += c)
            {
                // The last field marks a sequence's last chunk (its end state is the final state, not the next checkpoint).
                chunks.AddRange([n, _starts[n] + begin, Math.Min(c, _lengths[n] - begin), begin + c >= _lengths[n] ? 1 : 0]);
                count++;
            }
        }
        if (chunks.Count == 0) chunks.AddRange(new int[4]);
        long checkpointBytes = Math.Max(1L, (long)count * Shape.Heads * Shape.KeyDim * Shape.ValueDim * 2);
        // All five buffers or none: a failed allocation (out of memory on a long sequence) must not leave a half-built
        // plan that the next call would take as ready.
        DeviceBuffer? table = null, partGradient = null, partDecay = null, states = null, stateGradients = null;
        try
        {
            table = DeviceBuffer.From<int>(_context, chunks.ToArray());
            partGradient = new DeviceBuffer(_context, Math.Max(1L, (long)_partCount * Shape.Heads * Shape.KeyDim * Shape.ValueDim) * 4);
            partDecay = new DeviceBuffer(_context, Math.Max(1L, (long)_partCount * Shape.Heads * Shape.KeyDim) * 4);
            states = new DeviceBuffer(_context, checkpointBytes);
            stateGradients = new DeviceBuffer(_context, checkpointBytes);
        }
        catch
        {
            table?.Dispose();
            partGradient?.Dispose();
            partDecay?.Dispose();
            states?.Dispose();
            stateGradients?.Dispose();
            throw;
        }
        _chunkCount = count;
        _partStateGradient = partGradient;
        _partDecayGradient = partDecay;
        _chunkStates = states;
        _chunkStateGradients = stateGradients;
        _chunkTable = table;
    }

    private static void RequireBytes(DeviceBuffer b, string name, long bytes)
    {
        ArgumentNullException.ThrowIfNull(b, name);
        if (b.Bytes < bytes) throw new ArgumentException($"{name} holds {b.Bytes} bytes; it needs {bytes} (float32).", name);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct BackwardArguments
    {
        public ulong Q, K, V, DO, Gate, HeadLogDecay, DST, DS0, H0s, DHs, FinalStates, DQ, DK, DV, DG, PartLocal, PartDecay, Segs, Chunks;
        public int Heads, KvHeads, Dv;
        public float Scale;
        public int Pass;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Arguments
    {
        public ulong Q, K, V, O, Gate, HeadLogDecay, S0, ST, PartState, PartDecay, Segs;
        public int Heads, KvHeads, Dv;
        public float Scale;
        public int Pass;
        public ulong ChunkStates;
    }

    /// <summary>Frees the plan's device buffers (the loaded kernel stays for later plans).</summary>
    public void Dispose()
    {
        _segments.Dispose();
        _partSegments.Dispose();
        _partState.Dispose();
        _partDecay.Dispose();
        _headLogDecay.Dispose();
        _chunkTable?.Dispose();
        _partStateGradient?.Dispose();
        _partDecayGradient?.Dispose();
        _finalStateScratch?.Dispose();
        _mappedQ?.Dispose();
        _mappedK?.Dispose();
        _unitValues?.Dispose();
        _denominator?.Dispose();
        _initialMain?.Dispose();
        _finalMain?.Dispose();
        _initialZ?.Dispose();
        _finalZ?.Dispose();
        _denominatorPlan?.Dispose();
        _chunkStates?.Dispose();
        _chunkStateGradients?.Dispose();
    }
}
