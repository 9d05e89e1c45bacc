using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>Options of <see cref="TitansMemory"/>; null fields take their defaults.</summary>
public sealed record TitansMemoryOptions
{
    /// <summary>Hidden width of the memory MLP (default Dk).</summary>
    public int? Hidden { get; init; }

    /// <summary>Tokens per chunk of the chunked form: the gradients of a chunk are all taken at the chunk's starting weights (default 16).</summary>
    public int? ChunkSize { get; init; }

    /// <summary>Forgetting gate α ∈ [0, 1] for every token when no per-token gates are given (default 0.01).</summary>
    public float? Alpha { get; init; }

    /// <summary>Momentum decay η ∈ [0, 1] when no per-token gates are given (default 0.9).</summary>
    public float? Eta { get; init; }

    /// <summary>Inner learning rate θ ≥ 0 when no per-token gates are given (default 0.2 / (b·Dv): a chunk of b tokens
    /// sums b gradients, momentum η = 0.9 multiplies the step by up to 10, and the curvature of the first layer grows
    /// with ‖v‖² ≈ Dv for unit-variance values, so a fixed θ diverges for large b or Dv, in float64 too).</summary>
    public float? Theta { get; init; }

    /// <summary>Most threads to use (default: all cores).</summary>
    public int? MaxThreads { get; init; }
}

/// <summary>Per-token gates of <see cref="TitansMemory"/>, each <c>[B, T, Hkv]</c>; an empty span takes the scalar option.</summary>
/// <param name="Alpha">Forgetting α_t ∈ [0, 1].</param>
/// <param name="Eta">Momentum decay η_t ∈ [0, 1].</param>
/// <param name="Theta">Inner learning rate θ_t ≥ 0.</param>
public readonly ref struct TitansGates(ReadOnlySpan<float> Alpha, ReadOnlySpan<float> Eta, ReadOnlySpan<float> Theta)
{
    /// <summary>Forgetting α_t.</summary>
    public ReadOnlySpan<float> Alpha { get; } = Alpha;

    /// <summary>Momentum decay η_t.</summary>
    public ReadOnlySpan<float> Eta { get; } = Eta;

    /// <summary>Inner learning rate θ_t.</summary>
    public ReadOnlySpan<float> Theta { get; } = Theta;
}

/// <summary>
/// Titans neural long-term memory (Behrouz, Zhong, Mirrokni, 2025: "Titans: Learning to Memorize at Test Time"). The
/// memory is an MLP M(x) = W2·silu(W1·x), written at test time by gradient steps on the associative loss
/// ℓ(M; k_t, v_t) = ‖M(k_t) − v_t‖² with momentum ("surprise") and weight-decay forgetting:
/// S_t = η_t·S_(t−1) − θ_t·∇ℓ, M_t = (1 − α_t)·M_(t−1) + S_t, and read by y_t = M_t(q_t). The state is the MLP
/// weights and the momentum.
/// </summary>
/// <remarks>
/// <para>The paper's parallel training computes the memory in mini-batches ("chunks") of b tokens: every gradient of
/// a chunk is taken at the weights the chunk started with, G, while momentum and forgetting still run token by token.
/// That is the definition here, for every form, so the three forms agree for any b (b = 1 is the pure per-token
/// update). <see cref="Recurrent"/>: one token at a time (the decode step; the state remembers G and the position in
/// the chunk, so a decode continues a partly filled chunk exactly). <see cref="Chunked"/>: the paper's parallel form
/// — the gradients of a chunk come from a few matrix products at G; the momentum and forgetting recurrences are
/// linear, so W_t of every token is W, S and the chunk's rank-one gradients with scalar coefficients (computed in
/// O(b²)), and the read-out y_t = W2_t·silu(W1_t·q_t) becomes masked attention-like products (Q·Kᵀ ⊙ Γ)·Δ inside the
/// chunk. <see cref="TitansMemoryReference"/> is the float64 definition token by token (the naive form).</para>
/// <para>Deviations from the paper: keys and values are given (the paper projects them, with a 1-D depthwise
/// convolution, from the input); q and k are ℓ2-normalised inside, as in the paper; the memory is a two-layer MLP
/// without biases, residual or normalisation (the paper allows L_M ≥ 1 layers and uses a residual in practice); the
/// loss has no 1/2; gates α, η, θ are inputs (the paper computes them from the token), one per key/value head; only
/// the memory (the paper's "long-term memory" module) is computed — how it is combined with attention (MAC, MAG, MAL)
/// and the persistent memory tokens are left to the model. Grouped-query: the memory belongs to key/value head g and
/// every query head of its group reads it.</para>
/// <para>State layout <c>[N, Hkv, P]</c>, P = 3·(Hd·Dk + Dv·Hd) + 1: W1 <c>[Hd, Dk]</c>, W2 <c>[Dv, Hd]</c>, the momenta
/// S1, S2, the chunk's gradient weights G1, G2 (same shapes), and the position in the current chunk (an integer stored
/// as a float, in [0, b)). Without an initial state, W1 and W2 start as truncated identities and S as 0
/// (<see cref="InitialState"/>): a memory of zeros would never move, since both its gradients would be 0.</para>
/// </remarks>
public static unsafe partial class TitansMemory
{
    /// <summary>Floats of one memory: W1, W2, S1, S2, G1, G2 and the position in the chunk.</summary>
    public static int StateRow(int keyDim, int hidden, int valueDim) => 3 * (hidden * keyDim + valueDim * hidden) + 1;

    /// <summary>The default initial state <c>[N, Hkv, P]</c>: W1, W2 (and G1, G2) truncated identities, momenta 0, position 0.</summary>
    public static float[] InitialState(LinearExtraShape shape, int hidden)
    {
        ArgumentNullException.ThrowIfNull(shape);
        int dk = shape.KeyDim, dv = shape.ValueDim, row = StateRow(dk, hidden, dv);
        var state = new float[shape.Sequences * shape.KvHeads * row];
        for (int r = 0; r < shape.Sequences * shape.KvHeads; r++)
        {
            int n1 = hidden * dk, n2 = dv * hidden;
            foreach (int w1 in (int[])[r * row, r * row + 2 * (n1 + n2)])
            {
                int w2 = w1 + n1;
                for (int i = 0; i < Math.Min(hidden, dk); i++) state[w1 + i * dk + i] = 1;
                for (int i = 0; i < Math.Min(hidden, dv); i++) state[w2 + i * hidden + i] = 1;
            }
        }
        return state;
    }

    /// <summary>The chunked (parallel mini-batch) form.</summary>
    /// <param name="q">Queries <c>[B, T, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets; chunks start at every sequence start).</param>
    /// <param name="gates">Per-token gates, or empty spans for the option scalars.</param>
    /// <param name="options">Hidden width, chunk size, default gates, threads.</param>
    /// <param name="initialState">Memory <c>[N, Hkv, P]</c> to continue from.</param>
    /// <param name="output">Read-out <c>[B, T, H, Dv]</c>.</param>
    /// <param name="finalState">Memory after the last token <c>[N, Hkv, P]</c>.</param>
    /// <exception cref="ArgumentException">Mis-sized spans, or a gate or option out of range; the message names it.</exception>
    public static void Chunked(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, TitansGates gates,
        TitansMemoryOptions? options, ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState) =>
        Run(q, k, v, shape, gates, options, initialState, output, finalState, recurrent: false);

    /// <summary>The recurrent form: one token at a time (decode is T = 1 with the previous state).</summary>
    /// <inheritdoc cref="Chunked" />
    public static void Recurrent(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, TitansGates gates,
        TitansMemoryOptions? options, ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState) =>
        Run(q, k, v, shape, gates, options, initialState, output, finalState, recurrent: true);

    private static void Run(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, TitansGates gates,
        TitansMemoryOptions? options, ReadOnlySpan<float> initialState, Span<float> output, Span<float> finalState, bool recurrent)
    {
        options ??= new TitansMemoryOptions();
        Resolved o = Resolve(shape, options, gates, q.Length, k.Length, v.Length, output.Length);
        int size = shape.Sequences * shape.KvHeads * o.Row;
        if (initialState.Length != size)
            throw new ArgumentException($"initialState holds {initialState.Length} floats; [N, Hkv, P] = [{shape.Sequences}, {shape.KvHeads}, {o.Row}] needs {size}.", nameof(initialState));
        if (finalState.Length != size)
            throw new ArgumentException($"finalState holds {finalState.Length} floats; [N, Hkv, P] needs {size}.", nameof(finalState));
        for (int r = o.Row - 1; r < size; r += o.Row)
        {
            float pos = initialState[r];
            if (!(pos >= 0 && pos < o.Chunk && pos == MathF.Floor(pos)))
                throw new ArgumentException($"initialState: the position slot (last of each memory) must be an integer in [0, chunk = {o.Chunk}); got {pos}.", nameof(initialState));
        }
        initialState.CopyTo(finalState);
        fixed (float* pq = q, pk = k, pv = v, po = output, ps = finalState, pa = gates.Alpha, pe = gates.Eta, pt = gates.Theta)
        {
            var work = new MemoryWork
            {
                Shape = shape, Hidden = o.Hidden, Chunk = o.Chunk, Segment = recurrent ? 1 : o.Chunk, Row = o.Row,
                Alpha = o.Alpha, Eta = o.Eta, Theta = o.Theta,
                Q = pq, K = pk, V = pv, O = po, State = ps,
                AlphaT = gates.Alpha.IsEmpty ? null : pa, EtaT = gates.Eta.IsEmpty ? null : pe, ThetaT = gates.Theta.IsEmpty ? null : pt,
            };
            ParallelWork.Run(shape.Sequences * shape.KvHeads, options.MaxThreads ?? Environment.ProcessorCount, work);
        }
    }

    /// <summary>Largest <see cref="TitansMemoryOptions.ChunkSize"/>.</summary>
    public const int MaxChunk = 1024;

    internal readonly record struct Resolved(int Hidden, int Chunk, int Row, float Alpha, float Eta, float Theta);

    internal static Resolved Resolve(LinearExtraShape shape, TitansMemoryOptions options, TitansGates gates, int qLength, int kLength, int vLength, int outputLength)
    {
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate(qLength, kLength, vLength, outputLength);
        int hidden = options.Hidden ?? shape.KeyDim, chunk = options.ChunkSize ?? 16;
        if (hidden < 1) throw new ArgumentOutOfRangeException(nameof(options), hidden, "Hidden must be at least 1.");
        // The chunked form keeps a chunk × chunk coefficient matrix per work item: 1024 is 4 MB, and a larger chunk gains
        // nothing a sequence of that length would not (the other linear methods cap their chunk the same way).
        if (chunk < 1 || chunk > MaxChunk)
            throw new ArgumentOutOfRangeException(nameof(options), chunk, $"ChunkSize must be in [1, {MaxChunk}].");
        float alpha = options.Alpha ?? 0.01f, eta = options.Eta ?? 0.9f, theta = options.Theta ?? 0.2f / ((float)chunk * shape.ValueDim);
        CheckGate(alpha, 0, 1, "alpha");
        CheckGate(eta, 0, 1, "eta");
        CheckGate(theta, 0, float.MaxValue, "theta");
        long count = (long)shape.Batch * shape.Tokens * shape.KvHeads;
        CheckGates(gates.Alpha, count, 0, 1, "alpha");
        CheckGates(gates.Eta, count, 0, 1, "eta");
        CheckGates(gates.Theta, count, 0, float.MaxValue, "theta");
        return new Resolved(hidden, chunk, StateRow(shape.KeyDim, hidden, shape.ValueDim), alpha, eta, theta);
    }

    private static void CheckGate(float value, float min, float max, string name)
    {
        if (!(value >= min && value <= max))
            throw new ArgumentOutOfRangeException(name, value, $"Gate {name} must be in [{min}, {(max == float.MaxValue ? "∞" : max)}].");
    }

    private static void CheckGates(ReadOnlySpan<float> gates, long count, float min, float max, string name)
    {
        if (gates.IsEmpty) return;
        if (gates.Length != count) throw new ArgumentException($"Gate {name} holds {gates.Length} floats; [B, T, Hkv] needs {count}.", name);
        foreach (float g in gates) CheckGate(g, min, max, name);
    }

    internal static float Silu(float x) => x / (1 + MathF.Exp(-x));

    internal static float SiluDerivative(float x)
    {
        float s = 1 / (1 + MathF.Exp(-x));
        return s * (1 + x * (1 - s));
    }

    /// <summary>
    /// ∇ℓ of ℓ = ‖W2·silu(W1·k) − v‖² with respect to W1 <c>[Hd, Dk]</c> and W2 <c>[Dv, Hd]</c> (float32; the inner
    /// gradient every form steps with).
    /// </summary>
    internal static void InnerGradient(ReadOnlySpan<float> w1, ReadOnlySpan<float> w2, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        int hidden, Span<float> g1, Span<float> g2)
    {
        int dk = k.Length, dv = v.Length;
        Span<float> h = stackalloc float[hidden], a = stackalloc float[hidden], e = stackalloc float[dv], d = stackalloc float[hidden];
        for (int i = 0; i < hidden; i++) { h[i] = TensorPrimitives.Dot(w1.Slice(i * dk, dk), k); a[i] = Silu(h[i]); }
        for (int o = 0; o < dv; o++) e[o] = 2 * (TensorPrimitives.Dot(w2.Slice(o * hidden, hidden), a) - v[o]);
        d.Clear();
        for (int o = 0; o < dv; o++) TensorPrimitives.MultiplyAdd(w2.Slice(o * hidden, hidden), e[o], d, d);
        for (int i = 0; i < hidden; i++) d[i] *= SiluDerivative(h[i]);
        for (int o = 0; o < dv; o++) TensorPrimitives.Multiply(a, e[o], g2.Slice(o * hidden, hidden));
        for (int i = 0; i < hidden; i++) TensorPrimitives.Multiply(k, d[i], g1.Slice(i * dk, dk));
    }

    private sealed class MemoryWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public int Hidden, Chunk, Segment, Row;
        public float Alpha, Eta, Theta;
        public float* Q, K, V, O, State, AlphaT, EtaT, ThetaT;

        public void Execute(int index)
        {
            int n = index / Shape.KvHeads, g = index % Shape.KvHeads;
            int len = Shape.Length(n), start = Shape.Start(n);
            int dk = Shape.KeyDim, dv = Shape.ValueDim, hd = Hidden, c = Segment, group = Shape.Group;
            int n1 = hd * dk, n2 = dv * hd;
            float* w1 = State + (long)index * Row, w2 = w1 + n1, s1 = w2 + n2, s2 = s1 + n1, gw1 = s2 + n2, gw2 = gw1 + n1, slot = gw2 + n2;
            int pos = (int)*slot; // checked in Run: an integer in [0, Chunk)
            // Scratch: normalised keys and queries of the chunk, activations, errors, deltas, coefficients, read-out.
            long need = (long)c * dk + (long)c * group * dk + 5L * c * hd + (long)c * dv + (long)c * c + 4L * c;
            float* p = Scratch.Get(need);
            float* kn = p; p += (long)c * dk;
            float* qn = p; p += (long)c * group * dk;
            float* hk = p; p += (long)c * hd;       // silu'(W1·k̂_s)
            float* ak = p; p += (long)c * hd;       // a_s = silu(W1·k̂_s)
            float* dl = p; p += (long)c * hd;       // δ_s = (W2ᵀ·e_s) ⊙ silu'(W1·k̂_s)
            float* ek = p; p += (long)c * dv;       // e_s = 2(W2·a_s − v_s)
            float* gam = p; p += (long)c * c;       // Γ[t, s] = coefficient of g_s in W_t
            float* mom = p; p += c;                 // −θ_s·E(s, C): coefficient of g_s in the final momentum
            float* decay = p; p += c;               // A_t = Π(1 − α)
            float* carry = p; p += c;               // ς_t = coefficient of S_0 in W_t
            float* etaAll = p; p += c;              // E(0, t)
            float* hq = p; p += (long)c * hd;       // W1_t·q̂_t
            float* bq = p;                          // silu(W1_t·q̂_t)

            // Segments: at most `Segment` tokens (the whole chunk, or 1 for the recurrent form), never across a chunk
            // boundary. A chunk's gradients are all taken at G, the weights when the chunk began.
            for (int t0 = 0; t0 < len; )
            {
                if (pos == 0)
                {
                    new ReadOnlySpan<float>(w1, n1).CopyTo(new Span<float>(gw1, n1));
                    new ReadOnlySpan<float>(w2, n2).CopyTo(new Span<float>(gw2, n2));
                }
                int cl = Math.Min(Math.Min(c, Chunk - pos), len - t0);
                // Normalised keys and queries.
                for (int s = 0; s < cl; s++)
                {
                    int r = start + t0 + s;
                    Normalise(K + Shape.K(r, g), kn + (long)s * dk, dk);
                    for (int j = 0; j < group; j++) Normalise(Q + Shape.Q(r, g * group + j), qn + ((long)j * cl + s) * dk, dk);
                }
                // Gradients at G, the chunk's starting weights: a_s, e_s, δ_s.
                for (int s = 0; s < cl; s++)
                {
                    var ks = new ReadOnlySpan<float>(kn + (long)s * dk, dk);
                    for (int i = 0; i < hd; i++)
                    {
                        float h = TensorPrimitives.Dot(new ReadOnlySpan<float>(gw1 + (long)i * dk, dk), ks);
                        ak[(long)s * hd + i] = Silu(h);
                        hk[(long)s * hd + i] = SiluDerivative(h);
                    }
                    var a = new ReadOnlySpan<float>(ak + (long)s * hd, hd);
                    float* vs = V + Shape.V(start + t0 + s, g);
                    for (int o = 0; o < dv; o++) ek[(long)s * dv + o] = 2 * (TensorPrimitives.Dot(new ReadOnlySpan<float>(gw2 + (long)o * hd, hd), a) - vs[o]);
                    var d = new Span<float>(dl + (long)s * hd, hd);
                    d.Clear();
                    for (int o = 0; o < dv; o++) TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(gw2 + (long)o * hd, hd), ek[(long)s * dv + o], d, d);
                    TensorPrimitives.Multiply(d, new ReadOnlySpan<float>(hk + (long)s * hd, hd), d);
                }
                Coefficients(start + t0, g, cl, gam, mom, decay, carry, etaAll);

                // Read-out of every query head of the group: y_t = W2_t·silu(W1_t·q̂_t), W_t expanded in the chunk's terms.
                for (int j = 0; j < group; j++)
                {
                    float* qj = qn + (long)j * cl * dk;
                    // hq = A_t·W1·q̂ + ς_t·S1·q̂ + Σ_s Γ[t,s]·(k̂_s·q̂_t)·δ_s
                    for (int t = 0; t < cl; t++)
                    {
                        var qt = new ReadOnlySpan<float>(qj + (long)t * dk, dk);
                        for (int i = 0; i < hd; i++)
                            hq[(long)t * hd + i] = decay[t] * TensorPrimitives.Dot(new ReadOnlySpan<float>(w1 + (long)i * dk, dk), qt)
                                                 + carry[t] * TensorPrimitives.Dot(new ReadOnlySpan<float>(s1 + (long)i * dk, dk), qt);
                        var row = new Span<float>(hq + (long)t * hd, hd);
                        for (int s = 0; s <= t; s++)
                        {
                            float coef = gam[(long)t * c + s] * TensorPrimitives.Dot(new ReadOnlySpan<float>(kn + (long)s * dk, dk), qt);
                            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(dl + (long)s * hd, hd), coef, row, row);
                        }
                        for (int i = 0; i < hd; i++) bq[(long)t * hd + i] = Silu(row[i]);
                    }
                    // y = A_t·W2·b + ς_t·S2·b + Σ_s Γ[t,s]·(a_s·b_t)·e_s
                    for (int t = 0; t < cl; t++)
                    {
                        var bt = new ReadOnlySpan<float>(bq + (long)t * hd, hd);
                        var y = new Span<float>(O + Shape.O(start + t0 + t, g * group + j), dv);
                        for (int o = 0; o < dv; o++)
                            y[o] = decay[t] * TensorPrimitives.Dot(new ReadOnlySpan<float>(w2 + (long)o * hd, hd), bt)
                                 + carry[t] * TensorPrimitives.Dot(new ReadOnlySpan<float>(s2 + (long)o * hd, hd), bt);
                        for (int s = 0; s <= t; s++)
                        {
                            float coef = gam[(long)t * c + s] * TensorPrimitives.Dot(new ReadOnlySpan<float>(ak + (long)s * hd, hd), bt);
                            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(ek + (long)s * dv, dv), coef, y, y);
                        }
                    }
                }

                // The state at the chunk's end: W_C = A_C·W + ς_C·S + Σ Γ[C,s]·g_s, S_C = E(0,C)·S − Σ θ_s E(s,C)·g_s.
                int last = cl - 1;
                var w1s = new Span<float>(w1, n1);
                var w2s = new Span<float>(w2, n2);
                var s1s = new Span<float>(s1, n1);
                var s2s = new Span<float>(s2, n2);
                // New W from the old W and S (before S changes).
                TensorPrimitives.Multiply(w1s, decay[last], w1s);
                TensorPrimitives.MultiplyAdd(s1s, carry[last], w1s, w1s);
                TensorPrimitives.Multiply(w2s, decay[last], w2s);
                TensorPrimitives.MultiplyAdd(s2s, carry[last], w2s, w2s);
                TensorPrimitives.Multiply(s1s, etaAll[last], s1s);
                TensorPrimitives.Multiply(s2s, etaAll[last], s2s);
                for (int s = 0; s < cl; s++)
                {
                    // g_s = (δ_s k̂_sᵀ, e_s a_sᵀ), added with Γ[C,s] to W and with mom[s] to S.
                    float cw = gam[(long)last * c + s], cs = mom[s];
                    var ks = new ReadOnlySpan<float>(kn + (long)s * dk, dk);
                    var a = new ReadOnlySpan<float>(ak + (long)s * hd, hd);
                    for (int i = 0; i < hd; i++)
                    {
                        float di = dl[(long)s * hd + i];
                        TensorPrimitives.MultiplyAdd(ks, cw * di, w1s.Slice(i * dk, dk), w1s.Slice(i * dk, dk));
                        TensorPrimitives.MultiplyAdd(ks, cs * di, s1s.Slice(i * dk, dk), s1s.Slice(i * dk, dk));
                    }
                    for (int o = 0; o < dv; o++)
                    {
                        float eo = ek[(long)s * dv + o];
                        TensorPrimitives.MultiplyAdd(a, cw * eo, w2s.Slice(o * hd, hd), w2s.Slice(o * hd, hd));
                        TensorPrimitives.MultiplyAdd(a, cs * eo, s2s.Slice(o * hd, hd), s2s.Slice(o * hd, hd));
                    }
                }
                pos = (pos + cl) % Chunk;
                t0 += cl;
            }
            *slot = pos;
        }

        // Γ[t, s] = −θ_s·Σ_(u=s..t) F(u,t)·E(s,u); A_t = F(0,t); ς_t = Σ_(u=1..t) F(u,t)·E(0,u); E(0,t); mom[s] = −θ_s·E(s,C).
        // (Chunk-local 1-based positions: t here is 0-based, so token t is position t + 1.)
        private void Coefficients(int row0, int g, int cl, float* gam, float* mom, float* decay, float* carry, float* etaAll)
        {
            int c = Segment;
            float a = 1, sc = 0, e0 = 1;
            for (int t = 0; t < cl; t++)
            {
                float alpha = Gate(AlphaT, Alpha, row0 + t, g), eta = Gate(EtaT, Eta, row0 + t, g);
                a *= 1 - alpha;
                e0 *= eta;
                sc = (1 - alpha) * sc + e0;
                decay[t] = a;
                carry[t] = sc;
                etaAll[t] = e0;
            }
            for (int s = 0; s < cl; s++)
            {
                float theta = Gate(ThetaT, Theta, row0 + s, g);
                float e = 1, gsum = 0;
                for (int t = 0; t < cl; t++)
                {
                    if (t < s) { gam[(long)t * c + s] = 0; continue; }
                    if (t > s) e *= Gate(EtaT, Eta, row0 + t, g);
                    float alpha = Gate(AlphaT, Alpha, row0 + t, g);
                    gsum = t == s ? 1 : (1 - alpha) * gsum + e;
                    gam[(long)t * c + s] = -theta * gsum;
                }
                mom[s] = -theta * e;
            }
        }

        private float Gate(float* perToken, float scalar, int row, int g) => perToken is null ? scalar : perToken[(long)row * Shape.KvHeads + g];

        private static void Normalise(float* x, float* into, int d)
        {
            var src = new ReadOnlySpan<float>(x, d);
            float norm = MathF.Sqrt(TensorPrimitives.Dot(src, src));
            TensorPrimitives.Multiply(src, norm > 0 ? 1 / norm : 0, new Span<float>(into, d));
        }
    }
}

/// <summary>
/// The float64 definition of <see cref="TitansMemory"/>, token by token with explicit weight matrices: for chunks of
/// b tokens, every gradient of a chunk is taken at the chunk's starting weights (b = 1: the per-token update).
/// </summary>
public static class TitansMemoryReference
{
    /// <summary>Read-out <c>[B, T, H, Dv]</c> and final state <c>[N, Hkv, P]</c> in float64.</summary>
    /// <param name="q">Queries.</param>
    /// <param name="k">Keys.</param>
    /// <param name="v">Values.</param>
    /// <param name="shape">Dimensions.</param>
    /// <param name="alpha">Per-token α <c>[B, T, Hkv]</c>, or null for the option.</param>
    /// <param name="eta">Per-token η, or null.</param>
    /// <param name="theta">Per-token θ, or null.</param>
    /// <param name="options">Hidden width, chunk size b, default gates.</param>
    /// <param name="initialState">Memory <c>[N, Hkv, P]</c>.</param>
    public static (double[] Output, double[] State) Forward(float[] q, float[] k, float[] v, LinearExtraShape shape,
        float[]? alpha, float[]? eta, float[]? theta, TitansMemoryOptions? options, float[] initialState)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(initialState);
        options ??= new TitansMemoryOptions();
        TitansMemory.Resolved o = TitansMemory.Resolve(shape, options, new TitansGates(alpha, eta, theta), q.Length, k.Length, v.Length, (int)shape.OutputCount);
        int dk = shape.KeyDim, dv = shape.ValueDim, hd = o.Hidden, n1 = hd * dk, n2 = dv * hd;
        var output = new double[shape.OutputCount];
        var state = Array.ConvertAll(initialState, x => (double)x);
        for (int n = 0; n < shape.Sequences; n++)
        {
            for (int g = 0; g < shape.KvHeads; g++)
            {
                int baseIndex = (n * shape.KvHeads + g) * o.Row;
                var w1 = state.AsSpan(baseIndex, n1).ToArray();
                var w2 = state.AsSpan(baseIndex + n1, n2).ToArray();
                var s1 = state.AsSpan(baseIndex + n1 + n2, n1).ToArray();
                var s2 = state.AsSpan(baseIndex + 2 * n1 + n2, n2).ToArray();
                // G: the weights the current chunk's gradients are taken at; pos: tokens of that chunk already seen.
                double[] c1 = state.AsSpan(baseIndex + 2 * (n1 + n2), n1).ToArray(), c2 = state.AsSpan(baseIndex + 3 * n1 + 2 * n2, n2).ToArray();
                int pos = (int)state[baseIndex + o.Row - 1];
                var g1 = new double[n1];
                var g2 = new double[n2];
                for (int t = 0; t < shape.Length(n); t++)
                {
                    int r = shape.Start(n) + t;
                    if (pos == 0) { c1 = (double[])w1.Clone(); c2 = (double[])w2.Clone(); }
                    pos = (pos + 1) % o.Chunk;
                    double a = alpha?[(long)r * shape.KvHeads + g] ?? o.Alpha;
                    double e = eta?[(long)r * shape.KvHeads + g] ?? o.Eta;
                    double th = theta?[(long)r * shape.KvHeads + g] ?? o.Theta;
                    double[] kt = Normalised(k, (int)shape.K(r, g), dk), vt = v.AsSpan((int)shape.V(r, g), dv).ToArray().Select(x => (double)x).ToArray();
                    InnerGradient(c1, c2, kt, vt, hd, g1, g2);
                    for (int i = 0; i < n1; i++) { s1[i] = e * s1[i] - th * g1[i]; w1[i] = (1 - a) * w1[i] + s1[i]; }
                    for (int i = 0; i < n2; i++) { s2[i] = e * s2[i] - th * g2[i]; w2[i] = (1 - a) * w2[i] + s2[i]; }
                    for (int j = 0; j < shape.Group; j++)
                    {
                        int h = g * shape.Group + j;
                        double[] y = Apply(w1, w2, Normalised(q, (int)shape.Q(r, h), dk), hd, dv);
                        y.CopyTo(output.AsSpan((int)shape.O(r, h), dv));
                    }
                }
                w1.CopyTo(state, baseIndex);
                w2.CopyTo(state, baseIndex + n1);
                s1.CopyTo(state, baseIndex + n1 + n2);
                s2.CopyTo(state, baseIndex + 2 * n1 + n2);
                c1.CopyTo(state, baseIndex + 2 * (n1 + n2));
                c2.CopyTo(state, baseIndex + 3 * n1 + 2 * n2);
                state[baseIndex + o.Row - 1] = pos;
            }
        }
        return (output, state);
    }

    private static double[] Normalised(float[] x, int offset, int d)
    {
        double norm = 0;
        for (int i = 0; i < d; i++) norm += (double)x[offset + i] * x[offset + i];
        norm = Math.Sqrt(norm);
        var r = new double[d];
        for (int i = 0; i < d; i++) r[i] = norm > 0 ? x[offset + i] / norm : 0;
        return r;
    }

    private static double Silu(double x) => x / (1 + Math.Exp(-x));

    /// <summary>M(x) = W2·silu(W1·x) for W1 <c>[Hd, Dk]</c>, W2 <c>[Dv, Hd]</c>.</summary>
    public static double[] Apply(double[] w1, double[] w2, double[] x, int hidden, int valueDim)
    {
        ArgumentNullException.ThrowIfNull(w1);
        ArgumentNullException.ThrowIfNull(w2);
        ArgumentNullException.ThrowIfNull(x);
        int dk = x.Length;
        var a = new double[hidden];
        for (int i = 0; i < hidden; i++)
        {
            double h = 0;
            for (int j = 0; j < dk; j++) h += w1[i * dk + j] * x[j];
            a[i] = Silu(h);
        }
        var y = new double[valueDim];
        for (int o = 0; o < valueDim; o++)
            for (int i = 0; i < hidden; i++) y[o] += w2[o * hidden + i] * a[i];
        return y;
    }

    /// <summary>The inner (associative) loss ℓ = ‖W2·silu(W1·k) − v‖².</summary>
    public static double InnerLoss(double[] w1, double[] w2, double[] k, double[] v, int hidden)
    {
        ArgumentNullException.ThrowIfNull(v);
        double[] y = Apply(w1, w2, k, hidden, v.Length);
        double loss = 0;
        for (int o = 0; o < v.Length; o++) loss += (y[o] - v[o]) * (y[o] - v[o]);
        return loss;
    }

    /// <summary>∇ℓ with respect to W1 (into <paramref name="g1"/>) and W2 (into <paramref name="g2"/>), analytically.</summary>
    public static void InnerGradient(double[] w1, double[] w2, double[] k, double[] v, int hidden, double[] g1, double[] g2)
    {
        ArgumentNullException.ThrowIfNull(w1);
        ArgumentNullException.ThrowIfNull(w2);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(g1);
        ArgumentNullException.ThrowIfNull(g2);
        int dk = k.Length, dv = v.Length;
        var h = new double[hidden];
        var a = new double[hidden];
        for (int i = 0; i < hidden; i++)
        {
            for (int j = 0; j < dk; j++) h[i] += w1[i * dk + j] * k[j];
            a[i] = Silu(h[i]);
        }
        var e = new double[dv];
        for (int o = 0; o < dv; o++)
        {
            double y = 0;
            for (int i = 0; i < hidden; i++) y += w2[o * hidden + i] * a[i];
            e[o] = 2 * (y - v[o]);
        }
        for (int o = 0; o < dv; o++)
            for (int i = 0; i < hidden; i++) g2[o * hidden + i] = e[o] * a[i];
        for (int i = 0; i < hidden; i++)
        {
            double back = 0;
            for (int o = 0; o < dv; o++) back += w2[o * hidden + i] * e[o];
            double sg = 1 / (1 + Math.Exp(-h[i]));
            double delta = back * sg * (1 + h[i] * (1 - sg));
            for (int j = 0; j < dk; j++) g1[i * dk + j] = delta * k[j];
        }
    }
}

/// <summary>
/// <see cref="TitansMemory"/> as a runnable method. Inputs: <c>q</c>, <c>k</c>, <c>v</c>; optional gates <c>alpha</c>,
/// <c>eta</c>, <c>theta</c> <c>[B, T, Hkv]</c>; optional <c>state</c> <c>[N, Hkv, P]</c>. Extras: <c>state</c>.
/// </summary>
public sealed class TitansMemoryMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "titans-memory";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "linear", "method",
        "Titans: Learning to Memorize at Test Time (Behrouz, Zhong, Mirrokni, 2025)", ["cpu"], "implemented",
        "MLP memory written by test-time gradient steps with momentum and forgetting; chunked = parallel mini-batch update (inputs alpha, eta, theta [B,T,Hkv], state)")
    {
        Parameters =
        [
            LinearExtraMethods.FormParameter("chunked", "naive", "chunked", "recurrent"),
            new MethodParameter("chunk", "int", "16", "tokens per gradient mini-batch b, 1 to 1024 (every form; 1 = the per-token update)"),
            new MethodParameter("hidden", "int", "Dk", "hidden width of the memory MLP"),
            new MethodParameter("alpha", "float", "0.01", "forgetting gate when no alpha input is given, in [0, 1]"),
            new MethodParameter("eta", "float", "0.9", "momentum decay when no eta input is given, in [0, 1]"),
            new MethodParameter("theta", "float", "0.2/(chunk·Dv)", "inner learning rate when no theta input is given, ≥ 0"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearExtraShape shape = LinearExtraShape.Of(inputs);
        string form = LinearExtraMethods.Form(arguments, "chunked", "naive", "chunked", "recurrent");
        int chunk = arguments.GetInt("chunk", 16, min: 1, max: TitansMemory.MaxChunk);
        int hidden = arguments.GetInt("hidden", shape.KeyDim, min: 1, max: 4096);
        var options = new TitansMemoryOptions
        {
            ChunkSize = chunk, Hidden = hidden,
            Alpha = (float)arguments.GetDouble("alpha", 0.01, 0, 1),
            Eta = (float)arguments.GetDouble("eta", 0.9, 0, 1),
            Theta = arguments.Has("theta") ? (float)arguments.GetDouble("theta", 0, 0) : null,
        };
        arguments.ThrowIfUnused(Name);
        int b = shape.Batch, t = shape.Tokens, hkv = shape.KvHeads;
        float[]? alpha = LinearExtraMethods.Optional(inputs, "alpha", b, t, hkv);
        float[]? eta = LinearExtraMethods.Optional(inputs, "eta", b, t, hkv);
        float[]? theta = LinearExtraMethods.Optional(inputs, "theta", b, t, hkv);
        int row = TitansMemory.StateRow(shape.KeyDim, hidden, shape.ValueDim);
        float[] initial = LinearExtraMethods.Optional(inputs, "state", shape.Sequences, hkv, row) ?? TitansMemory.InitialState(shape, hidden);
        var output = new float[shape.OutputCount];
        var final = new float[initial.Length];
        var gates = new TitansGates(alpha, eta, theta);
        switch (form)
        {
            case "naive":
                (double[] o, double[] s) = TitansMemoryReference.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, alpha, eta, theta, options, initial);
                for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
                for (int i = 0; i < s.Length; i++) final[i] = (float)s[i];
                break;
            case "chunked":
                TitansMemory.Chunked(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, gates, options, initial, output, final);
                break;
            default:
                TitansMemory.Recurrent(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, gates, options, initial, output, final);
                break;
        }
        var result = new MethodResult(new MethodTensor(output, b, t, shape.Heads, shape.ValueDim));
        result.Extras["state"] = new MethodTensor(final, shape.Sequences, hkv, row);
        result.Report.Add(new("form", form));
        return result;
    }
}
