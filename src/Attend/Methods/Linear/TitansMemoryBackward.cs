using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Linear;

/// <summary>Where <see cref="TitansMemory.Backward"/> writes; an empty span is a gradient not wanted.</summary>
public readonly ref struct TitansGradients
{
    /// <summary>dL/dq <c>[B, T, H, Dk]</c>.</summary>
    public Span<float> Q { get; init; }

    /// <summary>dL/dk <c>[B, T, Hkv, Dk]</c>.</summary>
    public Span<float> K { get; init; }

    /// <summary>dL/dv <c>[B, T, Hkv, Dv]</c>.</summary>
    public Span<float> V { get; init; }

    /// <summary>dL/dα_t <c>[B, T, Hkv]</c> (per token even when α is the option scalar: its gradient is then the sum).</summary>
    public Span<float> Alpha { get; init; }

    /// <summary>dL/dη_t <c>[B, T, Hkv]</c>.</summary>
    public Span<float> Eta { get; init; }

    /// <summary>dL/dθ_t <c>[B, T, Hkv]</c>.</summary>
    public Span<float> Theta { get; init; }

    /// <summary>dL/d(initial state) <c>[N, Hkv, P]</c> (W1, W2, S1, S2, G1, G2; the position slot gets 0).</summary>
    public Span<float> InitialState { get; init; }
}

/// <summary>The backward pass of <see cref="TitansMemory"/>.</summary>
public static unsafe partial class TitansMemory
{
    /// <summary>Tokens between the state checkpoints of the backward's forward sweep.</summary>
    private const int CheckpointEvery = 16;

    /// <summary>
    /// Gradients of <c>L = Σ outputGradient·y + Σ finalStateGradient·S_T</c> with respect to q, k, v, the gates α, η,
    /// θ and the initial state (analytic; each written only when its span is not empty). The same function for every
    /// form (they agree for any chunk size b). Computed by the reverse recurrence, token by token: a forward sweep keeps
    /// the memory every 16 tokens, then each stretch is recomputed from its checkpoint and reversed with the adjoints
    /// dW, dS, dG of the weights, the momentum and the chunk's gradient weights:
    /// <code>
    ///   dW += ∂(y_t of every query head)/∂W_t                      (the read-out M_t(q̂))
    ///   W_t = (1 − α)W + S_t:   dS += dW,  dα = −⟨dW, W_(t−1)⟩,  dW ← (1 − α)dW
    ///   S_t = ηS − θ∇ℓ:         dη = ⟨dS, S_(t−1)⟩,  dθ = −⟨dS, ∇ℓ⟩,  d∇ℓ = −θ·dS,  dS ← η·dS
    ///   ∇ℓ(G; k̂, v):           dG, dk̂, dv by the vector–Hessian product of the inner loss (silu'' included)
    ///   G = W_(t−1) at a chunk's first token:  dW += dG, dG ← 0
    /// </code>
    /// Deviation from the paper's training (which differentiates its parallel chunk form with matrix products): this
    /// is the exact same gradient by the reverse recurrence, O(T·P) work per key/value head in float32, memory
    /// O(T/16 + 16) memories.
    /// </summary>
    /// <param name="q">Queries <c>[B, T, H, Dk]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, Dk]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, Dv]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets).</param>
    /// <param name="gates">Per-token gates, or empty spans for the option scalars.</param>
    /// <param name="options">Hidden width, chunk size, default gates, threads.</param>
    /// <param name="initialState">Memory <c>[N, Hkv, P]</c> the forward started from.</param>
    /// <param name="outputGradient">dL/dy <c>[B, T, H, Dv]</c>.</param>
    /// <param name="finalStateGradient">dL/d(final state) <c>[N, Hkv, P]</c>, or empty (its position slot is ignored).</param>
    /// <param name="gradients">Where the gradients go.</param>
    /// <exception cref="ArgumentException">Mis-sized spans, or a gate or option out of range; the message names it.</exception>
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, TitansGates gates,
        TitansMemoryOptions? options, ReadOnlySpan<float> initialState, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> finalStateGradient,
        in TitansGradients gradients)
    {
        options ??= new TitansMemoryOptions();
        Resolved o = Resolve(shape, options, gates, q.Length, k.Length, v.Length, outputGradient.Length);
        int size = shape.Sequences * shape.KvHeads * o.Row;
        long tokens = (long)shape.Batch * shape.Tokens * shape.KvHeads;
        if (initialState.Length != size)
            throw new ArgumentException($"initialState holds {initialState.Length} floats; [N, Hkv, P] = [{shape.Sequences}, {shape.KvHeads}, {o.Row}] needs {size}.", nameof(initialState));
        CheckSize(nameof(finalStateGradient), finalStateGradient.Length, size, "[N, Hkv, P]");
        CheckSize("gradients.Q", gradients.Q.Length, shape.QueryCount, "[B, T, H, Dk]");
        CheckSize("gradients.K", gradients.K.Length, shape.KeyCount, "[B, T, Hkv, Dk]");
        CheckSize("gradients.V", gradients.V.Length, shape.ValueCount, "[B, T, Hkv, Dv]");
        CheckSize("gradients.Alpha", gradients.Alpha.Length, tokens, "[B, T, Hkv]");
        CheckSize("gradients.Eta", gradients.Eta.Length, tokens, "[B, T, Hkv]");
        CheckSize("gradients.Theta", gradients.Theta.Length, tokens, "[B, T, Hkv]");
        CheckSize("gradients.InitialState", gradients.InitialState.Length, size, "[N, Hkv, P]");
        for (int r = o.Row - 1; r < size; r += o.Row)
        {
            float pos = initialState[r];
            if (!(pos >= 0 && pos < o.Chunk && pos == MathF.Floor(pos)))
                throw new ArgumentException($"initialState: the position slot (last of each memory) must be an integer in [0, chunk = {o.Chunk}); got {pos}.", nameof(initialState));
        }

        // Every gradient is written by its item whatever the caller asked for: straight into the caller's span (zeroed
        // first), or pooled scratch for an absent one.
        using var dq = new GradientTarget(gradients.Q, shape.QueryCount);
        using var dk = new GradientTarget(gradients.K, shape.KeyCount);
        using var dv = new GradientTarget(gradients.V, shape.ValueCount);
        using var da = new GradientTarget(gradients.Alpha, tokens);
        using var de = new GradientTarget(gradients.Eta, tokens);
        using var dt = new GradientTarget(gradients.Theta, tokens);
        using var ds0 = new GradientTarget(gradients.InitialState, size);
        fixed (float* pq = q, pk = k, pv = v, pdo = outputGradient, pst = finalStateGradient, ps0 = initialState)
        fixed (float* pa = gates.Alpha, pe = gates.Eta, pt = gates.Theta)
        fixed (float* pdq = dq.Span, pdk = dk.Span, pdv = dv.Span, pda = da.Span, pde = de.Span, pdt = dt.Span, pds0 = ds0.Span)
        {
            var work = new BackwardWork
            {
                Shape = shape, Hidden = o.Hidden, Chunk = o.Chunk, Row = o.Row, Alpha = o.Alpha, Eta = o.Eta, Theta = o.Theta,
                Q = pq, K = pk, V = pv, DO = pdo, DFinal = finalStateGradient.IsEmpty ? null : pst, Initial = ps0,
                AlphaT = gates.Alpha.IsEmpty ? null : pa, EtaT = gates.Eta.IsEmpty ? null : pe, ThetaT = gates.Theta.IsEmpty ? null : pt,
                DQ = pdq, DK = pdk, DV = pdv, DAlpha = pda, DEta = pde, DTheta = pdt, DInitial = pds0,
            };
            ParallelWork.Run(shape.Sequences * shape.KvHeads, options.MaxThreads ?? Environment.ProcessorCount, work);
        }
    }

    private static void CheckSize(string name, int length, long want, string layout)
    {
        if (length != 0 && length != want)
            throw new ArgumentException($"{name} holds {length} floats; {layout} needs {want} (or pass an empty span).", name);
    }

    internal static float SiluSecondDerivative(float x)
    {
        float s = 1 / (1 + MathF.Exp(-x));
        return s * (1 - s) * (2 + x * (1 - 2 * s));
    }

    private sealed class BackwardWork : IWorkItems
    {
        public required LinearExtraShape Shape;
        public int Hidden, Chunk, Row;
        public float Alpha, Eta, Theta;
        public float* Q, K, V, DO, DFinal, Initial, AlphaT, EtaT, ThetaT;
        public float* DQ, DK, DV, DAlpha, DEta, DTheta, DInitial;

        private float Gate(float* perToken, float scalar, int row, int g) => perToken is null ? scalar : perToken[(long)row * Shape.KvHeads + g];

        public void Execute(int index)
        {
            int n = index / Shape.KvHeads, g = index % Shape.KvHeads;
            int len = Shape.Length(n), start = Shape.Start(n);
            int dk = Shape.KeyDim, dv = Shape.ValueDim, hd = Hidden, group = Shape.Group;
            int n1 = hd * dk, n2 = dv * hd, nw = n1 + n2, row = Row; // a memory: [W | S | G | pos], W = [W1 | W2]
            int stretches = (len + CheckpointEvery - 1) / CheckpointEvery;
            // Scratch: checkpoints, the states before each token of a stretch, adjoints dW/dS/dG, the step's ∇ℓ,
            // W_t, and small vectors.
            long need = (long)stretches * row + (long)CheckpointEvery * row + 3L * nw + 2L * nw + 6L * hd + 4L * dv + 4L * dk + 16;
            float* p = Scratch.Get(need);
            float* checkpoints = p; p += (long)stretches * row;
            float* states = p; p += (long)CheckpointEvery * row;
            float* dW = p; p += nw;
            float* dS = p; p += nw;
            float* dG = p; p += nw;
            float* grad = p; p += nw;       // ∇ℓ at the token, then d∇ℓ
            float* wt = p; p += nw;         // W_t
            float* hv = p; p += hd;         // h = G1·k̂ (or W1·q̂)
            float* av = p; p += hd;         // silu(h)
            float* bv = p; p += hd;         // G2ᵀe
            float* dh = p; p += hd;
            float* dav = p; p += hd;
            float* ddl = p; p += hd;        // dδ
            float* ev = p; p += dv;         // e = 2(G2·a − v)
            float* dev = p; p += dv;
            float* dyv = p; p += dv;
            float* tmpv = p; p += dv;
            float* kn = p; p += dk;
            float* dkn = p; p += dk;
            float* qn = p; p += dk;
            float* dqn = p;

            float* memory = Initial + (long)index * row;
            // Forward sweep: the memory before every 16th token.
            float* cur = states;
            new ReadOnlySpan<float>(memory, row).CopyTo(new Span<float>(cur, row));
            for (int c = 0; c < stretches; c++)
            {
                new ReadOnlySpan<float>(cur, row).CopyTo(new Span<float>(checkpoints + (long)c * row, row));
                int t1 = Math.Min(len, (c + 1) * CheckpointEvery);
                for (int t = c * CheckpointEvery; t < t1; t++) Step(cur, start + t, g, kn, grad);
            }

            var dWs = new Span<float>(dW, nw);
            var dSs = new Span<float>(dS, nw);
            var dGs = new Span<float>(dG, nw);
            if (DFinal != null)
            {
                float* f = DFinal + (long)index * row;
                new ReadOnlySpan<float>(f, nw).CopyTo(dWs);
                new ReadOnlySpan<float>(f + nw, nw).CopyTo(dSs);
                new ReadOnlySpan<float>(f + 2 * nw, nw).CopyTo(dGs);
            }
            else { dWs.Clear(); dSs.Clear(); dGs.Clear(); }

            for (int c = stretches - 1; c >= 0; c--)
            {
                int t0 = c * CheckpointEvery, t1 = Math.Min(len, t0 + CheckpointEvery);
                // The memory before each token of the stretch.
                new ReadOnlySpan<float>(checkpoints + (long)c * row, row).CopyTo(new Span<float>(states, row));
                for (int t = t0; t < t1 - 1; t++)
                {
                    float* next = states + (long)(t - t0 + 1) * row;
                    new ReadOnlySpan<float>(states + (long)(t - t0) * row, row).CopyTo(new Span<float>(next, row));
                    Step(next, start + t, g, kn, grad);
                }
                for (int t = t1 - 1; t >= t0; t--)
                {
                    int r = start + t;
                    float* prev = states + (long)(t - t0) * row; // W, S, G, pos before token t
                    float* wPrev = prev, sPrev = prev + nw, gBefore = prev + 2 * nw;
                    bool chunkStart = (int)prev[row - 1] == 0;
                    float* gw = chunkStart ? wPrev : gBefore; // the weights this token's gradient is taken at
                    float alpha = Gate(AlphaT, Alpha, r, g), eta = Gate(EtaT, Eta, r, g), theta = Gate(ThetaT, Theta, r, g);

                    // Recompute ∇ℓ(G; k̂, v) and W_t = (1 − α)W + ηS − θ∇ℓ.
                    float knorm = Normalised(K + Shape.K(r, g), kn, dk);
                    float* vt = V + Shape.V(r, g);
                    InnerGradient(new ReadOnlySpan<float>(gw, n1), new ReadOnlySpan<float>(gw + n1, n2), new ReadOnlySpan<float>(kn, dk),
                        new ReadOnlySpan<float>(vt, dv), hd, new Span<float>(grad, n1), new Span<float>(grad + n1, n2));
                    for (int i = 0; i < nw; i++) wt[i] = (1 - alpha) * wPrev[i] + eta * sPrev[i] - theta * grad[i];

                    // Read-out y = W2·silu(W1·q̂) of every query head of the group.
                    for (int j = 0; j < group; j++)
                    {
                        int h = g * group + j;
                        float qnorm = Normalised(Q + Shape.Q(r, h), qn, dk);
                        ReadOutBackward(wt, qn, DO + Shape.O(r, h), dW, dqn, hv, av, dav, dh);
                        NormaliseBackward(qn, dqn, qnorm, DQ + Shape.Q(r, h), dk);
                    }

                    // W_t = (1 − α)W + S_t.
                    var wPrevS = new ReadOnlySpan<float>(wPrev, nw);
                    TensorPrimitives.Add(dSs, dWs, dSs);
                    DAlpha[(long)r * Shape.KvHeads + g] = -TensorPrimitives.Dot(dWs, wPrevS);
                    TensorPrimitives.Multiply(dWs, 1 - alpha, dWs);
                    // S_t = ηS − θ∇ℓ.
                    var gradS = new Span<float>(grad, nw);
                    DEta[(long)r * Shape.KvHeads + g] = TensorPrimitives.Dot(dSs, new ReadOnlySpan<float>(sPrev, nw));
                    DTheta[(long)r * Shape.KvHeads + g] = -TensorPrimitives.Dot(dSs, gradS);
                    TensorPrimitives.Multiply(dSs, -theta, gradS); // grad now holds d∇ℓ
                    TensorPrimitives.Multiply(dSs, eta, dSs);
                    // ∇ℓ(G; k̂, v).
                    InnerGradientBackward(gw, kn, vt, grad, dG, dkn, DV + Shape.V(r, g), hv, av, bv, dh, dav, ddl, ev, dev, dyv, tmpv);
                    NormaliseBackward(kn, dkn, knorm, DK + Shape.K(r, g), dk);
                    // G = W_(t−1) at a chunk's first token.
                    if (chunkStart)
                    {
                        TensorPrimitives.Add(dWs, dGs, dWs);
                        dGs.Clear();
                    }
                }
            }

            float* d0 = DInitial + (long)index * row;
            dWs.CopyTo(new Span<float>(d0, nw));
            dSs.CopyTo(new Span<float>(d0 + nw, nw));
            dGs.CopyTo(new Span<float>(d0 + 2 * nw, nw));
            d0[row - 1] = 0;
        }

        /// <summary>One token of the definition on a memory [W | S | G | pos] (the same update every form makes).</summary>
        private void Step(float* memory, int r, int g, float* kn, float* grad)
        {
            int dk = Shape.KeyDim, dv = Shape.ValueDim, hd = Hidden, n1 = hd * dk, n2 = dv * hd, nw = n1 + n2;
            float* w = memory, s = memory + nw, gw = memory + 2 * nw, slot = memory + Row - 1;
            int pos = (int)*slot;
            if (pos == 0) new ReadOnlySpan<float>(w, nw).CopyTo(new Span<float>(gw, nw));
            *slot = (pos + 1) % Chunk;
            float alpha = Gate(AlphaT, Alpha, r, g), eta = Gate(EtaT, Eta, r, g), theta = Gate(ThetaT, Theta, r, g);
            Normalised(K + Shape.K(r, g), kn, dk);
            InnerGradient(new ReadOnlySpan<float>(gw, n1), new ReadOnlySpan<float>(gw + n1, n2), new ReadOnlySpan<float>(kn, dk),
                new ReadOnlySpan<float>(V + Shape.V(r, g), dv), hd, new Span<float>(grad, n1), new Span<float>(grad + n1, n2));
            for (int i = 0; i < nw; i++)
            {
                s[i] = eta * s[i] - theta * grad[i];
                w[i] = (1 - alpha) * w[i] + s[i];
            }
        }

        /// <summary>y = W2·silu(W1·q̂): dW += (dh q̂ᵀ, dy aᵀ), dq̂ = W1ᵀdh with dh = (W2ᵀdy) ⊙ silu'(W1·q̂).</summary>
        private void ReadOutBackward(float* w, float* qn, float* dy, float* dW, float* dqn, float* hv, float* av, float* dav, float* dh)
        {
            int dk = Shape.KeyDim, dv = Shape.ValueDim, hd = Hidden, n1 = hd * dk;
            float* w1 = w, w2 = w + n1, dw1 = dW, dw2 = dW + n1;
            var q = new ReadOnlySpan<float>(qn, dk);
            for (int i = 0; i < hd; i++) { hv[i] = TensorPrimitives.Dot(new ReadOnlySpan<float>(w1 + (long)i * dk, dk), q); av[i] = Silu(hv[i]); }
            var a = new ReadOnlySpan<float>(av, hd);
            var da = new Span<float>(dav, hd);
            da.Clear();
            for (int o = 0; o < dv; o++)
            {
                TensorPrimitives.MultiplyAdd(a, dy[o], new Span<float>(dw2 + (long)o * hd, hd), new Span<float>(dw2 + (long)o * hd, hd));
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(w2 + (long)o * hd, hd), dy[o], da, da);
            }
            var dq = new Span<float>(dqn, dk);
            dq.Clear();
            for (int i = 0; i < hd; i++)
            {
                dh[i] = dav[i] * SiluDerivative(hv[i]);
                TensorPrimitives.MultiplyAdd(q, dh[i], new Span<float>(dw1 + (long)i * dk, dk), new Span<float>(dw1 + (long)i * dk, dk));
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(w1 + (long)i * dk, dk), dh[i], dq, dq);
            }
        }

        /// <summary>
        /// The vector–Hessian product of the inner loss: given d∇ℓ = (dg1, dg2) at (G, k̂, v), adds dG and writes dk̂
        /// and dv. Forward: h = G1k̂, a = silu(h), e = 2(G2a − v), b = G2ᵀe, δ = b ⊙ silu'(h), g1 = δk̂ᵀ, g2 = eaᵀ.
        /// </summary>
        private void InnerGradientBackward(float* gw, float* kn, float* v, float* dgrad, float* dG, float* dkn, float* dvOut,
            float* hv, float* av, float* bv, float* dh, float* dav, float* ddl, float* ev, float* dev, float* dyv, float* tmpv)
        {
            int dk = Shape.KeyDim, dv = Shape.ValueDim, hd = Hidden, n1 = hd * dk;
            float* g1 = gw, g2 = gw + n1, dg1 = dgrad, dg2 = dgrad + n1, dG1 = dG, dG2 = dG + n1;
            var k = new ReadOnlySpan<float>(kn, dk);
            for (int i = 0; i < hd; i++) { hv[i] = TensorPrimitives.Dot(new ReadOnlySpan<float>(g1 + (long)i * dk, dk), k); av[i] = Silu(hv[i]); }
            var a = new ReadOnlySpan<float>(av, hd);
            for (int o = 0; o < dv; o++) ev[o] = 2 * (TensorPrimitives.Dot(new ReadOnlySpan<float>(g2 + (long)o * hd, hd), a) - v[o]);
            var b = new Span<float>(bv, hd);
            b.Clear();
            for (int o = 0; o < dv; o++) TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(g2 + (long)o * hd, hd), ev[o], b, b);

            // g1 = δk̂ᵀ: dδ = dg1·k̂, dk̂ = dg1ᵀδ.   g2 = eaᵀ: de = dg2·a, da = dg2ᵀe.
            var dkS = new Span<float>(dkn, dk);
            dkS.Clear();
            for (int i = 0; i < hd; i++)
            {
                var row = new ReadOnlySpan<float>(dg1 + (long)i * dk, dk);
                ddl[i] = TensorPrimitives.Dot(row, k);
                float delta = bv[i] * SiluDerivative(hv[i]);
                TensorPrimitives.MultiplyAdd(row, delta, dkS, dkS);
            }
            var da = new Span<float>(dav, hd);
            da.Clear();
            for (int o = 0; o < dv; o++)
            {
                dev[o] = TensorPrimitives.Dot(new ReadOnlySpan<float>(dg2 + (long)o * hd, hd), a);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(dg2 + (long)o * hd, hd), ev[o], da, da);
            }
            // δ = b ⊙ silu'(h): db = dδ ⊙ silu'(h), dh = dδ ⊙ b ⊙ silu''(h).   b = G2ᵀe: dG2 += e dbᵀ, de += G2·db.
            var db = new Span<float>(ddl, hd); // reuse: dδ becomes db
            for (int i = 0; i < hd; i++)
            {
                float dd = ddl[i];
                dh[i] = dd * bv[i] * SiluSecondDerivative(hv[i]);
                db[i] = dd * SiluDerivative(hv[i]);
            }
            for (int o = 0; o < dv; o++)
            {
                var g2r = new ReadOnlySpan<float>(g2 + (long)o * hd, hd);
                var dG2r = new Span<float>(dG2 + (long)o * hd, hd);
                TensorPrimitives.MultiplyAdd(db, ev[o], dG2r, dG2r);
                dev[o] += TensorPrimitives.Dot(g2r, db);
                // e = 2(y − v): dy = 2de, dv = −2de.   y = G2a: dG2 += dy aᵀ, da += G2ᵀdy.
                float dy = 2 * dev[o];
                dvOut[o] = -dy;
                TensorPrimitives.MultiplyAdd(a, dy, dG2r, dG2r);
                TensorPrimitives.MultiplyAdd(g2r, dy, da, da);
            }
            // a = silu(h): dh += da ⊙ silu'(h).   h = G1k̂: dG1 += dh k̂ᵀ, dk̂ += G1ᵀdh.
            for (int i = 0; i < hd; i++)
            {
                float d = dh[i] + dav[i] * SiluDerivative(hv[i]);
                var dG1r = new Span<float>(dG1 + (long)i * dk, dk);
                TensorPrimitives.MultiplyAdd(k, d, dG1r, dG1r);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(g1 + (long)i * dk, dk), d, dkS, dkS);
            }
        }

        // x̂ = x/‖x‖ into `into`; returns ‖x‖.
        private static float Normalised(float* x, float* into, int d)
        {
            var src = new ReadOnlySpan<float>(x, d);
            float norm = MathF.Sqrt(TensorPrimitives.Dot(src, src));
            TensorPrimitives.Multiply(src, norm > 0 ? 1 / norm : 0, new Span<float>(into, d));
            return norm;
        }

        // x̂ = x/‖x‖: dx = (dx̂ − x̂(x̂·dx̂))/‖x‖, added to `into` (0 for a zero row, which the forward maps to 0).
        private static void NormaliseBackward(float* xn, float* dxn, float norm, float* into, int d)
        {
            if (!(norm > 0)) return;
            var x = new ReadOnlySpan<float>(xn, d);
            var dx = new ReadOnlySpan<float>(dxn, d);
            var o = new Span<float>(into, d);
            float dot = TensorPrimitives.Dot(x, dx);
            for (int i = 0; i < d; i++) o[i] += (dx[i] - x[i] * dot) / norm;
        }
    }
}
