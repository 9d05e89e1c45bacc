using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Attend.Linear;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>
/// The chunked parallel form of the state recurrence (prefill and training). Per (sequence, head) the tokens are cut
/// into chunks of C; inside a chunk the outputs are exact products (a causal C×C score matrix with its decay factors),
/// between chunks the state carries the past:
/// <code>
///   b_t   = Σ_{r≤t} log α_r  (cumulative in the chunk; per channel for a channel gate)
///   U     = V (additive) or (I + diag(β) L)⁻¹ diag(β) (V − (K⊙e^b) S)   (delta rules, L = strictly lower K K-scores)
///   O     = (Q⊙e^b) S + tril(A) U,   A_ts = Σ_i q_ti k_si e^{b_ti − b_si}
///   S    ← diag(e^{b_C}) S + (K⊙e^{b_C − b})ᵀ U
/// </code>
/// Every product is a <see cref="TileGemm"/> call on 64-byte-aligned, zero-padded scratch tiles. For a scalar decay the
/// factors e^{b_t − b_s} ≤ 1 are applied to the score matrix after the product. For a channel gate the product needs
/// q⊙e^{b_t} and k⊙e^{−b_s} (the reference-at-chunk-start factorisation); that is exact to rounding only while
/// e^{−b_s} stays in range, so a chunk whose cumulative gate falls below <see cref="FactorisedLimit"/> computes its
/// scores directly with one exponential per (t, s, channel) instead — slower, never overflowing.
/// </summary>
internal static unsafe class ChunkedStateKernel
{
    /// <summary>Most negative cumulative log gate in a chunk for which the factorised channel-gate product is used.</summary>
    public const float FactorisedLimit = -60f;

    public static void Forward(StateProblem problem)
    {
        if (Isa512.IsSupported) Run<Isa512, Vector512<float>>(problem);
        else if (Isa256.IsSupported) Run<Isa256, Vector256<float>>(problem);
        else Run<Isa128, Vector128<float>>(problem);
    }

    private static void Run<TIsa, TVec>(StateProblem problem)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        => ParallelWork.Run(problem.Items, problem.Config.Threads, new Items<TIsa, TVec>(problem));

    private sealed class Items<TIsa, TVec>(StateProblem problem) : IWorkItems
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        public void Execute(int index) => Item<TIsa, TVec>(problem, index);
    }

    private static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Item<TIsa, TVec>(StateProblem p, int item)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        LinearConfig cfg = p.Config;
        int heads = p.Heads, h = item % heads, n = item / heads, hk = h / p.Group;
        cfg.Range(n, out int batch, out int start, out int end);
        int w = TIsa.Width, df = p.Df, dv = p.Dv, chunk = cfg.ChunkSize;
        int dkp = RoundUp(df, w), dvp = RoundUp(dv, w), cr = RoundUp(chunk, 4), cn = RoundUp(chunk, 4 * w), lq = dkp + cn;
        bool channel = cfg.Decay == LinearDecay.ChannelGate;
        bool scalar = cfg.Decay is LinearDecay.FixedPerHead or LinearDecay.ScalarGate;
        bool delta = cfg.IsDelta;

        // Scratch tiles (all zero-padded). S is followed directly by the chunk's values (V, or U for the delta rules) so
        // that [S; U] is one matrix, and each row of QA holds q then the row's scores, so that O = QA·[S; U] is one
        // product: O = (Q⊙e^b) S + A U.
        long sz = (long)dkp * dvp + 2L * cr * dvp + (long)cr * lq + 5L * cr * dkp + (long)dkp * cn + 2L * cr * dvp + 2L * cr * cn + 3L * cr + dkp + 64;
        float* mem = Scratch.Get(sz);
        new Span<float>(mem, checked((int)sz)).Clear();
        float* S = mem;
        float* UV = S + (long)dkp * dvp;      // V (additive) or U (delta), right after S
        float* Vc = UV + (long)cr * dvp;      // V for the delta rules
        float* QA = Vc + (long)cr * dvp;      // [cr][dkp + cn]: q (scaled by e^{b_t}) | scores A
        float* Qr = QA + (long)cr * lq;       // raw q (channel gate only)
        float* Kr = Qr + (long)cr * dkp;      // raw k
        float* Kq = Kr + (long)cr * dkp;      // k⊙e^{b_t} (channel gate, delta)
        float* Kd = Kq + (long)cr * dkp;      // k⊙e^{b_C − b_s} rows (extreme channel gates) or k⊙e^{−b_s}
        float* Bc = Kd + (long)cr * dkp;      // cumulative channel gates
        float* KxT = Bc + (long)cr * dkp;     // (k or k⊙e^{−b_s})ᵀ, [dkp][cn]
        float* P = KxT + (long)dkp * cn;      // K̃S, then V − K̃S
        float* O = P + (long)cr * dvp;
        float* Akk = O + (long)cr * dvp;
        float* Tm = Akk + (long)cr * cn;
        float* bS = Tm + (long)cr * cn;       // cumulative scalar gates
        float* eb = bS + cr;                  // e^{b_t}
        float* beta = eb + cr;
        float* rowDecay = beta + cr;          // e^{b_C} per state row
        float* A = QA + dkp;
        float* V = delta ? Vc : UV;

        long stateAt = ((long)n * heads + h) * df * dv;
        if (p.InitialState != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(p.InitialState + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(S + (long)i * dvp, dv));

        int qRow = heads * df, kRow = p.KvHeads * df, vRow = p.KvHeads * dv, oRow = heads * dv;
        for (int c0 = start; c0 < end; c0 += chunk)
        {
            int len = Math.Min(chunk, end - c0);
            long tok0 = (long)batch * p.Tokens + c0;
            if (len < cr)
            {
                // A short last chunk: rows past len must be zero in every row buffer.
                int rows = cr - len;
                new Span<float>(QA + (long)len * lq, rows * lq).Clear();
                new Span<float>(Qr + (long)len * dkp, rows * dkp).Clear();
                new Span<float>(Kr + (long)len * dkp, rows * dkp).Clear();
                new Span<float>(Kq + (long)len * dkp, rows * dkp).Clear();
                new Span<float>(Kd + (long)len * dkp, rows * dkp).Clear();
                new Span<float>(V + (long)len * dvp, rows * dvp).Clear();
                new Span<float>(UV + (long)len * dvp, rows * dvp).Clear();
                for (int t = len; t < cr; t++) beta[t] = 0;
            }
            for (int t = 0; t < len; t++)
            {
                long tok = tok0 + t;
                Buffer.MemoryCopy(p.Q + tok * qRow + (long)h * df, QA + (long)t * lq, df * 4L, df * 4L);
                Buffer.MemoryCopy(p.K + tok * kRow + (long)hk * df, Kr + (long)t * dkp, df * 4L, df * 4L);
                Buffer.MemoryCopy(p.V + tok * vRow + (long)hk * dv, V + (long)t * dvp, dv * 4L, dv * 4L);
                if (delta) beta[t] = p.BetaAt(tok, h);
            }

            float bLast = 0;
            bool direct = false;
            if (scalar)
            {
                float acc = 0;
                for (int t = 0; t < len; t++) { acc += p.ScalarLogGate(tok0 + t, h); bS[t] = acc; eb[t] = MathF.Exp(acc); }
                for (int t = len; t < cr; t++) { bS[t] = acc; eb[t] = 0; }
                bLast = acc;
            }
            else if (channel)
            {
                float* g = p.Gate + (tok0 * heads + h) * df;
                float minLast = 0;
                for (int t = 0; t < cr; t++)
                {
                    float* row = Bc + (long)t * dkp, prev = row - dkp;
                    if (t < len)
                        for (int i = 0; i < df; i++) row[i] = (t > 0 ? prev[i] : 0f) + g[(long)t * heads * df + i];
                    else
                        for (int i = 0; i < df; i++) row[i] = prev[i];
                }
                float* last = Bc + (long)(len - 1) * dkp;
                for (int i = 0; i < df; i++) minLast = Math.Min(minLast, last[i]);
                direct = minLast < FactorisedLimit;
                // Keep the raw q, then q ← q⊙e^{b_t}; k⊙e^{b_t} for the delta rule's K̃.
                for (int t = 0; t < len; t++)
                {
                    float* br = Bc + (long)t * dkp, qa = QA + (long)t * lq;
                    Buffer.MemoryCopy(qa, Qr + (long)t * dkp, dkp * 4L, dkp * 4L);
                    for (int i = 0; i < dkp; i += w)
                    {
                        TVec e = TIsa.Exp(TIsa.Load(br + i));
                        TIsa.Store(TIsa.Mul(TIsa.Load(qa + i), e), qa + i);
                        if (delta) TIsa.Store(TIsa.Mul(TIsa.Load(Kr + (long)t * dkp + i), e), Kq + (long)t * dkp + i);
                    }
                }
            }

            // Intra-chunk scores A (causal, with decay factors) and, for the delta rules, the strictly lower K-scores.
            if (channel && direct)
            {
                DirectScores<TIsa, TVec>(Qr, Kr, Bc, A, lq, len, dkp, cn, inclusive: true);
                if (delta) DirectScores<TIsa, TVec>(Kr, Kr, Bc, Akk, cn, len, dkp, cn, inclusive: false);
            }
            else
            {
                if (channel)
                {
                    // k⊙e^{−b_s} (in range: the chunk's cumulative gate is above the factorised limit), then transposed.
                    for (int t = 0; t < cr; t++)
                    {
                        float* br = Bc + (long)t * dkp, kr = Kr + (long)t * dkp, kdr = Kd + (long)t * dkp;
                        for (int i = 0; i < dkp; i += w)
                            TIsa.Store(TIsa.Mul(TIsa.Load(kr + i), TIsa.Exp(TIsa.Sub(TIsa.Zero, TIsa.Load(br + i)))), kdr + i);
                    }
                    Transpose.Block(Kd, dkp, KxT, cn, cr, dkp);
                }
                else
                    Transpose.Block(Kr, dkp, KxT, cn, cr, dkp);
                TileGemm.MultiplyTransposed<TIsa, TVec>(QA, lq, KxT, cn, A, lq, cr, cn, dkp);
                MaskScores(A, lq, bS, len, cr, cn, scalar, inclusive: true);
                if (delta)
                {
                    TileGemm.MultiplyTransposed<TIsa, TVec>(channel ? Kq : Kr, dkp, KxT, cn, Akk, cn, cr, cn, dkp);
                    MaskScores(Akk, cn, bS, len, cr, cn, scalar, inclusive: false);
                }
            }
            // A scalar decay scales the state read by e^{b_t}: fold it into q now that the scores are made.
            if (scalar)
                for (int t = 0; t < cr; t++)
                {
                    TVec e = TIsa.Splat(eb[t]);
                    float* qa = QA + (long)t * lq;
                    for (int i = 0; i < dkp; i += w) TIsa.Store(TIsa.Mul(e, TIsa.Load(qa + i)), qa + i);
                }

            if (delta)
            {
                // W = V − K̃S (K̃ = k⊙e^{b_t}), then U = T W with T = (I + diag(β) L)⁻¹ diag(β).
                new Span<float>(P, cr * dvp).Clear();
                TileGemm.MultiplyAccumulate<TIsa, TVec>(channel ? Kq : Kr, dkp, S, dvp, P, dvp, null, cr, dvp, dkp);
                for (int t = 0; t < cr; t++)
                {
                    float f = scalar ? eb[t] : 1f;
                    float* pr = P + (long)t * dvp, vr = Vc + (long)t * dvp;
                    for (int j = 0; j < dvp; j += w)
                        TIsa.Store(TIsa.Sub(TIsa.Load(vr + j), TIsa.Mul(TIsa.Splat(f), TIsa.Load(pr + j))), pr + j);
                }
                InvertUnitLower(Akk, beta, Tm, len, cr, cn);
                new Span<float>(UV, cr * dvp).Clear();
                TileGemm.MultiplyAccumulate<TIsa, TVec>(Tm, cn, P, dvp, UV, dvp, null, cr, dvp, len);
            }

            // O = QA·[S; U], one product; A is lower triangular, so rows t..t+3 need only the first t+4 values.
            new Span<float>(O, cr * dvp).Clear();
            for (int t = 0; t < cr; t += 4)
                TileGemm.MultiplyAccumulate<TIsa, TVec>(QA + (long)t * lq, lq, S, dvp, O + (long)t * dvp, dvp, null, 4, dvp, dkp + Math.Min(len, t + 4));
            for (int t = 0; t < len; t++)
                Buffer.MemoryCopy(O + (long)t * dvp, p.Output + (tok0 + t) * oRow + (long)h * dv, dv * 4L, dv * 4L);

            // S ← diag(e^{b_C}) S + (K⊙e^{b_C − b})ᵀ U.
            if (channel && direct)
            {
                float* last = Bc + (long)(len - 1) * dkp;
                for (int i = 0; i < df; i++)
                {
                    TVec decay = TIsa.Splat(MathF.Exp(last[i]));
                    float* sr = S + (long)i * dvp;
                    for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(decay, TIsa.Load(sr + j)), sr + j);
                }
                for (int t = 0; t < len; t++)
                {
                    float* br = Bc + (long)t * dkp;
                    for (int i = 0; i < dkp; i += w)
                    {
                        TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(last + i), TIsa.Load(br + i)));
                        TIsa.Store(TIsa.Mul(e, TIsa.Load(Kr + (long)t * dkp + i)), Kd + (long)t * dkp + i);
                    }
                }
                TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(Kd, dkp, UV, dvp, S, dvp, dkp, dvp, len);
                continue;
            }
            float* decayRows = null;
            if (channel)
            {
                // KxT holds (k⊙e^{−b_s})ᵀ: row i times e^{b_C,i} is (k⊙e^{b_C − b_s})ᵀ, and e^{b_C,i} also decays S's row i.
                float* last = Bc + (long)(len - 1) * dkp;
                for (int i = 0; i < dkp; i++)
                {
                    float e = i < df ? MathF.Exp(last[i]) : 0f;
                    rowDecay[i] = e;
                    TVec ev = TIsa.Splat(e);
                    float* kt = KxT + (long)i * cn;
                    for (int s2 = 0; s2 < cn; s2 += w) TIsa.Store(TIsa.Mul(ev, TIsa.Load(kt + s2)), kt + s2);
                }
                decayRows = rowDecay;
            }
            else if (scalar && bLast != 0)
            {
                // Scale U's rows by e^{b_C − b_s} (O is already made) and S by e^{b_C}.
                for (int t = 0; t < len; t++)
                {
                    TVec f = TIsa.Splat(MathF.Exp(bLast - bS[t]));
                    float* ur = UV + (long)t * dvp;
                    for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(f, TIsa.Load(ur + j)), ur + j);
                }
                float e = MathF.Exp(bLast);
                for (int i = 0; i < dkp; i++) rowDecay[i] = e;
                decayRows = rowDecay;
            }
            TileGemm.MultiplyAccumulate<TIsa, TVec>(KxT, cn, UV, dvp, S, dvp, decayRows, dkp, dvp, len);
        }

        if (p.FinalState != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(S + (long)i * dvp, dv).CopyTo(new Span<float>(p.FinalState + stateAt + (long)i * dv, dv));
    }

    /// <summary>Keeps s ≤ t (inclusive) or s &lt; t; a scalar decay multiplies the kept scores by e^{b_t − b_s} ≤ 1.</summary>
    private static void MaskScores(float* a, int lda, float* bS, int len, int cr, int cn, bool scalar, bool inclusive)
    {
        for (int t = 0; t < cr; t++)
        {
            float* row = a + (long)t * lda;
            int keep = t >= len ? 0 : (inclusive ? t + 1 : t);
            if (scalar)
                for (int s = 0; s < keep; s++) row[s] *= MathF.Exp(bS[t] - bS[s]);
            new Span<float>(row + keep, cn - keep).Clear();
        }
    }

    /// <summary>Scores Σ_i x_ti k_si e^{b_ti − b_si} one exponential at a time (every factor ≤ 1): the channel-gate fallback.</summary>
    private static void DirectScores<TIsa, TVec>(float* x, float* k, float* b, float* a, int lda, int len, int dkp, int cn, bool inclusive)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        for (int t = 0; t < len; t++)
        {
            float* row = a + (long)t * lda, xt = x + (long)t * dkp, bt = b + (long)t * dkp;
            int keep = inclusive ? t + 1 : t;
            for (int s = 0; s < keep; s++)
            {
                float* ks = k + (long)s * dkp, bs = b + (long)s * dkp;
                TVec acc = TIsa.Zero;
                for (int i = 0; i < dkp; i += w)
                {
                    TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(bt + i), TIsa.Load(bs + i)));
                    acc = TIsa.Fma(TIsa.Mul(TIsa.Load(xt + i), TIsa.Load(ks + i)), e, acc);
                }
                row[s] = TIsa.Sum(acc);
            }
            new Span<float>(row + keep, cn - keep).Clear();
        }
    }

    /// <summary>
    /// T = (I + diag(β) L)⁻¹ diag(β) for strictly lower L (the delta rule's UT transform), by forward substitution:
    /// row t of T is β_t (e_t − Σ_{s&lt;t} L_ts T_s). T is lower triangular; rows and columns past len are zero.
    /// </summary>
    private static void InvertUnitLower(float* l, float* beta, float* tm, int len, int cr, int cn)
    {
        new Span<float>(tm, cr * cn).Clear();
        for (int t = 0; t < len; t++)
        {
            float* row = tm + (long)t * cn, lt = l + (long)t * cn;
            for (int s = 0; s < t; s++)
            {
                float c = lt[s];
                if (c == 0) continue;
                float* rs = tm + (long)s * cn;
                for (int r = 0; r <= s; r++) row[r] -= c * rs[r];
            }
            float bt = beta[t];
            for (int r = 0; r < t; r++) row[r] *= bt;
            row[t] = bt;
        }
    }
}
