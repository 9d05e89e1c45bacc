using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Attend.Linear;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>
/// The chunked (matrix-product) backward of the additive rule with no decay or a fixed decay per head — linear
/// attention, Lightning, RetNet, TransNormer(LLM), Based, Hedgehog, NaLaFormer. A forward sweep keeps the state at each
/// chunk start; chunks are then visited last to first with dS, the gradient of the state at the chunk's end:
/// <code>
///   D_ts = e^{b_t − b_s} (s ≤ t), A = QKᵀ ⊙ D, dA = dO Vᵀ ⊙ D
///   dQ = diag(e^b) dO S₀ᵀ + dA K
///   dK = dAᵀ Q + diag(e^{b_C − b}) V dSᵀ
///   dV = Aᵀ dO + diag(e^{b_C − b}) K dS
///   dS ← e^{b_C} dS + (diag(e^b) Q)ᵀ dO        (the gradient at the chunk's start)
/// </code>
/// every product a <see cref="TileGemm"/> call. Data-dependent gates and the delta rules use
/// <see cref="StateBackwardKernel"/> (the reverse recurrence).
/// </summary>
internal static unsafe class ChunkedBackwardKernel
{
    public static bool Supports(LinearConfig config) =>
        config.Update == LinearUpdate.Additive && config.Decay is LinearDecay.None or LinearDecay.FixedPerHead;

    public static void Run(StateProblem problem, StateGradients grads)
    {
        if (Isa512.IsSupported) Run<Isa512, Vector512<float>>(problem, grads);
        else if (Isa256.IsSupported) Run<Isa256, Vector256<float>>(problem, grads);
        else Run<Isa128, Vector128<float>>(problem, grads);
    }

    private static void Run<TIsa, TVec>(StateProblem problem, StateGradients grads)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        => ParallelWork.Run(problem.Items, problem.Config.Threads, new Items<TIsa, TVec>(problem, grads));

    private sealed class Items<TIsa, TVec>(StateProblem problem, StateGradients grads) : IWorkItems
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        public void Execute(int index) => Item<TIsa, TVec>(problem, grads, index);
    }

    private static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Item<TIsa, TVec>(StateProblem p, StateGradients gr, int item)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        LinearConfig cfg = p.Config;
        int heads = p.Heads, h = item % heads, n = item / heads, hk = h / p.Group;
        cfg.Range(n, out int batch, out int start, out int end);
        int w = TIsa.Width, df = p.Df, dv = p.Dv, chunk = cfg.ChunkSize;
        int dkp = RoundUp(df, w), dvp = RoundUp(dv, w), cr = RoundUp(chunk, 4), cn = RoundUp(chunk, 4 * w);
        int dkn = RoundUp(df, 4 * w), dvn = RoundUp(dv, 4 * w); // widths used as the n of MultiplyTransposed
        int len0 = end - start, chunks = (len0 + chunk - 1) / chunk;
        float lg = cfg.Decay == LinearDecay.FixedPerHead ? cfg.LogHeadDecay![h] : 0f;
        long state = (long)dkp * dvp;

        long sz = chunks * state + 2 * state + (long)dvn * dkn + 3L * cr * dkp + 2L * cr * dvp + (long)dkp * cn + (long)dvp * cn
                  + 2L * cr * cn + (long)cr * dkn + (long)cr * dvp + (long)dvp * dkn + 3L * cr + 64;
        float* mem = Scratch.Get(sz);
        new Span<float>(mem, checked((int)sz)).Clear();
        float* checkpoints = mem;
        float* S = checkpoints + chunks * state;   // working state of the forward sweep
        float* dS = S + state;                    // gradient of the state at the current chunk's end
        float* dST = dS + state;                  // dSᵀ [dvp][dkn]
        float* Q = dST + (long)dvn * dkn;         // rows [cr][dkp]
        float* K = Q + (long)cr * dkp;
        float* Kd = K + (long)cr * dkp;
        float* V = Kd + (long)cr * dkp;           // [cr][dvp]
        float* dO = V + (long)cr * dvp;
        float* KT = dO + (long)cr * dvp;          // [dkp][cn]
        float* VT = KT + (long)dkp * cn;          // [dvp][cn]
        float* A = VT + (long)dvp * cn;           // [cr][cn]
        float* dA = A + (long)cr * cn;
        float* dQ = dA + (long)cr * cn;           // [cr][dkn]
        float* dV = dQ + (long)cr * dkn;          // [cr][dvp]
        float* S0T = dV + (long)cr * dvp;         // [dvp][dkn]
        float* eb = S0T + (long)dvp * dkn;        // e^{b_t}
        float* ed = eb + cr;                      // e^{b_C − b_t}
        float* bt = ed + cr;
        float* dK = dQ;                            // reuses dQ's rows after they are written out ([cr][dkp] fits in [cr][dkn])

        long stateAt = ((long)n * heads + h) * df * dv;
        int qRow = heads * df, kRow = p.KvHeads * df, vRow = p.KvHeads * dv, oRow = heads * dv;

        void Load(int c0, int len)
        {
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
                Buffer.MemoryCopy(gr.OutputGradient + tok * oRow + (long)h * dv, dO + (long)t * dvp, dv * 4L, dv * 4L);
            }
            for (int t = 0; t < cr; t++)
            {
                bt[t] = lg * (Math.Min(t, len - 1) + 1);
                eb[t] = t < len ? MathF.Exp(bt[t]) : 0f;
            }
            float bl = bt[len - 1];
            for (int t = 0; t < cr; t++) ed[t] = t < len ? MathF.Exp(bl - bt[t]) : 0f;
        }

        // Forward sweep: S at each chunk start (S ← e^{b_C} S + (K⊙e^{b_C − b})ᵀ V).
        if (p.InitialState != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(p.InitialState + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(S + (long)i * dvp, dv));
        for (int c = 0; c < chunks; c++)
        {
            int c0 = start + c * chunk, len = Math.Min(chunk, end - c0);
            Buffer.MemoryCopy(S, checkpoints + c * state, state * 4, state * 4);
            Load(c0, len);
            ScaleRows<TIsa, TVec>(K, dkp, ed, Kd, cr);
            float e = MathF.Exp(bt[len - 1]);
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(Kd, dkp, V, dvp, S, dvp, dkp, dvp, len);
            if (lg != 0) // the decay of the old state: S was updated as S + KdᵀV; fix to e^{b_C}S_old + KdᵀV
            {
                float* old = checkpoints + c * state;
                TVec f = TIsa.Splat(e - 1f);
                for (long x = 0; x < state; x += w) TIsa.Store(TIsa.Fma(f, TIsa.Load(old + x), TIsa.Load(S + x)), S + x);
            }
        }

        if (gr.FinalStateGradient != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(gr.FinalStateGradient + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(dS + (long)i * dvp, dv));

        for (int c = chunks - 1; c >= 0; c--)
        {
            int c0 = start + c * chunk, len = Math.Min(chunk, end - c0);
            long tok0 = (long)batch * p.Tokens + c0;
            float* S0 = checkpoints + c * state;
            Load(c0, len);
            Transpose.Block(K, dkp, KT, cn, cr, dkp);
            Transpose.Block(V, dvp, VT, cn, cr, dvp);
            Transpose.Block(S0, dvp, S0T, dkn, dkp, dvp);
            Transpose.Block(dS, dvp, dST, dkn, dkp, dvp);

            // A = QKᵀ ⊙ D and dA = dO Vᵀ ⊙ D.
            TileGemm.MultiplyTransposed<TIsa, TVec>(Q, dkp, KT, cn, A, cn, cr, cn, dkp);
            TileGemm.MultiplyTransposed<TIsa, TVec>(dO, dvp, VT, cn, dA, cn, cr, cn, dvp);
            for (int t = 0; t < cr; t++)
            {
                float* ar = A + (long)t * cn, dr = dA + (long)t * cn;
                int keep = t < len ? t + 1 : 0;
                if (lg != 0)
                    for (int s = 0; s < keep; s++) { float f = MathF.Exp(bt[t] - bt[s]); ar[s] *= f; dr[s] *= f; }
                new Span<float>(ar + keep, cn - keep).Clear();
                new Span<float>(dr + keep, cn - keep).Clear();
            }

            // dQ = diag(e^b) dO S₀ᵀ + dA K.
            TileGemm.MultiplyTransposed<TIsa, TVec>(dO, dvp, S0T, dkn, dQ, dkn, cr, dkn, dvp);
            TileGemm.MultiplyAccumulate<TIsa, TVec>(dA, cn, K, dkp, dQ, dkn, lg != 0 ? eb : null, cr, dkp, len);
            for (int t = 0; t < len; t++)
                Buffer.MemoryCopy(dQ + (long)t * dkn, gr.Q + (tok0 + t) * qRow + (long)h * df, df * 4L, df * 4L);

            // dV = Aᵀ dO + diag(e^{b_C − b}) K dS.
            new Span<float>(dV, cr * dvp).Clear();
            TileGemm.MultiplyAccumulate<TIsa, TVec>(K, dkp, dS, dvp, dV, dvp, null, cr, dvp, dkp);
            ScaleRows<TIsa, TVec>(dV, dvp, ed, dV, cr);
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(A, cn, dO, dvp, dV, dvp, cr, dvp, len);
            for (int t = 0; t < len; t++)
                Buffer.MemoryCopy(dV + (long)t * dvp, gr.V + (tok0 + t) * oRow + (long)h * dv, dv * 4L, dv * 4L);

            // dK = dAᵀ Q + diag(e^{b_C − b}) V dSᵀ.
            new Span<float>(dK, cr * dkn).Clear();
            TileGemm.MultiplyTransposed<TIsa, TVec>(V, dvp, dST, dkn, dK, dkn, cr, dkn, dvp);
            ScaleRows<TIsa, TVec>(dK, dkn, ed, dK, cr);
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(dA, cn, Q, dkp, dK, dkn, cr, dkp, len);
            for (int t = 0; t < len; t++)
                Buffer.MemoryCopy(dK + (long)t * dkn, gr.K + (tok0 + t) * qRow + (long)h * df, df * 4L, df * 4L);

            // dS ← e^{b_C} dS + (diag(e^b) Q)ᵀ dO.
            float ec = MathF.Exp(bt[len - 1]);
            if (lg != 0)
            {
                TVec f = TIsa.Splat(ec);
                for (long x = 0; x < state; x += w) TIsa.Store(TIsa.Mul(f, TIsa.Load(dS + x)), dS + x);
                ScaleRows<TIsa, TVec>(Q, dkp, eb, Q, cr);
            }
            TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(Q, dkp, dO, dvp, dS, dvp, dkp, dvp, len);
        }

        if (gr.InitialState != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(dS + (long)i * dvp, dv).CopyTo(new Span<float>(gr.InitialState + stateAt + (long)i * dv, dv));
    }

    /// <summary>dst row t = f[t] · src row t, for <paramref name="rows"/> rows of <paramref name="width"/> floats.</summary>
    private static void ScaleRows<TIsa, TVec>(float* src, int width, float* f, float* dst, int rows)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        for (int t = 0; t < rows; t++)
        {
            TVec s = TIsa.Splat(f[t]);
            float* a = src + (long)t * width, b = dst + (long)t * width;
            for (int j = 0; j < width; j += TIsa.Width) TIsa.Store(TIsa.Mul(s, TIsa.Load(a + j)), b + j);
        }
    }
}
