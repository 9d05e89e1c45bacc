using System.Buffers;
using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>Options of <see cref="Aaren"/>; null fields take their defaults.</summary>
public sealed record AarenOptions
{
    /// <summary>Score scale; default 1/√Dk.</summary>
    public float? Scale { get; init; }

    /// <summary>Tokens per chunk of the parallel scan (default 64).</summary>
    public int? ChunkSize { get; init; }

    /// <summary>Most threads to use (default: all cores).</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>
/// Aaren — "Attention as an RNN" (Feng, Tung, Hajimirsadeghi, Bengio, Ahmed, 2024). Softmax attention of one query
/// token over a growing token stream is a many-to-one RNN whose state is (m, u, w): the running maximum score, the
/// running Σ e^(s−m)·v and Σ e^(s−m). The state of a token range combines associatively, so the outputs after every
/// prefix (many-to-many) come from a parallel prefix scan. Every form is exact softmax attention of the query token
/// over the causal prefix, so it is tested against <see cref="ReferenceAttention"/> with a causal mask and the query
/// token broadcast to every row.
/// </summary>
/// <remarks>
/// <para>Training: <see cref="Backward"/> gives the gradients of the query token, keys and values in O(T·D) by a
/// reverse scan (checked against <see cref="ReferenceAttention.Backward{T}"/> and finite differences).</para>
/// <para>Forms: <see cref="Recurrent"/> (one token at a time, the decode step) and <see cref="Chunked"/> (the parallel
/// scan as reduce-then-scan over chunks: every chunk reduces to its (m, u, w) in parallel, a short sequential scan over
/// chunk totals gives each chunk its carry-in, and every chunk then scans its own tokens in parallel).
/// <see cref="AarenReference"/> is the float64 quadratic definition (the naive form).</para>
/// <para>Deviations from the paper: the query token is an input (<c>query</c> <c>[N, H, Dk]</c>, one per sequence and
/// head) rather than a learned parameter of a stacked Aaren module; keys and values are given (the paper projects
/// them from the token embeddings); the paper's Hillis–Steele scan over all tokens becomes a chunked reduce-then-scan,
/// which does O(T) work instead of O(T log T) and has the same associative combine; scores carry a scale (default
/// 1/√Dk). Grouped-query: key/value head h / (H / Hkv) serves query head h.</para>
/// <para>State layout <c>[N, H, Dv + 2]</c> float32: u (Dv values), then m, then w. The empty state is
/// u = 0, m = −∞, w = 0 (<see cref="ResetState"/>).</para>
/// </remarks>
public static unsafe class Aaren
{
    /// <summary>Floats per (sequence, head) in the state: u (Dv), m, w.</summary>
    public static int StateRow(LinearExtraShape shape) => shape.ValueDim + 2;

    /// <summary>Floats in the whole state <c>[N, H, Dv + 2]</c>.</summary>
    public static int StateSize(LinearExtraShape shape) => shape.Sequences * shape.Heads * StateRow(shape);

    /// <summary>Writes the empty state (no token seen: u = 0, m = −∞, w = 0).</summary>
    public static void ResetState(LinearExtraShape shape, Span<float> state)
    {
        int row = StateRow(shape);
        state.Clear();
        for (int i = 0; i + row <= state.Length; i += row) state[i + row - 2] = float.NegativeInfinity;
    }

    /// <summary>The parallel-scan form: outputs of every prefix and the final state.</summary>
    /// <param name="query">Query token per sequence and head <c>[N, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets).</param>
    /// <param name="options">Scale, chunk size, threads.</param>
    /// <param name="initialState">State <c>[N, H, Dv + 2]</c> to continue from, or empty for none.</param>
    /// <param name="output">Output <c>[B, T, H, Dv]</c>: row t is attention over tokens ≤ t of its sequence.</param>
    /// <param name="finalState">State after the last token <c>[N, H, Dv + 2]</c>, or empty when not wanted.</param>
    /// <exception cref="ArgumentException">Mis-sized spans or a bad option; the message names it.</exception>
    public static void Chunked(ReadOnlySpan<float> query, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        AarenOptions? options, ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState)
    {
        options ??= new AarenOptions();
        int chunk = options.ChunkSize ?? 64;
        if (chunk < 1) throw new ArgumentOutOfRangeException(nameof(options), chunk, "ChunkSize must be at least 1.");
        Check(query, k, v, shape, initialState, output, finalState);
        int row = StateRow(shape);
        int maxChunks = (shape.MaxLength + chunk - 1) / chunk;
        int items = shape.Sequences * shape.Heads * maxChunks;
        float[] totals = ArrayPool<float>.Shared.Rent(Math.Max(1, items * row));
        float[] scores = ArrayPool<float>.Shared.Rent(Math.Max(1, (int)((long)shape.Batch * shape.Tokens * shape.Heads)));
        try
        {
            fixed (float* pq = query, pk = k, pv = v, po = output, pInit = initialState, pFinal = finalState, pTot = totals, pS = scores)
            {
                var work = new ScanWork
                {
                    Shape = shape, Chunk = chunk, MaxChunks = maxChunks, Row = row,
                    Scale = options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim),
                    Q = pq, K = pk, V = pv, O = po, Init = initialState.IsEmpty ? null : pInit,
                    Final = finalState.IsEmpty ? null : pFinal, Totals = pTot, Scores = pS,
                };
                int threads = options.MaxThreads ?? Environment.ProcessorCount;
                work.Phase = 0;
                ParallelWork.Run(items, threads, work);
                work.Phase = 1;
                ParallelWork.Run(shape.Sequences * shape.Heads, threads, work);
                work.Phase = 2;
                ParallelWork.Run(items, threads, work);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(totals);
            ArrayPool<float>.Shared.Return(scores);
        }
    }

    /// <summary>The recurrent form: one token at a time, carrying (m, u, w) (decode is T = 1 with the previous state).</summary>
    /// <inheritdoc cref="Chunked" />
    public static void Recurrent(ReadOnlySpan<float> query, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        AarenOptions? options, ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState)
    {
        options ??= new AarenOptions();
        Check(query, k, v, shape, initialState, output, finalState);
        int row = StateRow(shape);
        float scale = options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim);
        int dk = shape.KeyDim, dv = shape.ValueDim;
        float[] state = new float[row];
        for (int n = 0; n < shape.Sequences; n++)
        {
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group;
                int s0 = (n * shape.Heads + h) * row;
                if (initialState.IsEmpty) ResetState(shape, state);
                else initialState.Slice(s0, row).CopyTo(state);
                Span<float> u = state.AsSpan(0, dv);
                ReadOnlySpan<float> qh = query.Slice((n * shape.Heads + h) * dk, dk);
                for (int t = 0; t < shape.Length(n); t++)
                {
                    int r = shape.Start(n) + t;
                    float s = scale * TensorPrimitives.Dot(qh, k.Slice((int)shape.K(r, g), dk));
                    AddToken(state, dv, s, v.Slice((int)shape.V(r, g), dv));
                    TensorPrimitives.Divide(u, state[dv + 1], output.Slice((int)shape.O(r, h), dv));
                }
                if (!finalState.IsEmpty) state.CopyTo(finalState.Slice(s0, row));
            }
        }
    }

    /// <summary>
    /// Gradients of Σ dO ⊙ output with respect to the query tokens, keys and values, in O(T·D) per head: with
    /// lse_t the log-sum-exp after token t (non-decreasing in t), p_ti = e^(s_i − lse_t), and the suffix sums
    /// Â_i = Σ_(t≥i) e^(lse_i − lse_t)·dO_t and B̂_i = Σ_(t≥i) e^(lse_i − lse_t)·(dO_t·o_t) (every factor ≤ 1, taken by
    /// a reverse scan), dV_i = e^(s_i − lse_i)·Â_i and dS_i = e^(s_i − lse_i)·(v_i·Â_i − B̂_i); dK_i = scale·dS_i·query,
    /// dQuery = scale·Σ_i dS_i·k_i. An initial state is a constant (it enters lse and the outputs, and gets no gradient).
    /// </summary>
    /// <param name="query">Query token per sequence and head <c>[N, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets).</param>
    /// <param name="options">Scale (the chunk size plays no part).</param>
    /// <param name="initialState">The forward's initial state <c>[N, H, Dv + 2]</c>, or empty.</param>
    /// <param name="output">The forward's output <c>[B, T, H, Dv]</c>.</param>
    /// <param name="outputGradient">dO <c>[B, T, H, Dv]</c>.</param>
    /// <param name="queryGradient">dQuery <c>[N, H, Dk]</c> (overwritten).</param>
    /// <param name="keyGradient">dK <c>[B, T, Hkv, Dk]</c> (overwritten; query heads of a group add up).</param>
    /// <param name="valueGradient">dV <c>[B, T, Hkv, Dv]</c> (overwritten).</param>
    /// <exception cref="ArgumentException">Mis-sized spans; the message names them.</exception>
    public static void Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        AarenOptions? options, ReadOnlySpan<float> initialState, ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient,
        Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient)
    {
        options ??= new AarenOptions();
        Check(query, k, v, shape, initialState, output, default);
        if (outputGradient.Length != output.Length)
            throw new ArgumentException($"outputGradient holds {outputGradient.Length} floats; [B, T, H, Dv] needs {output.Length}.", nameof(outputGradient));
        if (queryGradient.Length != query.Length)
            throw new ArgumentException($"queryGradient holds {queryGradient.Length} floats; [N, H, Dk] needs {query.Length}.", nameof(queryGradient));
        if (keyGradient.Length != k.Length) throw new ArgumentException($"keyGradient holds {keyGradient.Length} floats; k has {k.Length}.", nameof(keyGradient));
        if (valueGradient.Length != v.Length) throw new ArgumentException($"valueGradient holds {valueGradient.Length} floats; v has {v.Length}.", nameof(valueGradient));
        float scale = options.Scale ?? 1f / MathF.Sqrt(shape.KeyDim);
        int dk = shape.KeyDim, dv = shape.ValueDim, row = StateRow(shape);
        queryGradient.Clear();
        keyGradient.Clear();
        valueGradient.Clear();
        var scores = new float[shape.MaxLength];
        var lse = new float[shape.MaxLength];
        var a = new float[dv];
        for (int n = 0; n < shape.Sequences; n++)
        {
            int len = shape.Length(n), start = shape.Start(n);
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group;
                ReadOnlySpan<float> qh = query.Slice((n * shape.Heads + h) * dk, dk);
                Span<float> dq = queryGradient.Slice((n * shape.Heads + h) * dk, dk);
                // Forward: scores and lse after every token (from the initial state's m + ln w).
                float m = initialState.IsEmpty ? float.NegativeInfinity : initialState[(n * shape.Heads + h) * row + dv];
                float w = initialState.IsEmpty ? 0 : initialState[(n * shape.Heads + h) * row + dv + 1];
                for (int t = 0; t < len; t++)
                {
                    float sc = scale * TensorPrimitives.Dot(qh, k.Slice((int)shape.K(start + t, g), dk));
                    scores[t] = sc;
                    float mNew = MathF.Max(m, sc);
                    w = (float.IsNegativeInfinity(m) ? 0 : w * MathF.Exp(m - mNew)) + MathF.Exp(sc - mNew);
                    m = mNew;
                    lse[t] = m + MathF.Log(w);
                }
                // Reverse scan of Â (vector) and B̂ (scalar).
                a.AsSpan().Clear();
                float b = 0;
                for (int t = len - 1; t >= 0; t--)
                {
                    int r = start + t;
                    ReadOnlySpan<float> dOt = outputGradient.Slice((int)shape.O(r, h), dv);
                    float decay = t == len - 1 ? 0 : MathF.Exp(lse[t] - lse[t + 1]);
                    TensorPrimitives.MultiplyAdd(a, decay, dOt, a);
                    b = decay * b + TensorPrimitives.Dot(dOt, output.Slice((int)shape.O(r, h), dv));
                    float p = MathF.Exp(scores[t] - lse[t]);
                    ReadOnlySpan<float> vt = v.Slice((int)shape.V(r, g), dv);
                    Span<float> dvt = valueGradient.Slice((int)shape.V(r, g), dv);
                    TensorPrimitives.MultiplyAdd(a, p, dvt, dvt);
                    float ds = scale * p * (TensorPrimitives.Dot(vt, a) - b);
                    Span<float> dkt = keyGradient.Slice((int)shape.K(r, g), dk);
                    TensorPrimitives.MultiplyAdd(qh, ds, dkt, dkt);
                    TensorPrimitives.MultiplyAdd(k.Slice((int)shape.K(r, g), dk), ds, dq, dq);
                }
            }
        }
    }

    // (m, u, w) ← (m, u, w) ⊕ one token with score s and value x.
    private static void AddToken(Span<float> state, int dv, float s, ReadOnlySpan<float> x)
    {
        float m = state[dv];
        float mNew = MathF.Max(m, s);
        float a = float.IsNegativeInfinity(m) ? 0f : MathF.Exp(m - mNew);
        float b = MathF.Exp(s - mNew);
        Span<float> u = state[..dv];
        TensorPrimitives.Multiply(u, a, u);
        TensorPrimitives.MultiplyAdd(x, b, u, u);
        state[dv] = mNew;
        state[dv + 1] = a * state[dv + 1] + b;
    }

    // into ← into ⊕ other, the associative combine of two (u, m, w) rows.
    private static void Combine(Span<float> into, ReadOnlySpan<float> other, int dv)
    {
        float m1 = into[dv], m2 = other[dv];
        if (float.IsNegativeInfinity(m2)) return;
        float m = MathF.Max(m1, m2);
        float a = float.IsNegativeInfinity(m1) ? 0f : MathF.Exp(m1 - m);
        float b = MathF.Exp(m2 - m);
        Span<float> u = into[..dv];
        TensorPrimitives.Multiply(u, a, u);
        TensorPrimitives.MultiplyAdd(other[..dv], b, u, u);
        into[dv] = m;
        into[dv + 1] = a * into[dv + 1] + b * other[dv + 1];
    }

    private static void Check(ReadOnlySpan<float> query, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        ReadOnlySpan<float> initialState, ReadOnlySpan<float> output, ReadOnlySpan<float> finalState)
    {
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate((int)shape.QueryCount, k.Length, v.Length, output.Length);
        int queries = shape.Sequences * shape.Heads * shape.KeyDim;
        if (query.Length != queries)
            throw new ArgumentException($"query holds {query.Length} floats; [N, H, Dk] = [{shape.Sequences}, {shape.Heads}, {shape.KeyDim}] needs {queries}.", nameof(query));
        int size = StateSize(shape);
        if (!initialState.IsEmpty && initialState.Length != size)
            throw new ArgumentException($"initialState holds {initialState.Length} floats; [N, H, Dv + 2] needs {size}.", nameof(initialState));
        if (!finalState.IsEmpty && finalState.Length != size)
            throw new ArgumentException($"finalState holds {finalState.Length} floats; [N, H, Dv + 2] needs {size}.", nameof(finalState));
    }

    private sealed class ScanWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public int Chunk, MaxChunks, Row, Phase;
        public float Scale;
        public float* Q, K, V, O, Init, Final, Totals, Scores;

        public void Execute(int index)
        {
            if (Phase == 1) { ScanTotals(index); return; }
            int c = index % MaxChunks, nh = index / MaxChunks;
            int n = nh / Shape.Heads, h = nh % Shape.Heads, g = h / Shape.Group;
            int length = Shape.Length(n);
            int t0 = c * Chunk, t1 = Math.Min(length, t0 + Chunk);
            if (t0 >= length) return;
            int dk = Shape.KeyDim, dv = Shape.ValueDim;
            var total = new Span<float>(Totals + (long)index * Row, Row);
            if (Phase == 0)
            {
                // Reduce: scores of the chunk (kept for the scan phase) and the chunk's own (u, m, w).
                var q = new ReadOnlySpan<float>(Q + ((long)n * Shape.Heads + h) * dk, dk);
                total.Clear();
                total[dv] = float.NegativeInfinity;
                for (int t = t0; t < t1; t++)
                {
                    int r = Shape.Start(n) + t;
                    float s = Scale * TensorPrimitives.Dot(q, new ReadOnlySpan<float>(K + Shape.K(r, g), dk));
                    Scores[(long)r * Shape.Heads + h] = s;
                    AddToken(total, dv, s, new ReadOnlySpan<float>(V + Shape.V(r, g), dv));
                }
                return;
            }
            // Scan: start from the carry-in phase 1 left in place of the chunk total, then one token at a time.
            for (int t = t0; t < t1; t++)
            {
                int r = Shape.Start(n) + t;
                AddToken(total, dv, Scores[(long)r * Shape.Heads + h], new ReadOnlySpan<float>(V + Shape.V(r, g), dv));
                TensorPrimitives.Divide(total[..dv], total[dv + 1], new Span<float>(O + Shape.O(r, h), dv));
            }
        }

        // Exclusive scan over the chunk totals of one (sequence, head): each total is replaced by its carry-in.
        private void ScanTotals(int nh)
        {
            int n = nh / Shape.Heads, dv = Shape.ValueDim;
            float* scratch = Scratch.Get(2L * Row);
            var carry = new Span<float>(scratch, Row);
            var own = new Span<float>(scratch + Row, Row);
            if (Init is null)
            {
                carry.Clear();
                carry[dv] = float.NegativeInfinity;
            }
            else new ReadOnlySpan<float>(Init + (long)nh * Row, Row).CopyTo(carry);
            int chunks = (Shape.Length(n) + Chunk - 1) / Chunk;
            for (int c = 0; c < chunks; c++)
            {
                var total = new Span<float>(Totals + ((long)nh * MaxChunks + c) * Row, Row);
                total.CopyTo(own);
                carry.CopyTo(total);
                Combine(carry, own, dv);
            }
            if (Final is not null) carry.CopyTo(new Span<float>(Final + (long)nh * Row, Row));
        }
    }
}

/// <summary>
/// The float64 definition of <see cref="Aaren"/>: for every token t, softmax attention of the sequence's query token
/// over the (initial state and) tokens ≤ t, computed directly in O(T²) per head. The oracle of its tests.
/// </summary>
public static class AarenReference
{
    /// <summary>Output <c>[B, T, H, Dv]</c> and final state <c>[N, H, Dv + 2]</c> (u, m, w), in float64.</summary>
    public static (double[] Output, double[] State) Forward(ReadOnlySpan<float> query, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        LinearExtraShape shape, float? scale, ReadOnlySpan<float> initialState)
    {
        ArgumentNullException.ThrowIfNull(shape);
        int dk = shape.KeyDim, dv = shape.ValueDim, row = dv + 2;
        double sc = scale ?? 1.0 / Math.Sqrt(dk);
        var output = new double[shape.OutputCount];
        var state = new double[Aaren.StateSize(shape)];
        var scores = new double[shape.MaxLength];
        for (int n = 0; n < shape.Sequences; n++)
        {
            for (int h = 0; h < shape.Heads; h++)
            {
                int g = h / shape.Group, s0 = (n * shape.Heads + h) * row;
                double m0 = initialState.IsEmpty ? double.NegativeInfinity : initialState[s0 + dv];
                double w0 = initialState.IsEmpty ? 0 : initialState[s0 + dv + 1];
                int length = shape.Length(n);
                for (int t = 0; t < length; t++)
                {
                    int r = shape.Start(n) + t;
                    double s = 0;
                    for (int i = 0; i < dk; i++) s += (double)query[(n * shape.Heads + h) * dk + i] * k[(int)shape.K(r, g) + i];
                    scores[t] = sc * s;
                }
                for (int t = 0; t <= length; t++)
                {
                    // Prefix [0, t): the output of token t - 1, or the final state when t == length.
                    if (t == 0 && length > 0) continue;
                    double m = m0;
                    for (int j = 0; j < t; j++) m = Math.Max(m, scores[j]);
                    double w = double.IsNegativeInfinity(m0) ? 0 : w0 * Math.Exp(m0 - m);
                    var u = new double[dv];
                    for (int i = 0; i < dv && !double.IsNegativeInfinity(m0); i++) u[i] = initialState[s0 + i] * Math.Exp(m0 - m);
                    for (int j = 0; j < t; j++)
                    {
                        double e = Math.Exp(scores[j] - m);
                        w += e;
                        int vr = (int)shape.V(shape.Start(n) + j, g);
                        for (int i = 0; i < dv; i++) u[i] += e * v[vr + i];
                    }
                    if (t > 0)
                    {
                        long o = shape.O(shape.Start(n) + t - 1, h);
                        for (int i = 0; i < dv; i++) output[o + i] = u[i] / w;
                    }
                    if (t == length)
                    {
                        for (int i = 0; i < dv; i++) state[s0 + i] = u[i];
                        state[s0 + dv] = m;
                        state[s0 + dv + 1] = w;
                    }
                }
            }
        }
        return (output, state);
    }
}

/// <summary>
/// <see cref="Aaren"/> as a runnable method. Inputs: <c>q</c> (the query token is row 0 of each sequence, unless the
/// input <c>query</c> <c>[N, H, Dk]</c> is given; the other rows of <c>q</c> are not read), <c>k</c>, <c>v</c>,
/// optional <c>state</c> <c>[N, H, Dv + 2]</c>. Extras: <c>state</c>.
/// </summary>
public sealed class AarenMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "aaren";

    /// <summary>The paper.</summary>
    public const string Paper = "Attention as an RNN (Feng, Tung, Hajimirsadeghi, Bengio, Ahmed, 2024)";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "softmax attention of one query token over every prefix, as an RNN (m, u, w) and a parallel prefix scan; exact (inputs query [N,H,Dk], state [N,H,Dv+2])")
    {
        Parameters =
        [
            LinearExtraMethods.FormParameter("chunked", "naive", "chunked", "recurrent"),
            new MethodParameter("chunk", "int", "64", "tokens per chunk of the parallel scan"),
            new MethodParameter("scale", "float", "1/sqrt(Dk)", "score scale"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearExtraShape shape = LinearExtraShape.Of(inputs);
        string form = LinearExtraMethods.Form(arguments, "chunked", "naive", "chunked", "recurrent");
        int chunk = arguments.GetInt("chunk", 64, min: 1);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        arguments.ThrowIfUnused(Name);

        int nSeq = shape.Sequences, h = shape.Heads, dk = shape.KeyDim;
        float[] query = LinearExtraMethods.Optional(inputs, "query", nSeq, h, dk) ?? QueryTokens(inputs.Q.Data, shape);
        float[] initial = LinearExtraMethods.Optional(inputs, "state", nSeq, h, shape.ValueDim + 2) ?? [];
        var output = new float[shape.OutputCount];
        var final = new float[Aaren.StateSize(shape)];
        var options = new AarenOptions { Scale = scale, ChunkSize = chunk };
        switch (form)
        {
            case "naive":
                (double[] o, double[] s) = AarenReference.Forward(query, inputs.K.Data, inputs.V.Data, shape, scale, initial);
                for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
                for (int i = 0; i < s.Length; i++) final[i] = (float)s[i];
                break;
            case "chunked":
                Aaren.Chunked(query, inputs.K.Data, inputs.V.Data, shape, options, initial, output, final);
                break;
            default:
                Aaren.Recurrent(query, inputs.K.Data, inputs.V.Data, shape, options, initial, output, final);
                break;
        }
        var result = new MethodResult(new MethodTensor(output, shape.Batch, shape.Tokens, h, shape.ValueDim));
        result.Extras["state"] = new MethodTensor(final, nSeq, h, shape.ValueDim + 2);
        result.Report.Add(new("form", form));
        return result;
    }

    // Row 0 of each sequence of q as that sequence's query token [N, H, Dk] (zeros for an empty sequence).
    internal static float[] QueryTokens(float[] q, LinearExtraShape shape)
    {
        int hd = shape.Heads * shape.KeyDim;
        var query = new float[shape.Sequences * hd];
        for (int n = 0; n < shape.Sequences; n++)
            if (shape.Length(n) > 0) Array.Copy(q, shape.Q(shape.Start(n), 0), query, n * hd, hd);
        return query;
    }
}
