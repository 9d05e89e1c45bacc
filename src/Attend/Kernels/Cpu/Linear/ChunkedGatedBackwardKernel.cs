using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Attend.Linear;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>
/// The chunked (matrix-product) backward of the data-dependent gates and the delta rules — GLA, Gated DeltaNet,
/// DeltaNet, Kimi Delta Attention, and the additive rule with a scalar gate. A forward sweep keeps the state at every
/// chunk boundary; chunks are then visited last to first with dS, the gradient of the state at the chunk's end. Per
/// chunk, with b the cumulative log gate inside the chunk (per channel for a channel gate), Q̃ = Q⊙e^b, K̃ = K⊙e^b,
/// K̂ = K⊙e^{−b}, K̄ = K⊙e^{b_C − b} and S₀ the state at the chunk's start, the forward is recomputed
/// <code>
///   A = tril(Q̃K̂ᵀ), L = strict tril(K̃K̂ᵀ), N = (I + diag(β)L)⁻¹, T = N diag(β)
///   W = V − K̃S₀, U = T W   (additive: U = V)
///   O = Q̃S₀ + A U,  S_C = diag(e^{b_C}) S₀ + K̄ᵀU
/// </code>
/// and reversed, every product a <see cref="TileGemm"/> call:
/// <code>
///   dU = AᵀdO + K̄ dS,  dA = tril(dO Uᵀ),  dQ̃ = dO S₀ᵀ + dA K̂,  dK̄ = U dSᵀ
///   dW = TᵀdU, dT = tril(dU Wᵀ), dβ_s = Σ_t N_ts dT_ts, dM = −Nᵀ (dT diag β) Nᵀ, dβ_t += Σ_s dM_ts L_ts, dL = diag(β) dM
///   dK̃ = −dW S₀ᵀ + dL K̂,  dK̂ = dAᵀQ̃ + dLᵀK̃,  dV = dW (additive: dU)
///   dS ← diag(e^{b_C}) dS + Q̃ᵀdO − K̃ᵀdW
///   d b_t = Q̃⊙dQ̃ + K̃⊙dK̃ − K̂⊙dK̂ − K̄⊙dK̄ (+ ⟨dS, S_C⟩ per row at the chunk's last token), dlog α = reverse cumsum of d b
/// </code>
/// A scalar decay (fixed or gated) never factorises: its scores are multiplied by D_ts = e^{b_t − b_s} ≤ 1 after the
/// product (as in the forward), so any gate strength is exact. A channel gate factorises, which is exact while e^{−b}
/// stays in float range: a (sequence, head) whose cumulative channel gate inside some chunk falls below
/// <see cref="ChunkedStateKernel.FactorisedLimit"/> is computed by <see cref="StateBackwardKernel"/> (the reverse
/// recurrence) instead, the others here.
/// </summary>
internal static unsafe class ChunkedGatedBackwardKernel
{
    /// <summary>True for the configurations this kernel computes: a delta rule (any decay), or the additive rule with a scalar or channel gate.</summary>
    public static bool Supports(LinearConfig c) => !(c.Update == LinearUpdate.Additive && c.Decay is LinearDecay.None or LinearDecay.FixedPerHead);

    /// <summary>
    /// Whether this kernel is the faster choice (paired runs, H = 8, T = 4096, chunk 64, 2 cores): always for the
    /// additive gates (1.4× the reverse recurrence at D = 32), for the delta rules from Df = 64 on (1.1–1.3× at 64,
    /// 1.6–2.1× at 128; 0.75–0.9× at 32, where the chunk's C×C products and the C³ transform dominate).
    /// </summary>
    public static bool Preferred(LinearConfig c) => Supports(c) && (!c.IsDelta || c.FeatureDim >= 64);

    /// <summary>
    /// The backward's own chunk: the call's chunk, but no wider than the feature width rounded up to 16 (at least 16).
    /// The gradient does not depend on the grouping; a chunk much wider than Df spends its time in the C×C products and
    /// the C³ transform gradient instead of the Df×Dv state products.
    /// </summary>
    private static int Chunk(LinearConfig c) => Math.Min(c.ChunkSize, Math.Max(16, RoundUp(c.FeatureDim, 16)));

    /// <summary>
    /// Whether the channel gate of (sequence <paramref name="n"/>, head <paramref name="h"/>) factorises in every chunk:
    /// each channel's cumulative gate at a chunk's end (its minimum in the chunk) stays above the factorised limit.
    /// </summary>
    private static bool Factorises(StateProblem problem, int n, int h)
    {
        LinearConfig c = problem.Config;
        if (c.Decay != LinearDecay.ChannelGate) return true;
        int heads = problem.Heads, df = problem.Df, chunk = Chunk(c);
        c.Range(n, out int batch, out int start, out int end);
        Span<float> sum = df <= 1024 ? stackalloc float[df] : new float[df];
        for (int c0 = start; c0 < end; c0 += chunk)
        {
            sum.Clear();
            int c1 = Math.Min(end, c0 + chunk);
            for (int t = c0; t < c1; t++)
            {
                float* g = problem.Gate + (((long)batch * problem.Tokens + t) * heads + h) * df;
                for (int i = 0; i < df; i++) sum[i] += g[i];
            }
            for (int i = 0; i < df; i++) if (sum[i] < ChunkedStateKernel.FactorisedLimit) return false;
        }
        return true;
    }

    public static void Run(StateProblem problem, StateGradients grads)
    {
        if (Isa512.IsSupported) Run<Isa512, Vector512<float>>(problem, grads);
        else if (Isa256.IsSupported) Run<Isa256, Vector256<float>>(problem, grads);
        else Run<Isa128, Vector128<float>>(problem, grads);
    }

    /// <summary>
    /// Checkpoints of all workers together up to this many floats (16 MB) live in a <see cref="SharedBuffer"/> kept by
    /// the calling thread for the next call; above it (long sequences: T = 128k, D = 128 needs ~134 MB per worker) they
    /// are allocated for the call and dropped with it, so no thread holds a whole-sequence buffer for its life.
    /// </summary>
    /// (Settable so that a test can force the call-owned path; every path gives the same result.)
    internal static long RetainedCheckpointFloats { get; set; } = 4L << 20;

    /// <summary>The <see cref="SharedBuffer"/> slot of the checkpoints (0 and 1 are the flash kernels').</summary>
    private const int CheckpointSlot = 3;

    private static void Run<TIsa, TVec>(StateProblem problem, StateGradients grads)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        LinearConfig c = problem.Config;
        int items = problem.Items, workers = Math.Max(1, Math.Min(c.Threads, items)), chunk = Chunk(c), w = TIsa.Width;
        int longest = 0;
        for (int n = 0; n < c.Sequences; n++)
        {
            c.Range(n, out _, out int start, out int end);
            longest = Math.Max(longest, end - start);
        }
        long perWorker = ((long)(longest + chunk - 1) / chunk + 1) * RoundUp(problem.Df, w) * RoundUp(problem.Dv, w);
        long total = perWorker * workers;
        float[]? callOwned = null;
        float* checkpoints;
        if (total <= RetainedCheckpointFloats) checkpoints = SharedBuffer.Rent(CheckpointSlot, Math.Max(1, total)).Pointer;
        else
        {
            callOwned = GC.AllocateUninitializedArray<float>(checked((int)(total + 16)), pinned: true);
            fixed (float* a = callOwned) checkpoints = (float*)(((nint)a + 63) & ~(nint)63); // pinned: the pointer stays valid
        }
        ParallelWork.Run(items, c.Threads, new Items<TIsa, TVec>(problem, grads, checkpoints, perWorker, workers));
        GC.KeepAlive(callOwned);
    }

    private sealed class Items<TIsa, TVec>(StateProblem problem, StateGradients grads, float* checkpoints, long perWorker, int workers) : IWorkItems
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        // busy[s] = 1 while an item uses checkpoint region s; at most `workers` items run at once, so one is always free.
        private readonly int[] _busy = new int[workers];

        public void Execute(int index)
        {
            // A (sequence, head) whose channel gate leaves the factorised range takes the reverse recurrence (exact).
            if (!Factorises(problem, index / problem.Heads, index % problem.Heads))
            {
                StateBackwardKernel.Item<TIsa, TVec>(problem, grads, index);
                return;
            }
            int slot = 0;
            while (Interlocked.CompareExchange(ref _busy[slot], 1, 0) != 0) slot = (slot + 1) % workers;
            try { new Item<TIsa, TVec>(problem, grads, index, checkpoints + slot * perWorker).Run(); }
            finally { Volatile.Write(ref _busy[slot], 0); }
        }
    }

    private static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    /// <summary>One (sequence, head): its scratch tiles and the per-chunk steps.</summary>
    private ref struct Item<TIsa, TVec>
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        private readonly StateProblem p;
        private readonly StateGradients gr;
        private readonly int h, hk, seq, batch, start, end, df, dv, chunk, w, dkp, dvp, dkn, cr, cn, chunks;
        private readonly bool channel, scalar, delta;
        private readonly long state;
        // Tiles: see the constructor.
        private readonly float* checkpoints, S, dS, dST, S0T, Q, K, Qt, Kt, Kh, Kb, Eb, En, Ed, Bc, dQ, dKt, dKh, dKb, dKr, Cs;
        private readonly float* V, dO, Wm, U, dU, dW, KhT, UT, WT, A, dA, L, dL, N, T, dT, X, NT;
        private readonly float* bS, eb, ed, beta, dbeta, db, cs, diag, rowDecay, stateGate;

        // checkpointRegion: room for (chunks + 1) states of this item, owned by it while it runs.
        public Item(StateProblem problem, StateGradients grads, int item, float* checkpointRegion)
        {
            p = problem;
            gr = grads;
            LinearConfig cfg = p.Config;
            int heads = p.Heads, n = item / heads;
            seq = n;
            h = item % heads;
            hk = h / p.Group;
            cfg.Range(n, out batch, out start, out end);
            w = TIsa.Width;
            df = p.Df;
            dv = p.Dv;
            chunk = Chunk(cfg);
            dkp = RoundUp(df, w);
            dvp = RoundUp(dv, w);
            dkn = RoundUp(df, 4 * w);
            cr = RoundUp(chunk, 4);
            cn = RoundUp(chunk, 4 * w);
            chunks = (end - start + chunk - 1) / chunk;
            channel = cfg.Decay == LinearDecay.ChannelGate;
            scalar = cfg.Decay is LinearDecay.FixedPerHead or LinearDecay.ScalarGate;
            delta = cfg.IsDelta;
            state = (long)dkp * dvp;

            long rowK = (long)cr * dkn, rowV = (long)cr * dvp, cc = (long)cr * cn;
            long sz = 2 * state + 2L * dvp * dkn + 16 * rowK + 6 * rowV + (long)dkp * cn + 2L * dvp * cn
                      + 8 * cc + (long)cn * cn + 8L * cn + 2L * dkn + 64;
            float* m = Scratch.Get(sz);
            new Span<float>(m, checked((int)sz)).Clear();
            checkpoints = checkpointRegion;               // S at every chunk boundary (the last: the final state)
            S = m; m += state;                             // the forward sweep's state
            dS = m; m += state;                            // gradient of the state at the current chunk's end
            dST = m; m += (long)dvp * dkn;                 // dSᵀ
            S0T = m; m += (long)dvp * dkn;                 // S₀ᵀ
            Q = m; m += rowK; K = m; m += rowK;            // [cr][dkp] rows (stride dkp; rowK leaves room)
            Qt = m; m += rowK; Kt = m; m += rowK; Kh = m; m += rowK; Kb = m; m += rowK;   // Q̃, K̃, K̂, K̄
            Eb = m; m += rowK; En = m; m += rowK; Ed = m; m += rowK; Bc = m; m += rowK;   // e^b, e^{−b}, e^{b_C − b}, b (channel)
            dQ = m; m += rowK;                             // [cr][dkn]
            dKt = m; m += rowK; dKh = m; m += rowK; dKb = m; m += rowK; dKr = m; m += rowK; // dK̃, dK̂, dK̄ [cr][dkn]; raw dk
            Cs = m; m += rowK;                             // channel: K̄ ⊙ dK̄ rows (the state write's gate term)
            V = m; m += rowV; dO = m; m += rowV; Wm = m; m += rowV; U = m; m += rowV; dU = m; m += rowV; dW = m; m += rowV;
            KhT = m; m += (long)dkp * cn;                  // K̂ᵀ (or Kᵀ for a scalar decay) [dkp][cn]
            UT = m; m += (long)dvp * cn; WT = m; m += (long)dvp * cn;
            A = m; m += cc; dA = m; m += cc; L = m; m += cc; dL = m; m += cc; N = m; m += cc; T = m; m += cc; dT = m; m += cc; X = m; m += cc;
            NT = m; m += (long)cn * cn;                    // Nᵀ [cn][cn]
            bS = m; m += cn; eb = m; m += cn; ed = m; m += cn; beta = m; m += cn; dbeta = m; m += cn; db = m; m += cn; cs = m; m += cn; diag = m; m += cn;
            rowDecay = m; m += dkn;                        // e^{b_C} per state row
            stateGate = m;                                 // e^{b_C}⟨dS, S₀⟩ per channel, then their sum
        }

        public void Run()
        {
            long stateAt = StateAt();
            if (gr.FinalStateGradient != null)
                for (int i = 0; i < df; i++)
                    new ReadOnlySpan<float>(gr.FinalStateGradient + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(dS + (long)i * dvp, dv));
            if (end <= start)
            {
                WriteInitialGradient();
                return;
            }
            if (p.InitialState != null)
                for (int i = 0; i < df; i++)
                    new ReadOnlySpan<float>(p.InitialState + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(S + (long)i * dvp, dv));

            // Forward sweep: U of each chunk, S ← diag(e^{b_C}) S + K̄ᵀU.
            for (int c = 0; c < chunks; c++)
            {
                Buffer.MemoryCopy(S, checkpoints + c * state, state * 4, state * 4);
                int c0 = start + c * chunk, len = Math.Min(chunk, end - c0);
                Load(c0, len, withGradient: false);
                Recompute(len, S, scores: false);
                DecayState(S, len);
                TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(Kb, dkp, U, dvp, S, dvp, dkp, dvp, len);
            }
            Buffer.MemoryCopy(S, checkpoints + chunks * state, state * 4, state * 4);

            for (int c = chunks - 1; c >= 0; c--)
            {
                int c0 = start + c * chunk, len = Math.Min(chunk, end - c0);
                float* S0 = checkpoints + c * state, SC = checkpoints + (c + 1) * state;
                Load(c0, len, withGradient: true);
                Recompute(len, S0, scores: true);
                Reverse(c0, len, S0, SC);
            }
            WriteInitialGradient();
        }

        private readonly long StateAt() => ((long)seq * p.Heads + h) * df * dv;

        private readonly void WriteInitialGradient()
        {
            if (gr.InitialState == null) return;
            long stateAt = StateAt();
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(dS + (long)i * dvp, dv).CopyTo(new Span<float>(gr.InitialState + stateAt + (long)i * dv, dv));
        }

        /// <summary>Rows of q, k, v (and dO), β, the cumulative gates b and the decay factors; rows past len are zero.</summary>
        private readonly void Load(int c0, int len, bool withGradient)
        {
            LinearConfig cfg = p.Config;
            int heads = p.Heads, qRow = heads * df, kRow = p.KvHeads * df, vRow = p.KvHeads * dv, oRow = heads * dv;
            long tok0 = (long)batch * p.Tokens + c0;
            int rows = cr - len;
            new Span<float>(Q + (long)len * dkp, rows * dkp).Clear();
            new Span<float>(K + (long)len * dkp, rows * dkp).Clear();
            new Span<float>(V + (long)len * dvp, rows * dvp).Clear();
            new Span<float>(dO + (long)len * dvp, rows * dvp).Clear();
            for (int t = 0; t < len; t++)
            {
                long tok = tok0 + t;
                Buffer.MemoryCopy(p.Q + tok * qRow + (long)h * df, Q + (long)t * dkp, df * 4L, df * 4L);
                Buffer.MemoryCopy(p.K + tok * kRow + (long)hk * df, K + (long)t * dkp, df * 4L, df * 4L);
                Buffer.MemoryCopy(p.V + tok * vRow + (long)hk * dv, V + (long)t * dvp, dv * 4L, dv * 4L);
                if (withGradient) Buffer.MemoryCopy(gr.OutputGradient + tok * oRow + (long)h * dv, dO + (long)t * dvp, dv * 4L, dv * 4L);
            }
            for (int t = 0; t < cn; t++) beta[t] = t < len && delta ? p.BetaAt(tok0 + t, h) : 0f;

            if (channel)
            {
                float* g = p.Gate + (tok0 * heads + h) * df;
                for (int t = 0; t < len; t++)
                {
                    float* row = Bc + (long)t * dkp, prev = row - dkp;
                    for (int i = 0; i < df; i++) row[i] = (t > 0 ? prev[i] : 0f) + g[(long)t * heads * df + i];
                }
                float* last = Bc + (long)(len - 1) * dkp;
                for (int i = 0; i < dkp; i++) rowDecay[i] = i < df ? MathF.Exp(last[i]) : 0f;
                for (int t = 0; t < cr; t++)
                {
                    float* br = Bc + (long)t * dkp, e = Eb + (long)t * dkp, en = En + (long)t * dkp, edr = Ed + (long)t * dkp;
                    if (t >= len)
                    {
                        new Span<float>(e, dkp).Clear(); new Span<float>(en, dkp).Clear(); new Span<float>(edr, dkp).Clear();
                        continue;
                    }
                    // e^{b_C − b} = e^{b_C}·e^{−b}: two exponentials per element, not three (b ≥ −60 here, in range).
                    for (int i = 0; i < dkp; i += w)
                    {
                        TVec b = TIsa.Load(br + i), inv = TIsa.Exp(TIsa.Sub(TIsa.Zero, b));
                        TIsa.Store(TIsa.Exp(b), e + i);
                        TIsa.Store(inv, en + i);
                        TIsa.Store(TIsa.Mul(TIsa.Load(rowDecay + i), inv), edr + i);
                    }
                }
            }
            else
            {
                float acc = 0;
                for (int t = 0; t < len; t++) { acc += p.ScalarLogGate(tok0 + t, h); bS[t] = acc; }
                for (int t = 0; t < cn; t++)
                {
                    if (t >= len) { bS[t] = acc; eb[t] = 0; ed[t] = 0; continue; }
                    eb[t] = MathF.Exp(bS[t]);
                    ed[t] = MathF.Exp(acc - bS[t]);
                }
                float e = MathF.Exp(acc);
                for (int i = 0; i < dkp; i++) rowDecay[i] = e;
            }
        }

        /// <summary>Q̃, K̃, K̂ (channel), K̄; L, N, T, W, U (delta) from S₀; A and its transposes when <paramref name="scores"/>.</summary>
        private readonly void Recompute(int len, float* S0, bool scores)
        {
            if (channel)
            {
                Multiply(Q, Eb, Qt, cr * dkp);
                Multiply(K, Eb, Kt, cr * dkp);
                Multiply(K, En, Kh, cr * dkp);
                Multiply(K, Ed, Kb, cr * dkp);
                Transpose.Block(Kh, dkp, KhT, cn, cr, dkp);
            }
            else
            {
                ScaleRows(Q, dkp, eb, Qt);
                ScaleRows(K, dkp, eb, Kt);
                ScaleRows(K, dkp, ed, Kb);
                Transpose.Block(K, dkp, KhT, cn, cr, dkp);
            }

            if (delta)
            {
                // L = strict tril(K̃K̂ᵀ) (channel) or strict tril(KKᵀ) ⊙ D (scalar).
                TileGemm.MultiplyTransposed<TIsa, TVec>(channel ? Kt : K, dkp, KhT, cn, L, cn, cr, cn, dkp);
                Mask(L, len, inclusive: false, decay: true);
                // N = (I + diag(β)L)⁻¹ by forward substitution; T = N diag(β).
                InvertUnitLower(L, beta, N, len);
                for (int t = 0; t < cr; t++)
                {
                    float* nr = N + (long)t * cn, tr = T + (long)t * cn;
                    for (int s = 0; s < cn; s++) tr[s] = nr[s] * beta[s];
                }
                // W = V − K̃S₀, U = T W.
                new Span<float>(Wm, cr * dvp).Clear();
                TileGemm.MultiplyAccumulate<TIsa, TVec>(Kt, dkp, S0, dvp, Wm, dvp, null, cr, dvp, dkp);
                for (long x = 0; x < (long)cr * dvp; x += w) TIsa.Store(TIsa.Sub(TIsa.Load(V + x), TIsa.Load(Wm + x)), Wm + x);
                new Span<float>(U, cr * dvp).Clear();
                TileGemm.MultiplyAccumulate<TIsa, TVec>(T, cn, Wm, dvp, U, dvp, null, cr, dvp, len);
            }
            else
                Buffer.MemoryCopy(V, U, (long)cr * dvp * 4, (long)cr * dvp * 4);

            if (!scores) return;
            // A = tril(Q̃K̂ᵀ) (channel) or tril(QKᵀ) ⊙ D (scalar).
            TileGemm.MultiplyTransposed<TIsa, TVec>(channel ? Qt : Q, dkp, KhT, cn, A, cn, cr, cn, dkp);
            Mask(A, len, inclusive: true, decay: true);
        }

        /// <summary>One chunk's reverse step; dS (the gradient at the chunk's end) becomes the gradient at its start.</summary>
        private readonly void Reverse(int c0, int len, float* S0, float* SC)
        {
            int heads = p.Heads, qRow = heads * df, oRow = heads * dv;
            long tok0 = (long)batch * p.Tokens + c0;
            Transpose.Block(S0, dvp, S0T, dkn, dkp, dvp);
            Transpose.Block(dS, dvp, dST, dkn, dkp, dvp);
            Transpose.Block(U, dvp, UT, cn, cr, dvp);
            if (channel) new Span<float>(Bc, cr * dkp).Clear(); // Bc now accumulates the channel d b rows

            // dU = AᵀdO + K̄ dS.
            new Span<float>(dU, cr * dvp).Clear();
            TileGemm.MultiplyAccumulate<TIsa, TVec>(Kb, dkp, dS, dvp, dU, dvp, null, cr, dvp, dkp);
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(A, cn, dO, dvp, dU, dvp, cr, dvp, len);

            // dA = tril(dO Uᵀ) (⊙ D for a scalar decay: then dA is the gradient of the undecayed scores).
            TileGemm.MultiplyTransposed<TIsa, TVec>(dO, dvp, UT, cn, dA, cn, cr, cn, dvp);
            Mask(dA, len, inclusive: true, decay: false);

            for (int t = 0; t < cn; t++) db[t] = 0;
            // Channel gate: the diagonal score q_t·k_t carries no decay, so its gradient goes to q and k directly (through
            // Q̃ and K̂ its gate terms would cancel only to rounding, swamping small gate gradients).
            if (channel)
                for (int t = 0; t < len; t++) { diag[t] = dA[(long)t * cn + t]; dA[(long)t * cn + t] = 0; }
            // Scalar decay: d b_t from the decayed scores, Σ_{s<t} dA_ts A_ts (row) − Σ_{t'>t} dA_t't A_t't (column).
            if (scalar) RowMinusColumn(dA, A, len);

            // dQ̃ = dO S₀ᵀ + dA K̂ (scalar: dQ = e^b ⊙ dO S₀ᵀ + (dA ⊙ D) K, the decay already in dA).
            TileGemm.MultiplyTransposed<TIsa, TVec>(dO, dvp, S0T, dkn, dQ, dkn, cr, dkn, dvp);
            if (scalar)
                for (int t = 0; t < len; t++) db[t] += eb[t] * Dot(Q + (long)t * dkp, dQ + (long)t * dkn, dkp);
            TileGemm.MultiplyAccumulate<TIsa, TVec>(dA, cn, channel ? Kh : K, dkp, dQ, dkn, channel ? null : eb, cr, dkp, len);
            if (channel)
            {
                // d b += Q̃ ⊙ dQ̃, then dQ = dQ̃ ⊙ e^b.
                for (int t = 0; t < len; t++) AddProduct(Qt + (long)t * dkp, dQ + (long)t * dkn, db, t, +1);
                for (int t = 0; t < len; t++)
                {
                    float* r = dQ + (long)t * dkn;
                    Multiply(r, Eb + (long)t * dkp, r, dkp);
                    AddScaled(K + (long)t * dkp, diag[t], r);
                }
            }
            for (int t = 0; t < len; t++)
                Buffer.MemoryCopy(dQ + (long)t * dkn, gr.Q + (tok0 + t) * qRow + (long)h * df, df * 4L, df * 4L);

            // dK̄ = U dSᵀ; dK̂ = dAᵀQ̃ (channel) or, scalar, the raw dk = (dA ⊙ D)ᵀ Q.
            TileGemm.MultiplyTransposed<TIsa, TVec>(U, dvp, dST, dkn, dKb, dkn, cr, dkn, dvp);
            new Span<float>(dKh, cr * dkn).Clear();
            new Span<float>(dKr, cr * dkn).Clear();
            new Span<float>(dKt, cr * dkn).Clear();
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(dA, cn, channel ? Qt : Q, dkp, channel ? dKh : dKr, dkn, cr, dkp, len);

            float* dVsrc = dU;
            if (delta)
            {
                // dW = TᵀdU; dT = tril(dU Wᵀ); dK̃ = −dW S₀ᵀ.
                new Span<float>(dW, cr * dvp).Clear();
                TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(T, cn, dU, dvp, dW, dvp, cr, dvp, len);
                Transpose.Block(Wm, dvp, WT, cn, cr, dvp);
                TileGemm.MultiplyTransposed<TIsa, TVec>(dU, dvp, WT, cn, dT, cn, cr, cn, dvp);
                Mask(dT, len, inclusive: true, decay: false);
                TileGemm.MultiplyTransposed<TIsa, TVec>(dW, dvp, S0T, dkn, dKt, dkn, cr, dkn, dvp);
                for (long x = 0; x < (long)cr * dkn; x += w) TIsa.Store(TIsa.Sub(TIsa.Zero, TIsa.Load(dKt + x)), dKt + x);

                // T = N diag(β): dβ_s = Σ_t N_ts dT_ts; dN = dT diag(β).
                for (int s = 0; s < cn; s++) dbeta[s] = 0;
                for (int t = 0; t < len; t++)
                {
                    float* nr = N + (long)t * cn, dtr = dT + (long)t * cn;
                    for (int s = 0; s <= t; s++) { dbeta[s] += nr[s] * dtr[s]; dtr[s] *= beta[s]; }
                }
                // N = M⁻¹: dM = −Nᵀ dN Nᵀ (X = NᵀdN, then X Nᵀ).
                new Span<float>(X, cr * cn).Clear();
                TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(N, cn, dT, cn, X, cn, cr, cn, len);
                Transpose.Block(N, cn, NT, cn, cr, cn);
                TileGemm.MultiplyTransposed<TIsa, TVec>(X, cn, NT, cn, dL, cn, cr, cn, len);
                // M = I + diag(β)L: dβ_t += Σ_s dM_ts L_ts; dL = diag(β) dM (strictly lower; the sign of dM folded in).
                for (int t = 0; t < cr; t++)
                {
                    float* r = dL + (long)t * cn, lr = L + (long)t * cn;
                    if (t >= len) { new Span<float>(r, cn).Clear(); continue; }
                    float acc = 0;
                    for (int s = 0; s < t; s++) { float dm = -r[s]; acc += dm * lr[s]; r[s] = beta[t] * dm; }
                    new Span<float>(r + t, cn - t).Clear();
                    dbeta[t] += acc;
                }
                if (gr.Beta != null)
                    for (int t = 0; t < len; t++) gr.Beta[(tok0 + t) * heads + h] = dbeta[t];

                // L = K̃K̂ᵀ: dK̃ += dL K̂, dK̂ += dLᵀK̃ (scalar: L = (KKᵀ) ⊙ D, so raw dk += (dL ⊙ D) K + (dL ⊙ D)ᵀ K).
                if (scalar) RowMinusColumn(dL, L, len);
                if (channel)
                {
                    TileGemm.MultiplyAccumulate<TIsa, TVec>(dL, cn, Kh, dkp, dKt, dkn, null, cr, dkp, len);
                    TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(dL, cn, Kt, dkp, dKh, dkn, cr, dkp, len);
                }
                else
                {
                    TileGemm.MultiplyAccumulate<TIsa, TVec>(dL, cn, K, dkp, dKr, dkn, null, cr, dkp, len);
                    TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(dL, cn, K, dkp, dKr, dkn, cr, dkp, len);
                }
                dVsrc = dW;
            }
            for (int t = 0; t < len; t++)
                Buffer.MemoryCopy(dVsrc + (long)t * dvp, gr.V + (tok0 + t) * oRow + (long)h * dv, dv * 4L, dv * 4L);

            // Raw dk = e^b ⊙ dK̃ + e^{−b} ⊙ dK̂ + e^{b_C − b} ⊙ dK̄ (+ the scalar decay's direct terms already in dKr);
            // d b += K̃ ⊙ dK̃ − K̂ ⊙ dK̂ − K̄ ⊙ dK̄.
            for (int t = 0; t < len; t++)
            {
                float* r = dKr + (long)t * dkn, kt = dKt + (long)t * dkn, kh = dKh + (long)t * dkn, kb = dKb + (long)t * dkn;
                if (channel)
                {
                    AddProduct(Kt + (long)t * dkp, kt, db, t, +1);
                    AddProduct(Kh + (long)t * dkp, kh, db, t, -1);
                    Multiply(Kb + (long)t * dkp, kb, Cs + (long)t * dkp, dkp);
                    AddScaled(Q + (long)t * dkp, diag[t], r);
                    float* e = Eb + (long)t * dkp, en = En + (long)t * dkp, edr = Ed + (long)t * dkp;
                    for (int i = 0; i < dkp; i += w)
                    {
                        TVec acc = TIsa.Fma(TIsa.Load(e + i), TIsa.Load(kt + i), TIsa.Load(r + i));
                        acc = TIsa.Fma(TIsa.Load(en + i), TIsa.Load(kh + i), acc);
                        TIsa.Store(TIsa.Fma(TIsa.Load(edr + i), TIsa.Load(kb + i), acc), r + i);
                    }
                }
                else
                {
                    if (scalar)
                    {
                        db[t] += eb[t] * Dot(K + (long)t * dkp, kt, dkp);
                        cs[t] = ed[t] * Dot(K + (long)t * dkp, kb, dkp);
                    }
                    TVec e = TIsa.Splat(eb[t]), edv = TIsa.Splat(ed[t]);
                    for (int i = 0; i < dkp; i += w)
                        TIsa.Store(TIsa.Fma(edv, TIsa.Load(kb + i), TIsa.Fma(e, TIsa.Load(kt + i), TIsa.Load(r + i))), r + i);
                }
                Buffer.MemoryCopy(r, gr.K + (tok0 + t) * qRow + (long)h * df, df * 4L, df * 4L);
            }

            // The state write S_C = diag(e^{b_C}) S₀ + K̄ᵀU: its gate term for log α_r is e^{b_C}⟨dS, S₀⟩ + Σ_{s<r} K̄_s⊙dK̄_s
            // (b_C depends on every gate of the chunk, b_s on those up to s), summed forward with no cancellation.
            if (p.Config.HasGate)
            {
                float total = 0;
                for (int i = 0; i < df; i++)
                {
                    float v = rowDecay[i] * Dot(dS + (long)i * dvp, S0 + (long)i * dvp, dvp);
                    stateGate[i] = v;
                    total += v;
                }
                stateGate[df] = total;
            }

            // dS ← diag(e^{b_C}) dS + Q̃ᵀdO − K̃ᵀdW.
            for (int i = 0; i < dkp; i++)
            {
                TVec f = TIsa.Splat(rowDecay[i]);
                float* r = dS + (long)i * dvp;
                for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(f, TIsa.Load(r + j)), r + j);
            }
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(Qt, dkp, dO, dvp, dS, dvp, dkp, dvp, len);
            if (delta)
            {
                for (long x = 0; x < (long)cr * dvp; x += w) TIsa.Store(TIsa.Sub(TIsa.Zero, TIsa.Load(dW + x)), dW + x);
                TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(Kt, dkp, dW, dvp, dS, dvp, dkp, dvp, len);
            }

            WriteGateGradient(tok0, len);
        }

        /// <summary>
        /// dlog α_r = Σ_{t ≥ r} d b_t + e^{b_C}⟨dS, S₀⟩ + Σ_{s &lt; r} K̄_s⊙dK̄_s inside the chunk (b is the chunk's
        /// cumulative gate; the last two terms are the state write's, see <see cref="Reverse"/>).
        /// </summary>
        private readonly void WriteGateGradient(long tok0, int len)
        {
            if (gr.Gate == null || !p.Config.HasGate) return;
            int heads = p.Heads;
            if (channel)
            {
                // Prefix sums of K̄⊙dK̄ (in place in Cs: row r becomes Σ_{s<r}), then the reverse sums of d b.
                float* run = dQ; // free now: [dkn]
                new Span<float>(run, dkn).Clear();
                for (int t = 0; t < len; t++)
                {
                    float* c = Cs + (long)t * dkp;
                    for (int i = 0; i < df; i++) { float v = c[i]; c[i] = run[i]; run[i] += v; }
                }
                new Span<float>(run, dkn).Clear();
                for (int t = len - 1; t >= 0; t--)
                {
                    float* row = ChannelDb(t), c = Cs + (long)t * dkp, g = gr.Gate + ((tok0 + t) * heads + h) * df;
                    for (int i = 0; i < df; i++) { run[i] += row[i]; g[i] = run[i] + stateGate[i] + c[i]; }
                }
            }
            else
            {
                float acc = 0, prefix = 0;
                for (int t = 0; t < len; t++) { float v = cs[t]; cs[t] = prefix; prefix += v; }
                for (int t = len - 1; t >= 0; t--) { acc += db[t]; gr.Gate[(tok0 + t) * heads + h] = acc + stateGate[df] + cs[t]; }
            }
        }

        /// <summary>Row t of the channel gate's d b (stored in the Bc tile, free after the factors are made).</summary>
        private readonly float* ChannelDb(int t) => Bc + (long)t * dkp;

        /// <summary>Channel gate: d b row t (in Bc) += sign·x ⊙ y; scalar: db[t] += sign·x·y.</summary>
        private readonly void AddProduct(float* x, float* y, float* dbs, int t, int sign)
        {
            if (!channel) { dbs[t] += sign * Dot(x, y, dkp); return; }
            float* row = ChannelDb(t);
            TVec s = TIsa.Splat(sign);
            for (int i = 0; i < dkp; i += w) TIsa.Store(TIsa.Fma(TIsa.Mul(s, TIsa.Load(x + i)), TIsa.Load(y + i), TIsa.Load(row + i)), row + i);
        }

        /// <summary>Scalar decay: d b_t += Σ_{s&lt;t} dZ_ts Z_ts − Σ_{t'&gt;t} dZ_t't Z_t't for decayed scores Z; then dZ ← dZ ⊙ D.</summary>
        private readonly void RowMinusColumn(float* dz, float* z, int len)
        {
            for (int t = 0; t < len; t++)
            {
                float* dr = dz + (long)t * cn, zr = z + (long)t * cn;
                float row = 0;
                for (int s = 0; s < t; s++) // the diagonal (D_tt = 1) adds +v − v = 0: left out, not cancelled in rounding
                {
                    float v = dr[s] * zr[s];
                    row += v;
                    db[s] -= v;
                    dr[s] *= MathF.Exp(bS[t] - bS[s]);
                }
                db[t] += row;
            }
        }

        /// <summary>
        /// Keeps s ≤ t (inclusive) or s &lt; t of the first len rows, zero elsewhere; with <paramref name="decay"/> (scores,
        /// not their gradients) a scalar decay multiplies the kept entries by D_ts.
        /// </summary>
        private readonly void Mask(float* a, int len, bool inclusive, bool decay)
        {
            for (int t = 0; t < cr; t++)
            {
                float* row = a + (long)t * cn;
                int keep = t >= len ? 0 : (inclusive ? t + 1 : t);
                if (scalar && decay)
                    for (int s = 0; s < keep; s++) row[s] *= MathF.Exp(bS[t] - bS[s]);
                new Span<float>(row + keep, cn - keep).Clear();
            }
        }

        private readonly void DecayState(float* s, int len)
        {
            for (int i = 0; i < dkp; i++)
            {
                TVec f = TIsa.Splat(rowDecay[i]);
                float* r = s + (long)i * dvp;
                for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(f, TIsa.Load(r + j)), r + j);
            }
        }

        /// <summary>N = (I + diag(β)L)⁻¹ for strictly lower L: row t = e_t − β_t Σ_{s&lt;t} L_ts N_s. Rows past len are zero.</summary>
        private readonly void InvertUnitLower(float* l, float* b, float* n, int len)
        {
            new Span<float>(n, cr * cn).Clear();
            for (int t = 0; t < len; t++)
            {
                float* row = n + (long)t * cn, lt = l + (long)t * cn;
                float bt = b[t];
                for (int s = 0; s < t; s++)
                {
                    float c = bt * lt[s];
                    if (c == 0) continue;
                    float* rs = n + (long)s * cn;
                    for (int r = 0; r <= s; r++) row[r] -= c * rs[r];
                }
                row[t] = 1f;
            }
        }

        /// <summary>dst += f·x over dkp floats.</summary>
        private readonly void AddScaled(float* x, float f, float* dst)
        {
            TVec s = TIsa.Splat(f);
            for (int i = 0; i < dkp; i += w) TIsa.Store(TIsa.Fma(s, TIsa.Load(x + i), TIsa.Load(dst + i)), dst + i);
        }

        private readonly void Multiply(float* x, float* y, float* dst, int count)
        {
            for (int i = 0; i < count; i += w) TIsa.Store(TIsa.Mul(TIsa.Load(x + i), TIsa.Load(y + i)), dst + i);
        }

        private readonly void ScaleRows(float* src, int width, float* f, float* dst)
        {
            for (int t = 0; t < cr; t++)
            {
                TVec s = TIsa.Splat(f[t]);
                float* a = src + (long)t * width, b = dst + (long)t * width;
                for (int j = 0; j < width; j += w) TIsa.Store(TIsa.Mul(s, TIsa.Load(a + j)), b + j);
            }
        }

        private readonly float Dot(float* x, float* y, int count)
        {
            TVec acc = TIsa.Zero;
            for (int i = 0; i < count; i += w) acc = TIsa.Fma(TIsa.Load(x + i), TIsa.Load(y + i), acc);
            return TIsa.Sum(acc);
        }
    }
}
