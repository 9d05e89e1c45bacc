using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Attend.Linear;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>Where <see cref="StateBackwardKernel"/> writes (per query head; the caller sums key/value groups).</summary>
internal sealed unsafe class StateGradients
{
    /// <summary>dL/d(raw output) [B, T, H, Dv'] (input of the backward).</summary>
    public required float* OutputGradient { get; init; }
    /// <summary>dL/dS_T [N, H, Df, Dv'], or null.</summary>
    public required float* FinalStateGradient { get; init; }
    /// <summary>dL/d(φ(q)·scale) [B, T, H, Df].</summary>
    public required float* Q { get; init; }
    /// <summary>dL/dφ(k) per query head [B, T, H, Df].</summary>
    public required float* K { get; init; }
    /// <summary>dL/dv' per query head [B, T, H, Dv'].</summary>
    public required float* V { get; init; }
    /// <summary>dL/d(log gate) [B, T, H] or [B, T, H, Df], or null.</summary>
    public required float* Gate { get; init; }
    /// <summary>dL/dβ [B, T, H], or null.</summary>
    public required float* Beta { get; init; }
    /// <summary>dL/dS_0 [N, H, Df, Dv'], or null.</summary>
    public required float* InitialState { get; init; }
}

/// <summary>
/// The backward of the state recurrence, chunk-checkpointed: a forward sweep keeps the state at every chunk start,
/// then chunks are visited last to first, each one's per-token states recomputed from its checkpoint and the step
/// reversed token by token (<c>dq = S_t d</c>, <c>dS += q dᵀ</c>, <c>dk = dS u</c>, <c>du = dSᵀk</c>, the delta rule's
/// <c>−β k kᵀ</c> term, <c>dlog α_i = Σ_j S'_ij dS'_ij</c>, <c>dS ← diag(α) dS</c>). Memory O(T/C + C) states per
/// head; work O(T·Df·Dv) like the recurrent form. Deviation from the papers' training kernels: those reverse the
/// chunked form with matrix products (WY/UT transforms); this is the exact same gradient by the reverse recurrence.
/// </summary>
internal static unsafe class StateBackwardKernel
{
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Item<TIsa, TVec>(StateProblem p, StateGradients gr, int item)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        LinearConfig cfg = p.Config;
        int heads = p.Heads, h = item % heads, n = item / heads, hk = h / p.Group;
        cfg.Range(n, out int batch, out int start, out int end);
        int w = TIsa.Width, df = p.Df, dv = p.Dv, dvp = (dv + w - 1) / w * w, chunk = cfg.ChunkSize;
        bool channel = cfg.Decay == LinearDecay.ChannelGate, delta = cfg.IsDelta;
        int len = end - start, chunks = (len + chunk - 1) / chunk;
        long stateSize = (long)df * dvp;

        // [checkpoints: chunks × state][chunk states: chunk × state][dS][S'][u, p, d, du, dp]
        long sz = (long)chunks * stateSize + (long)chunk * stateSize + 2 * stateSize + 5L * dvp + 16;
        float* mem = Scratch.Get(sz);
        new Span<float>(mem, checked((int)sz)).Clear();
        float* checkpoints = mem, states = checkpoints + chunks * stateSize, dS = states + chunk * stateSize, Sp = dS + stateSize;
        float* u = Sp + stateSize, pv = u + dvp, d = pv + dvp, du = d + dvp, dp = du + dvp;

        long stateAt = ((long)n * heads + h) * df * dv;
        int qRow = heads * df, kRow = p.KvHeads * df, vRow = p.KvHeads * dv, oRow = heads * dv;

        // Forward sweep: the state at each chunk start.
        float* S = states; // working state during the sweep (overwritten later)
        if (p.InitialState != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(p.InitialState + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(S + (long)i * dvp, dv));
        for (int c = 0; c < chunks; c++)
        {
            Buffer.MemoryCopy(S, checkpoints + c * stateSize, stateSize * 4, stateSize * 4);
            int t1 = Math.Min(end, start + (c + 1) * chunk);
            for (int t = start + c * chunk; t < t1; t++) Step<TIsa, TVec>(p, batch, t, h, hk, S, u, pv);
        }

        if (gr.FinalStateGradient != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(gr.FinalStateGradient + stateAt + (long)i * dv, dv).CopyTo(new Span<float>(dS + (long)i * dvp, dv));

        for (int c = chunks - 1; c >= 0; c--)
        {
            int t0 = start + c * chunk, t1 = Math.Min(end, t0 + chunk);
            // Per-token states S_{t-1} of the chunk, from its checkpoint.
            Buffer.MemoryCopy(checkpoints + c * stateSize, states, stateSize * 4, stateSize * 4);
            for (int t = t0; t < t1 - 1; t++)
            {
                float* next = states + (t - t0 + 1) * stateSize;
                Buffer.MemoryCopy(states + (t - t0) * stateSize, next, stateSize * 4, stateSize * 4);
                Step<TIsa, TVec>(p, batch, t, h, hk, next, u, pv);
            }
            for (int t = t1 - 1; t >= t0; t--)
            {
                long tok = (long)batch * p.Tokens + t;
                float* q = p.Q + tok * qRow + (long)h * df, k = p.K + tok * kRow + (long)hk * df, v = p.V + tok * vRow + (long)hk * dv;
                float* g = channel ? p.Gate + (tok * heads + h) * df : null;
                float a = channel ? 1f : MathF.Exp(p.ScalarLogGate(tok, h));
                float beta = p.BetaAt(tok, h);
                float* prev = states + (t - t0) * stateSize;

                // S' = diag(α) S_{t-1}; p = S'ᵀk; u.
                for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Zero, pv + j);
                for (int i = 0; i < df; i++)
                {
                    TVec ai = TIsa.Splat(channel ? MathF.Exp(g[i]) : a), ki = TIsa.Splat(k[i]);
                    float* sr = Sp + (long)i * dvp, pr = prev + (long)i * dvp;
                    for (int j = 0; j < dvp; j += w)
                    {
                        TVec sv = TIsa.Mul(ai, TIsa.Load(pr + j));
                        TIsa.Store(sv, sr + j);
                        TIsa.Store(TIsa.Fma(ki, sv, TIsa.Load(pv + j)), pv + j);
                    }
                }
                new Span<float>(u, dvp).Clear();
                new ReadOnlySpan<float>(v, dv).CopyTo(new Span<float>(u, dv));
                if (delta)
                {
                    TVec bv = TIsa.Splat(beta);
                    for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(bv, TIsa.Sub(TIsa.Load(u + j), TIsa.Load(pv + j))), u + j);
                }
                new Span<float>(d, dvp).Clear();
                new ReadOnlySpan<float>(gr.OutputGradient + tok * oRow + (long)h * dv, dv).CopyTo(new Span<float>(d, dv));

                // dq_i = S_t,i·d with S_t = S' + k uᵀ; dS += q dᵀ; dk_i = dS_i·u; du = Σ_i k_i dS_i.
                float ud = Dot<TIsa, TVec>(u, d, dvp);
                float* dqRow = gr.Q + tok * qRow + (long)h * df, dkRow = gr.K + tok * qRow + (long)h * df;
                for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Zero, du + j);
                for (int i = 0; i < df; i++)
                {
                    float* sr = Sp + (long)i * dvp, dsr = dS + (long)i * dvp;
                    TVec qi = TIsa.Splat(q[i]), ki = TIsa.Splat(k[i]);
                    TVec accQ = TIsa.Zero, accK = TIsa.Zero;
                    for (int j = 0; j < dvp; j += w)
                    {
                        TVec dj = TIsa.Load(d + j);
                        accQ = TIsa.Fma(TIsa.Load(sr + j), dj, accQ);
                        TVec ds = TIsa.Fma(qi, dj, TIsa.Load(dsr + j));
                        TIsa.Store(ds, dsr + j);
                        accK = TIsa.Fma(ds, TIsa.Load(u + j), accK);
                        TIsa.Store(TIsa.Fma(ki, ds, TIsa.Load(du + j)), du + j);
                    }
                    dqRow[i] = TIsa.Sum(accQ) + k[i] * ud;
                    dkRow[i] = TIsa.Sum(accK);
                }
                float* dvRow = gr.V + tok * oRow + (long)h * dv;
                if (delta)
                {
                    // u = β(v − p): dv = β du, dβ = du·(v − p), dp = −β du → dS' += k dpᵀ, dk += S' dp.
                    float dbeta = 0;
                    for (int j = 0; j < dv; j++) { dvRow[j] = beta * du[j]; dbeta += du[j] * (v[j] - pv[j]); dp[j] = -beta * du[j]; }
                    if (gr.Beta != null) gr.Beta[tok * heads + h] = dbeta;
                    for (int i = 0; i < df; i++)
                    {
                        float* sr = Sp + (long)i * dvp, dsr = dS + (long)i * dvp;
                        TVec ki = TIsa.Splat(k[i]);
                        TVec acc = TIsa.Zero;
                        for (int j = 0; j < dvp; j += w)
                        {
                            TVec dpj = TIsa.Load(dp + j);
                            TIsa.Store(TIsa.Fma(ki, dpj, TIsa.Load(dsr + j)), dsr + j);
                            acc = TIsa.Fma(TIsa.Load(sr + j), dpj, acc);
                        }
                        dkRow[i] += TIsa.Sum(acc);
                    }
                }
                else
                    new ReadOnlySpan<float>(du, dv).CopyTo(new Span<float>(dvRow, dv));

                // S' = diag(α) S_{t-1}: dlog α_i = S'_i·dS'_i; dS_{t-1} = diag(α) dS'.
                float gsum = 0;
                for (int i = 0; i < df; i++)
                {
                    float* sr = Sp + (long)i * dvp, dsr = dS + (long)i * dvp;
                    TVec ai = TIsa.Splat(channel ? MathF.Exp(g[i]) : a);
                    TVec acc = TIsa.Zero;
                    for (int j = 0; j < dvp; j += w)
                    {
                        TVec ds = TIsa.Load(dsr + j);
                        acc = TIsa.Fma(TIsa.Load(sr + j), ds, acc);
                        TIsa.Store(TIsa.Mul(ai, ds), dsr + j);
                    }
                    float gi = TIsa.Sum(acc);
                    if (channel && gr.Gate != null) gr.Gate[(tok * heads + h) * df + i] = gi;
                    gsum += gi;
                }
                if (cfg.Decay == LinearDecay.ScalarGate && gr.Gate != null) gr.Gate[tok * heads + h] = gsum;
            }
        }

        if (gr.InitialState != null)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(dS + (long)i * dvp, dv).CopyTo(new Span<float>(gr.InitialState + stateAt + (long)i * dv, dv));
    }

    /// <summary>One forward step on <paramref name="S"/> (no output): decay, delta correction, write.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<TIsa, TVec>(StateProblem p, int batch, int t, int h, int hk, float* S, float* u, float* pv)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        LinearConfig cfg = p.Config;
        int w = TIsa.Width, df = p.Df, dv = p.Dv, dvp = (dv + w - 1) / w * w, heads = p.Heads;
        bool channel = cfg.Decay == LinearDecay.ChannelGate, delta = cfg.IsDelta;
        long tok = (long)batch * p.Tokens + t;
        float* k = p.K + tok * p.KvHeads * df + (long)hk * df, v = p.V + tok * p.KvHeads * dv + (long)hk * dv;
        float* g = channel ? p.Gate + (tok * heads + h) * df : null;
        float a = channel ? 1f : MathF.Exp(p.ScalarLogGate(tok, h));
        for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Zero, pv + j);
        for (int i = 0; i < df; i++)
        {
            float* sr = S + (long)i * dvp;
            TVec ai = TIsa.Splat(channel ? MathF.Exp(g[i]) : a), ki = TIsa.Splat(k[i]);
            for (int j = 0; j < dvp; j += w)
            {
                TVec sv = TIsa.Mul(ai, TIsa.Load(sr + j));
                TIsa.Store(sv, sr + j);
                TIsa.Store(TIsa.Fma(ki, sv, TIsa.Load(pv + j)), pv + j);
            }
        }
        new Span<float>(u, dvp).Clear();
        new ReadOnlySpan<float>(v, dv).CopyTo(new Span<float>(u, dv));
        if (delta)
        {
            TVec bv = TIsa.Splat(p.BetaAt(tok, h));
            for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(bv, TIsa.Sub(TIsa.Load(u + j), TIsa.Load(pv + j))), u + j);
        }
        for (int i = 0; i < df; i++)
        {
            float* sr = S + (long)i * dvp;
            TVec ki = TIsa.Splat(k[i]);
            for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Fma(ki, TIsa.Load(u + j), TIsa.Load(sr + j)), sr + j);
        }
    }

    private static float Dot<TIsa, TVec>(float* x, float* y, int n)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        TVec acc = TIsa.Zero;
        for (int j = 0; j < n; j += TIsa.Width) acc = TIsa.Fma(TIsa.Load(x + j), TIsa.Load(y + j), acc);
        return TIsa.Sum(acc);
    }
}
