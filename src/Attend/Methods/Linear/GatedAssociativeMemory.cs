using System.Numerics.Tensors;

namespace Attend.Methods.Linear;

/// <summary>Options of <see cref="GatedAssociativeMemory"/>; null fields take their defaults.</summary>
public sealed record GatedAssociativeMemoryOptions
{
    /// <summary>Score scale of the memory retrieval (default 1, as the authors' code: no 1/√D).</summary>
    public float? Scale { get; init; }

    /// <summary>Force a softmax kernel variant for the retrieval (see <c>attend methods</c>).</summary>
    public string? Variant { get; init; }
}

/// <summary>The learned tensors of <see cref="GatedAssociativeMemory"/>; an empty gate span means logits 0 (gate ½).</summary>
/// <param name="Memory">Memory bank <c>[H, S, D]</c>: S prototype rows per head, used as both keys and values.</param>
/// <param name="Conv">Depthwise causal convolution kernel <c>[H, W, D]</c>; tap w multiplies the value w tokens back.</param>
/// <param name="GateLocal">Local-path gate logits <c>[B, T, H, D]</c>, or empty.</param>
/// <param name="GateGlobal">Global-path gate logits <c>[B, T, H, D]</c>, or empty.</param>
public readonly ref struct GamParameters(ReadOnlySpan<float> Memory, ReadOnlySpan<float> Conv, ReadOnlySpan<float> GateLocal, ReadOnlySpan<float> GateGlobal)
{
    /// <summary>Memory bank <c>[H, S, D]</c>.</summary>
    public ReadOnlySpan<float> Memory { get; } = Memory;

    /// <summary>Convolution kernel <c>[H, W, D]</c>.</summary>
    public ReadOnlySpan<float> Conv { get; } = Conv;

    /// <summary>Local gate logits.</summary>
    public ReadOnlySpan<float> GateLocal { get; } = GateLocal;

    /// <summary>Global gate logits.</summary>
    public ReadOnlySpan<float> GateGlobal { get; } = GateGlobal;
}

/// <summary>
/// Gated Associative Memory (GAM; Acharya, 2025: "Gated Associative Memory: A Parallel O(N) Architecture for Efficient
/// Sequence Modeling"). Self-attention is replaced by two parallel paths fused per token by learned gates: a causal
/// depthwise convolution (local, position-dependent context) and a retrieval from a learned memory bank M of S
/// prototype rows (global, content-based context): out_t = σ(g^loc_t) ⊙ Σ_w C_w ⊙ x_(t−w) + σ(g^glob_t) ⊙
/// softmax(scale·x_t·Mᵀ)·M. Linear in T: the retrieval does not look at other tokens at all, only at the bank, and
/// runs through <see cref="Attention.Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{float})"/>
/// with the bank as keys and values.
/// </summary>
/// <remarks>
/// <para>Mapping onto the attention inputs: the retrieval query is <c>q</c>, the convolution runs over <c>v</c>, and
/// <c>k</c> is not read (the bank plays the keys' part). The paper's block applies all of these to one normalised
/// input x and computes the gates from x by a linear layer; here the projections, the gate layer, the LayerNorms, the
/// residual and the FFN belong to the model, and the gate logits are inputs. The paper has no heads; here every head
/// has its own bank and kernel (one head reproduces the paper), and query head h convolves the values of key/value
/// head h / (H / Hkv). The bank is both keys and values, so Dv = Dk.</para>
/// <para>Training: <see cref="Backward"/> gives the gradients of q, v, the bank, the kernel and both gate logits.</para>
/// <para>Forms: naive (the float64 definition), chunked (the retrieval of all tokens in one softmax call and the
/// convolution of all tokens in parallel) and recurrent (the convolution slides a window token by token; the retrieval
/// has no state). State: the convolution window, the last W − 1 values of every sequence and key/value head,
/// <c>[N, Hkv, W − 1, Dv]</c>, oldest first; zeros (the convolution's zero padding) when none is given.</para>
/// </remarks>
public static class GatedAssociativeMemory
{
    /// <summary>Floats in the state <c>[N, Hkv, W − 1, Dv]</c>.</summary>
    public static int StateSize(LinearExtraShape shape, int width) => shape.Sequences * shape.KvHeads * (width - 1) * shape.ValueDim;

    /// <summary>A seeded Xavier-uniform memory bank <c>[H, S, D]</c> (the authors' initialisation).</summary>
    public static float[] RandomMemory(int heads, int slots, int dim, int seed)
    {
        var rng = new Random(seed);
        var m = new float[heads * slots * dim];
        double bound = Math.Sqrt(6.0 / (slots + dim));
        for (int i = 0; i < m.Length; i++) m[i] = (float)((2 * rng.NextDouble() - 1) * bound);
        return m;
    }

    /// <summary>The default kernel <c>[H, W, D]</c>: the mean of the last W values.</summary>
    public static float[] AveragingConv(int heads, int width, int dim)
    {
        var c = new float[heads * width * dim];
        Array.Fill(c, 1f / width);
        return c;
    }

    /// <summary>Runs GAM into <paramref name="output"/> <c>[B, T, H, D]</c>; <paramref name="recurrent"/> picks the form.</summary>
    /// <param name="q">Retrieval queries <c>[B, T, H, D]</c>.</param>
    /// <param name="v">Convolution input <c>[B, T, Hkv, D]</c>.</param>
    /// <param name="shape">Dimensions (k is not read; its span length is not checked).</param>
    /// <param name="parameters">Bank, kernel and gate logits.</param>
    /// <param name="options">Scale and kernel variant of the retrieval.</param>
    /// <param name="initialState">Convolution window <c>[N, Hkv, W − 1, D]</c>, or empty for zeros.</param>
    /// <param name="output">Output <c>[B, T, H, D]</c>.</param>
    /// <param name="finalState">Window after the last token, or empty when not wanted.</param>
    /// <param name="recurrent">Slide the window token by token (the decode form) rather than convolving all tokens at once.</param>
    /// <exception cref="ArgumentException">Mis-sized spans or Dv ≠ Dk; the message names it.</exception>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> v, LinearExtraShape shape, GamParameters parameters,
        GatedAssociativeMemoryOptions? options, ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState, bool recurrent)
    {
        options ??= new GatedAssociativeMemoryOptions();
        int width = Check(shape, q.Length, v.Length, parameters, initialState, output, finalState, out int slots);
        int h = shape.Heads, d = shape.ValueDim, rows = shape.Batch * shape.Tokens;
        if (rows == 0)
        {
            if (initialState.IsEmpty) finalState.Clear();
            else if (!finalState.IsEmpty) initialState.CopyTo(finalState);
            return;
        }

        // Global path: every token retrieves from its head's bank; position plays no part, so all B·T tokens form one
        // query batch against the bank laid out [1, S, H, D].
        var bank = new float[slots * h * d];
        for (int head = 0; head < h; head++)
            for (int s = 0; s < slots; s++)
                parameters.Memory.Slice((head * slots + s) * d, d).CopyTo(bank.AsSpan((s * h + head) * d, d));
        var global = new float[output.Length];
        Attention.Forward<float>(
            AttentionLayout.Bthd(AsWritable(q), 1, rows, h, d),
            AttentionLayout.Bthd<float>(bank, 1, slots, h, d),
            AttentionLayout.Bthd<float>(bank, 1, slots, h, d),
            new AttentionOptions { Scale = options.Scale ?? 1f, Variant = options.Variant },
            AttentionLayout.Bthd<float>(global, 1, rows, h, d));

        // Local path, written straight into the output, then the gated sum.
        if (recurrent) ConvolveRecurrent(v, shape, parameters.Conv, width, initialState, output, finalState);
        else ConvolveParallel(v, shape, parameters.Conv, width, initialState, output, finalState);
        Span<float> gate = new float[d];
        for (long i = 0; i < output.Length; i += d)
        {
            Span<float> o = output.Slice((int)i, d);
            Sigmoid(parameters.GateLocal, (int)i, gate);
            TensorPrimitives.Multiply(o, gate, o);
            Sigmoid(parameters.GateGlobal, (int)i, gate);
            TensorPrimitives.MultiplyAdd(global.AsSpan((int)i, d), gate, o, o);
        }
    }

    /// <summary>
    /// Gradients of Σ dO ⊙ GAM(q, v) with respect to q, v, the bank, the kernel and both gate logits (the training
    /// path): the retrieval is recomputed with its LSE and runs backward through
    /// <see cref="Attention.Backward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{float}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T})"/>
    /// (the bank's gradient is its key plus its value gradient); the convolution's adjoint spreads dL back over the
    /// window. An initial window is a constant (no gradient). Absent gates (empty spans) still get their gradient, at
    /// logits 0.
    /// </summary>
    /// <param name="q">Retrieval queries <c>[B, T, H, D]</c>.</param>
    /// <param name="v">Convolution input <c>[B, T, Hkv, D]</c>.</param>
    /// <param name="shape">Dimensions.</param>
    /// <param name="parameters">Bank, kernel and gate logits of the forward.</param>
    /// <param name="options">The forward's options.</param>
    /// <param name="initialState">The forward's initial window, or empty.</param>
    /// <param name="outputGradient">dO <c>[B, T, H, D]</c>.</param>
    /// <param name="dq">dQ, overwritten.</param>
    /// <param name="dv">dV, overwritten (query heads of a group add up).</param>
    /// <param name="dMemory">dM <c>[H, S, D]</c>, overwritten.</param>
    /// <param name="dConv">dC <c>[H, W, D]</c>, overwritten.</param>
    /// <param name="dGateLocal">d(local gate logits) <c>[B, T, H, D]</c>, overwritten.</param>
    /// <param name="dGateGlobal">d(global gate logits) <c>[B, T, H, D]</c>, overwritten.</param>
    /// <exception cref="ArgumentException">Mis-sized spans or Dv ≠ Dk; the message names it.</exception>
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> v, LinearExtraShape shape, GamParameters parameters,
        GatedAssociativeMemoryOptions? options, ReadOnlySpan<float> initialState, ReadOnlySpan<float> outputGradient,
        Span<float> dq, Span<float> dv, Span<float> dMemory, Span<float> dConv, Span<float> dGateLocal, Span<float> dGateGlobal)
    {
        options ??= new GatedAssociativeMemoryOptions();
        int width = Check(shape, q.Length, v.Length, parameters, initialState, outputGradient, default, out int slots);
        if (dq.Length != q.Length) throw new ArgumentException($"dq holds {dq.Length} floats; q has {q.Length}.", nameof(dq));
        if (dv.Length != v.Length) throw new ArgumentException($"dv holds {dv.Length} floats; v has {v.Length}.", nameof(dv));
        if (dMemory.Length != parameters.Memory.Length) throw new ArgumentException($"dMemory holds {dMemory.Length} floats; the bank has {parameters.Memory.Length}.", nameof(dMemory));
        if (dConv.Length != parameters.Conv.Length) throw new ArgumentException($"dConv holds {dConv.Length} floats; the kernel has {parameters.Conv.Length}.", nameof(dConv));
        if (dGateLocal.Length != outputGradient.Length) throw new ArgumentException($"dGateLocal holds {dGateLocal.Length} floats; [B, T, H, D] needs {outputGradient.Length}.", nameof(dGateLocal));
        if (dGateGlobal.Length != outputGradient.Length) throw new ArgumentException($"dGateGlobal holds {dGateGlobal.Length} floats; [B, T, H, D] needs {outputGradient.Length}.", nameof(dGateGlobal));
        dq.Clear(); dv.Clear(); dMemory.Clear(); dConv.Clear(); dGateLocal.Clear(); dGateGlobal.Clear();
        int h = shape.Heads, d = shape.ValueDim, rows = shape.Batch * shape.Tokens;
        if (rows == 0) return;

        // Forward pieces: the retrieval R (with its LSE) and the convolution L.
        var bank = new float[slots * h * d];
        for (int head = 0; head < h; head++)
            for (int s = 0; s < slots; s++)
                parameters.Memory.Slice((head * slots + s) * d, d).CopyTo(bank.AsSpan((s * h + head) * d, d));
        var global = new float[outputGradient.Length];
        var lse = new float[(long)h * rows];
        var retrieval = new AttentionOptions { Scale = options.Scale ?? 1f, Variant = options.Variant };
        Span<float> qw = AsWritable(q);
        Attention.Forward<float>(AttentionLayout.Bthd(qw, 1, rows, h, d), AttentionLayout.Bthd<float>(bank, 1, slots, h, d),
            AttentionLayout.Bthd<float>(bank, 1, slots, h, d), retrieval, AttentionLayout.Bthd<float>(global, 1, rows, h, d), AttentionLayout.Lse(lse, 1, h, rows));
        var local = new float[outputGradient.Length];
        ConvolveParallel(v, shape, parameters.Conv, width, initialState, local, default);

        // Gates: out = σ(gl)·L + σ(gg)·R.
        var dGlobal = new float[outputGradient.Length];
        var dLocal = new float[outputGradient.Length];
        Span<float> gate = new float[d];
        for (int i = 0; i < outputGradient.Length; i += d)
        {
            ReadOnlySpan<float> dO = outputGradient.Slice(i, d);
            Sigmoid(parameters.GateLocal, i, gate);
            for (int x = 0; x < d; x++)
            {
                dLocal[i + x] = dO[x] * gate[x];
                dGateLocal[i + x] = dO[x] * local[i + x] * gate[x] * (1 - gate[x]);
            }
            Sigmoid(parameters.GateGlobal, i, gate);
            for (int x = 0; x < d; x++)
            {
                dGlobal[i + x] = dO[x] * gate[x];
                dGateGlobal[i + x] = dO[x] * global[i + x] * gate[x] * (1 - gate[x]);
            }
        }

        // Retrieval backward: the bank is both keys and values.
        var dBankK = new float[bank.Length];
        var dBankV = new float[bank.Length];
        Attention.Backward<float>(AttentionLayout.Bthd(qw, 1, rows, h, d), AttentionLayout.Bthd<float>(bank, 1, slots, h, d),
            AttentionLayout.Bthd<float>(bank, 1, slots, h, d), AttentionLayout.Bthd<float>(global, 1, rows, h, d),
            AttentionLayout.Bthd<float>(dGlobal, 1, rows, h, d), AttentionLayout.Lse(lse, 1, h, rows), retrieval,
            AttentionLayout.Bthd(dq, 1, rows, h, d), AttentionLayout.Bthd<float>(dBankK, 1, slots, h, d), AttentionLayout.Bthd<float>(dBankV, 1, slots, h, d));
        for (int head = 0; head < h; head++)
            for (int s = 0; s < slots; s++)
                TensorPrimitives.Add(dBankK.AsSpan((s * h + head) * d, d), dBankV.AsSpan((s * h + head) * d, d), dMemory.Slice((head * slots + s) * d, d));

        // Convolution adjoint: L_t = Σ_w C_w ⊙ x_(t−w), so dx_(t−w) += C_w ⊙ dL_t and dC_w += dL_t ⊙ x_(t−w).
        for (int n = 0; n < shape.Sequences; n++)
            for (int head = 0; head < h; head++)
            {
                int g = head / shape.Group;
                for (int t = 0; t < shape.Length(n); t++)
                {
                    ReadOnlySpan<float> dL = dLocal.AsSpan((int)shape.O(shape.Start(n) + t, head), d);
                    for (int w = 0; w < width; w++)
                    {
                        ReadOnlySpan<float> x = Past(v, initialState, shape, width, n, g, t, w);
                        if (x.IsEmpty) continue;
                        Span<float> dC = dConv.Slice((head * width + w) * d, d);
                        TensorPrimitives.MultiplyAdd(dL, x, dC, dC);
                        if (t - w < 0) continue; // from the initial window: a constant
                        Span<float> dx = dv.Slice((int)shape.V(shape.Start(n) + t - w, g), d);
                        TensorPrimitives.MultiplyAdd(dL, parameters.Conv.Slice((head * width + w) * d, d), dx, dx);
                    }
                }
            }
    }

    private static void Sigmoid(ReadOnlySpan<float> logits, int offset, Span<float> gate)
    {
        if (logits.IsEmpty) gate.Fill(0.5f);
        else TensorPrimitives.Sigmoid(logits.Slice(offset, gate.Length), gate);
    }

    // The value `back` tokens before token t of sequence n (kv head g): from the sequence, the window state, or 0.
    private static ReadOnlySpan<float> Past(ReadOnlySpan<float> v, ReadOnlySpan<float> window, LinearExtraShape shape, int width, int n, int g, int t, int back)
    {
        int d = shape.ValueDim, at = t - back;
        if (at >= 0) return v.Slice((int)shape.V(shape.Start(n) + at, g), d);
        int w = width - 1 + at; // index into the W − 1 remembered values, oldest first
        if (w < 0 || window.IsEmpty) return default;
        return window.Slice(((n * shape.KvHeads + g) * (width - 1) + w) * d, d);
    }

    private static void ConvolveParallel(ReadOnlySpan<float> v, LinearExtraShape shape, ReadOnlySpan<float> conv, int width,
        ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState)
    {
        int d = shape.ValueDim;
        for (int n = 0; n < shape.Sequences; n++)
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group;
                for (int t = 0; t < shape.Length(n); t++)
                {
                    Span<float> o = output.Slice((int)shape.O(shape.Start(n) + t, h), d);
                    o.Clear();
                    for (int w = 0; w < width; w++)
                    {
                        ReadOnlySpan<float> x = Past(v, initialState, shape, width, n, g, t, w);
                        if (!x.IsEmpty) TensorPrimitives.MultiplyAdd(x, conv.Slice((h * width + w) * d, d), o, o);
                    }
                }
            }
        if (!finalState.IsEmpty) WriteWindow(v, shape, width, initialState, finalState);
    }

    private static void WriteWindow(ReadOnlySpan<float> v, LinearExtraShape shape, int width, ReadOnlySpan<float> initialState, Span<float> finalState)
    {
        int d = shape.ValueDim;
        var next = new float[finalState.Length];
        for (int n = 0; n < shape.Sequences; n++)
            for (int g = 0; g < shape.KvHeads; g++)
                for (int w = 0; w < width - 1; w++)
                {
                    // Slot w of the new window holds the value (W − 1 − w) tokens before the end.
                    ReadOnlySpan<float> x = Past(v, initialState, shape, width, n, g, shape.Length(n), width - 1 - w);
                    if (!x.IsEmpty) x.CopyTo(next.AsSpan(((n * shape.KvHeads + g) * (width - 1) + w) * d, d));
                }
        next.CopyTo(finalState);
    }

    private static void ConvolveRecurrent(ReadOnlySpan<float> v, LinearExtraShape shape, ReadOnlySpan<float> conv, int width,
        ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState)
    {
        int d = shape.ValueDim, keep = width - 1;
        // Slots oldest first; each token shifts the window left and lands in slot W − 1, so between tokens slots 1..W − 1
        // hold the W − 1 values the next token's convolution reaches back to (the state).
        var window = new float[width * d];
        for (int n = 0; n < shape.Sequences; n++)
            for (int g = 0; g < shape.KvHeads; g++)
            {
                Array.Clear(window);
                if (!initialState.IsEmpty) initialState.Slice((n * shape.KvHeads + g) * keep * d, keep * d).CopyTo(window.AsSpan(d));
                for (int t = 0; t < shape.Length(n); t++)
                {
                    int r = shape.Start(n) + t;
                    Array.Copy(window, d, window, 0, keep * d);
                    v.Slice((int)shape.V(r, g), d).CopyTo(window.AsSpan(keep * d, d));
                    for (int j = 0; j < shape.Group; j++)
                    {
                        int h = g * shape.Group + j;
                        Span<float> o = output.Slice((int)shape.O(r, h), d);
                        o.Clear();
                        for (int w = 0; w < width; w++)
                            TensorPrimitives.MultiplyAdd(window.AsSpan((keep - w) * d, d), conv.Slice((h * width + w) * d, d), o, o);
                    }
                }
                if (!finalState.IsEmpty) window.AsSpan(d, keep * d).CopyTo(finalState.Slice((n * shape.KvHeads + g) * keep * d, keep * d));
            }
    }

    internal static int Check(LinearExtraShape shape, int qLength, int vLength, GamParameters p, ReadOnlySpan<float> initialState,
        ReadOnlySpan<float> output, ReadOnlySpan<float> finalState, out int slots)
    {
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate(qLength, (int)shape.KeyCount, vLength, output.Length);
        if (shape.ValueDim != shape.KeyDim)
            throw new ArgumentException($"GAM's bank is both keys and values, so Dv must equal Dk; got Dv = {shape.ValueDim}, Dk = {shape.KeyDim}.", "v");
        int hd = shape.Heads * shape.KeyDim;
        if (p.Memory.Length == 0 || p.Memory.Length % hd != 0)
            throw new ArgumentException($"memory must be [H, S, D] with H = {shape.Heads}, D = {shape.KeyDim}; it holds {p.Memory.Length} floats.", "memory");
        if (p.Conv.Length == 0 || p.Conv.Length % hd != 0)
            throw new ArgumentException($"conv must be [H, W, D] with H = {shape.Heads}, D = {shape.KeyDim}; it holds {p.Conv.Length} floats.", "conv");
        slots = p.Memory.Length / hd;
        int width = p.Conv.Length / hd;
        if (!p.GateLocal.IsEmpty && p.GateLocal.Length != output.Length)
            throw new ArgumentException($"gate_local must be [B, T, H, D] ({output.Length} floats); it holds {p.GateLocal.Length}.", "gate_local");
        if (!p.GateGlobal.IsEmpty && p.GateGlobal.Length != output.Length)
            throw new ArgumentException($"gate_global must be [B, T, H, D] ({output.Length} floats); it holds {p.GateGlobal.Length}.", "gate_global");
        int size = StateSize(shape, width);
        if (!initialState.IsEmpty && initialState.Length != size)
            throw new ArgumentException($"initialState must be [N, Hkv, W − 1, D] ({size} floats); it holds {initialState.Length}.", nameof(initialState));
        if (!finalState.IsEmpty && finalState.Length != size)
            throw new ArgumentException($"finalState must be [N, Hkv, W − 1, D] ({size} floats); it holds {finalState.Length}.", nameof(finalState));
        return width;
    }

    private static Span<float> AsWritable(ReadOnlySpan<float> span) =>
        System.Runtime.InteropServices.MemoryMarshal.CreateSpan(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(span), span.Length);
}

/// <summary>The float64 definition of <see cref="GatedAssociativeMemory"/>.</summary>
public static class GatedAssociativeMemoryReference
{
    /// <summary>Output <c>[B, T, H, D]</c> and the final window <c>[N, Hkv, W − 1, D]</c>, in float64.</summary>
    public static (double[] Output, double[] State) Forward(float[] q, float[] v, LinearExtraShape shape, float[] memory, float[] conv,
        float[]? gateLocal, float[]? gateGlobal, float? scale, float[]? initialState)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(conv);
        var output = new double[shape.OutputCount];
        int width = GatedAssociativeMemory.Check(shape, q.Length, v.Length, new GamParameters(memory, conv, gateLocal, gateGlobal),
            initialState, new float[output.Length], default, out int slots);
        int d = shape.ValueDim, keep = width - 1;
        double sc = scale ?? 1;
        var state = new double[GatedAssociativeMemory.StateSize(shape, width)];
        for (int n = 0; n < shape.Sequences; n++)
        {
            int len = shape.Length(n), start = shape.Start(n);
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group;
                double Value(int t, int x) => t >= 0 ? v[(int)shape.V(start + t, g) + x]
                    : keep + t >= 0 && initialState is not null ? initialState[((n * shape.KvHeads + g) * keep + keep + t) * d + x] : 0;
                for (int t = 0; t < len; t++)
                {
                    long o = shape.O(start + t, h);
                    var p = new double[slots];
                    double max = double.NegativeInfinity;
                    for (int s = 0; s < slots; s++)
                    {
                        double dot = 0;
                        for (int x = 0; x < d; x++) dot += (double)q[(int)shape.Q(start + t, h) + x] * memory[(h * slots + s) * d + x];
                        p[s] = sc * dot;
                        max = Math.Max(max, p[s]);
                    }
                    double sum = 0;
                    for (int s = 0; s < slots; s++) sum += p[s] = Math.Exp(p[s] - max);
                    for (int x = 0; x < d; x++)
                    {
                        double local = 0, global = 0;
                        for (int w = 0; w < width; w++) local += conv[(h * width + w) * d + x] * Value(t - w, x);
                        for (int s = 0; s < slots; s++) global += p[s] / sum * memory[(h * slots + s) * d + x];
                        double gl = gateLocal is null ? 0.5 : 1 / (1 + Math.Exp(-gateLocal[o + x]));
                        double gg = gateGlobal is null ? 0.5 : 1 / (1 + Math.Exp(-gateGlobal[o + x]));
                        output[o + x] = gl * local + gg * global;
                    }
                }
                if (h % shape.Group == 0)
                    for (int w = 0; w < keep; w++)
                        for (int x = 0; x < d; x++) state[((n * shape.KvHeads + g) * keep + w) * d + x] = Value(len - keep + w, x);
            }
        }
        return (output, state);
    }
}

/// <summary>
/// <see cref="GatedAssociativeMemory"/> as a runnable method. Inputs: <c>q</c> (retrieval queries), <c>k</c> (not
/// read), <c>v</c> (convolution input); optional <c>memory</c> <c>[H, S, D]</c> (default: seeded Xavier-uniform, S =
/// <c>slots</c>), <c>conv</c> <c>[H, W, D]</c> (default: a mean over W = <c>width</c> tokens), <c>gate_local</c> and
/// <c>gate_global</c> logits <c>[B, T, H, D]</c> (default 0), <c>state</c> <c>[N, Hkv, W − 1, D]</c>. Extras: <c>state</c>.
/// </summary>
public sealed class GatedAssociativeMemoryMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "gam";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "linear", "method",
        "Gated Associative Memory: A Parallel O(N) Architecture for Efficient Sequence Modeling (Acharya, 2025)", ["cpu"], "implemented",
        "gated sum of a causal depthwise convolution and a softmax retrieval from a learned memory bank, O(T) (inputs memory [H,S,D], conv [H,W,D], gate_local, gate_global [B,T,H,D], state [N,Hkv,W-1,D])")
    {
        Parameters =
        [
            LinearExtraMethods.FormParameter("chunked", "naive", "chunked", "recurrent"),
            new MethodParameter("slots", "int", "64", "memory bank rows S when no memory input is given"),
            new MethodParameter("width", "int", "3", "convolution width W when no conv input is given"),
            new MethodParameter("seed", "int", "0", "seed of the default memory bank"),
            new MethodParameter("scale", "float", "1", "retrieval score scale (the authors use none)"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearExtraShape shape = LinearExtraShape.Of(inputs);
        string form = LinearExtraMethods.Form(arguments, "chunked", "naive", "chunked", "recurrent");
        int slots = arguments.GetInt("slots", 64, min: 1, max: 65536);
        int width = arguments.GetInt("width", 3, min: 1, max: 4096);
        int seed = arguments.GetInt("seed", 0);
        float scale = (float)arguments.GetDouble("scale", 1);
        arguments.ThrowIfUnused(Name);
        int h = shape.Heads, d = shape.KeyDim;
        MethodTensor? memoryInput = inputs.Find("memory"), convInput = inputs.Find("conv");
        if (memoryInput is not null && (memoryInput.Shape.Count != 3 || memoryInput.Dim(0) != h || memoryInput.Dim(2) != d))
            throw new ArgumentException($"Input 'memory' must be [H, S, D] with H = {h}, D = {d}; got {memoryInput}.", "memory");
        if (convInput is not null && (convInput.Shape.Count != 3 || convInput.Dim(0) != h || convInput.Dim(2) != d))
            throw new ArgumentException($"Input 'conv' must be [H, W, D] with H = {h}, D = {d}; got {convInput}.", "conv");
        float[] memory = memoryInput?.Data ?? GatedAssociativeMemory.RandomMemory(h, slots, d, seed);
        float[] conv = convInput?.Data ?? GatedAssociativeMemory.AveragingConv(h, width, d);
        width = convInput?.Dim(1) ?? width;
        float[]? gl = LinearExtraMethods.Optional(inputs, "gate_local", shape.Batch, shape.Tokens, h, d);
        float[]? gg = LinearExtraMethods.Optional(inputs, "gate_global", shape.Batch, shape.Tokens, h, d);
        float[]? initial = LinearExtraMethods.Optional(inputs, "state", shape.Sequences, shape.KvHeads, width - 1, d);
        var output = new float[shape.OutputCount];
        var final = new float[GatedAssociativeMemory.StateSize(shape, width)];
        if (form == "naive")
        {
            (double[] o, double[] s) = GatedAssociativeMemoryReference.Forward(inputs.Q.Data, inputs.V.Data, shape, memory, conv, gl, gg, scale, initial);
            for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
            for (int i = 0; i < s.Length; i++) final[i] = (float)s[i];
        }
        else GatedAssociativeMemory.Forward(inputs.Q.Data, inputs.V.Data, shape, new GamParameters(memory, conv, gl, gg),
            new GatedAssociativeMemoryOptions { Scale = scale }, initial, output, final, recurrent: form == "recurrent");
        var result = new MethodResult(new MethodTensor(output, shape.Batch, shape.Tokens, h, d));
        result.Extras["state"] = new MethodTensor(final, shape.Sequences, shape.KvHeads, width - 1, d);
        result.Report.Add(new("form", form));
        return result;
    }
}
