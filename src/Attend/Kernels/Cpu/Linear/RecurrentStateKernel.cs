using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Attend.Linear;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>
/// The recurrent step form (decode): per token and head, <c>S' = diag(α) S</c>; <c>u = β(v − S'ᵀk)</c> (delta rules) or
/// <c>v</c>; <c>S = S' + k uᵀ</c>; <c>o = Sᵀq</c>. Work and memory per token are O(Df·Dv) whatever the context length:
/// the state is the whole past.
/// </summary>
internal static unsafe class RecurrentStateKernel
{
    public static void Forward(StateProblem problem)
    {
        if (Isa512.IsSupported) Run<Isa512, Vector512<float>>(problem);
        else if (Isa256.IsSupported) Run<Isa256, Vector256<float>>(problem);
        else Run<Isa128, Vector128<float>>(problem);
    }

    private static void Run<TIsa, TVec>(StateProblem problem)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        // A decode step (one token) is too small to be worth a second thread unless there are many heads.
        int threads = (long)problem.Tokens * problem.Items < 64 ? 1 : problem.Config.Threads;
        ParallelWork.Run(problem.Items, threads, new Items<TIsa, TVec>(problem));
    }

    private sealed class Items<TIsa, TVec>(StateProblem problem) : IWorkItems
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        public void Execute(int index) => Item<TIsa, TVec>(problem, index);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Item<TIsa, TVec>(StateProblem p, int item)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        LinearConfig cfg = p.Config;
        int heads = p.Heads, h = item % heads, n = item / heads, hk = h / p.Group;
        cfg.Range(n, out int batch, out int start, out int end);
        int w = TIsa.Width, df = p.Df, dv = p.Dv, dvp = (dv + w - 1) / w * w;
        bool channel = cfg.Decay == LinearDecay.ChannelGate, delta = cfg.IsDelta;

        long stateAt = ((long)n * heads + h) * df * dv;
        // Decode is bound by moving the state (Df·Dv floats per head and token), so when the rows need no padding the
        // steps run on the caller's final-state buffer itself and the first step reads the initial state directly:
        // an additive step is then one read and one write of the state.
        bool inPlace = dv == dvp && p.FinalState != null;
        long sz = (inPlace ? 0 : (long)df * dvp) + 3L * dvp + 16;
        float* mem = Scratch.Get(sz);
        new Span<float>(mem, checked((int)sz)).Clear();
        float* S = inPlace ? p.FinalState + stateAt : mem;
        float* u = inPlace ? mem : S + (long)df * dvp, o = u + dvp, pv = o + dvp;
        // Rows of the state before the first step: the initial state (or zeros), read in place of S.
        float* first = p.InitialState != null ? p.InitialState + stateAt : null;
        if (!inPlace)
        {
            if (first != null)
                for (int i = 0; i < df; i++)
                    new ReadOnlySpan<float>(first + (long)i * dv, dv).CopyTo(new Span<float>(S + (long)i * dvp, dv));
            first = S;
        }
        else if (start == end)
        {
            // No token: the final state is the initial one.
            if (first != null) Buffer.MemoryCopy(first, S, (long)df * dv * 4, (long)df * dv * 4);
            else new Span<float>(S, df * dv).Clear();
        }

        int qRow = heads * df, kRow = p.KvHeads * df, vRow = p.KvHeads * dv, oRow = heads * dv;
        for (int t = start; t < end; t++)
        {
            long tok = (long)batch * p.Tokens + t;
            float* q = p.Q + tok * qRow + (long)h * df, k = p.K + tok * kRow + (long)hk * df;
            float* g = channel ? p.Gate + (tok * heads + h) * df : null;
            float a = channel ? 1f : MathF.Exp(p.ScalarLogGate(tok, h));

            float* v = p.V + tok * vRow + (long)hk * dv;
            new ReadOnlySpan<float>(v, dv).CopyTo(new Span<float>(u, dv));
            float* src = t == start ? first : S;
            if (!delta)
            {
                // Additive: S_i = α_i S_i + k_i v and o += q_i S_i, one pass over the rows.
                for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Zero, o + j);
                for (int i = 0; i < df; i++)
                {
                    float* sr = S + (long)i * dvp, rr = src + (long)i * dvp;
                    TVec ai = TIsa.Splat(channel ? MathF.Exp(g[i]) : a), ki = TIsa.Splat(k[i]), qi = TIsa.Splat(q[i]);
                    for (int j = 0; j < dvp; j += w)
                    {
                        TVec old = src == null ? TIsa.Zero : TIsa.Load(rr + j);
                        TVec sv = TIsa.Fma(ki, TIsa.Load(u + j), TIsa.Mul(ai, old));
                        TIsa.Store(sv, sr + j);
                        TIsa.Store(TIsa.Fma(qi, sv, TIsa.Load(o + j)), o + j);
                    }
                }
                new ReadOnlySpan<float>(o, dv).CopyTo(new Span<float>(p.Output + tok * oRow + (long)h * dv, dv));
                continue;
            }

            // Decay, and p = S'ᵀk in the same pass over the rows.
            for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Zero, pv + j);
            for (int i = 0; i < df; i++)
            {
                float* sr = S + (long)i * dvp, rr = src + (long)i * dvp;
                TVec ai = TIsa.Splat(channel ? MathF.Exp(g[i]) : a);
                TVec ki = TIsa.Splat(k[i]);
                for (int j = 0; j < dvp; j += w)
                {
                    TVec sv = src == null ? TIsa.Zero : TIsa.Mul(ai, TIsa.Load(rr + j));
                    TIsa.Store(sv, sr + j);
                    TIsa.Store(TIsa.Fma(ki, sv, TIsa.Load(pv + j)), pv + j);
                }
            }
            if (delta)
            {
                TVec beta = TIsa.Splat(p.BetaAt(tok, h));
                for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Mul(beta, TIsa.Sub(TIsa.Load(u + j), TIsa.Load(pv + j))), u + j);
            }

            // S += k uᵀ and o = Sᵀq in one pass.
            for (int j = 0; j < dvp; j += w) TIsa.Store(TIsa.Zero, o + j);
            for (int i = 0; i < df; i++)
            {
                float* sr = S + (long)i * dvp;
                TVec ki = TIsa.Splat(k[i]), qi = TIsa.Splat(q[i]);
                for (int j = 0; j < dvp; j += w)
                {
                    TVec sv = TIsa.Fma(ki, TIsa.Load(u + j), TIsa.Load(sr + j));
                    TIsa.Store(sv, sr + j);
                    TIsa.Store(TIsa.Fma(qi, sv, TIsa.Load(o + j)), o + j);
                }
            }
            new ReadOnlySpan<float>(o, dv).CopyTo(new Span<float>(p.Output + tok * oRow + (long)h * dv, dv));
        }

        if (p.FinalState != null && !inPlace)
            for (int i = 0; i < df; i++)
                new ReadOnlySpan<float>(S + (long)i * dvp, dv).CopyTo(new Span<float>(p.FinalState + stateAt + (long)i * dv, dv));
    }
}
