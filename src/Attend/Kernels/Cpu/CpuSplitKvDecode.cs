using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Attend.Kernels.Cpu;

/// <summary>
/// Decode: a few queries (1–16 per sequence) against a long cache. Bandwidth-bound, so the work is arranged to read
/// every key and value once: the query heads of a KV group are processed together, and the keys of each
/// (sequence, KV head) are split into ranges across the cores (split-KV, "flash-decoding"); the partial results are
/// joined with <see cref="Lse.Merge(ReadOnlySpan{float}, float, ReadOnlySpan{float}, float, Span{float}, out float)"/>.
/// </summary>
internal sealed class CpuSplitKvDecode : AttentionKernel
{
    /// <summary>Most queries per sequence this variant takes.</summary>
    public const int MaxQueries = 16;

    public override string Name => "CpuSplitKvDecode";

    public override string Backend => "cpu";

    public override string Summary => $"split-KV decode for ≤ {MaxQueries} queries per sequence, KV groups read once, LSE merge";

    public override bool IsSupported(in KernelProblem problem, out string reason)
    {
        if (problem.Pass != AttentionPass.Forward)
        {
            reason = "decode is forward only";
            return false;
        }
        if (problem.MaxQueryLength > MaxQueries)
        {
            reason = $"decode takes at most {MaxQueries} queries per sequence (got {problem.MaxQueryLength})";
            return false;
        }
        if (!Vector256.IsHardwareAccelerated)
        {
            reason = "Vector256 is not hardware-accelerated on this machine";
            return false;
        }
        reason = "";
        return true;
    }

    internal override void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
    {
        if (Vector512.IsHardwareAccelerated) SplitKvDecode<T, TMask, TScore, Isa512, Vector512<float>>.Run(call, mask, score);
        else SplitKvDecode<T, TMask, TScore, Isa256, Vector256<float>>.Run(call, mask, score);
    }
}

/// <summary>The work of <see cref="CpuSplitKvDecode"/>: items are (sequence, KV head, key range).</summary>
internal sealed unsafe class SplitKvDecode<T, TMask, TScore, TIsa, TVec> : IWorkItems
    where T : unmanaged
    where TMask : struct, IMaskMod<TMask>
    where TScore : struct, IScoreMod<TScore>
    where TIsa : struct, IVectorIsa<TVec>
    where TVec : unmanaged
{
    private const int Bk = 64;

    private readonly ForwardCall<T> _call;
    private readonly TMask _mask;
    private readonly TScore _score;
    private readonly int _dp, _rowsMax, _splits;
    private readonly float* _partial; // [unit][split][rowsMax] × (dp output, running max, ln running sum)

    private SplitKvDecode(ForwardCall<T> call, TMask mask, TScore score)
    {
        _call = call;
        _mask = mask;
        _score = score;
        AttentionShape sh = call.Shape;
        _dp = (sh.Dim + TIsa.Width - 1) / TIsa.Width * TIsa.Width;
        _rowsMax = sh.GroupSize * Math.Max(1, sh.MaxQueryLength);
        int units = sh.Sequences * sh.KvHeads;
        int maxBlocks = (sh.MaxKeyLength + Bk - 1) / Bk;
        // Enough ranges for every core to have several, but none shorter than one block.
        _splits = Math.Clamp((4 * call.Threads + units - 1) / units, 1, Math.Max(1, maxBlocks));
        _partial = SharedBuffer.Rent(0, (long)units * _splits * _rowsMax * (_dp + 2)).Pointer;
    }

    public static void Run(ForwardCall<T> call, TMask mask, TScore score)
    {
        AttentionShape sh = call.Shape;
        var work = new SplitKvDecode<T, TMask, TScore, TIsa, TVec>(call, mask, score);
        int units = sh.Sequences * sh.KvHeads;
        ParallelWork.Run(units * work._splits, call.Threads, work);
        ParallelWork.Run(units, call.Threads, new MergePass(work));
    }

    private float* PartialRow(int unit, int split, int row) => _partial + (((long)unit * _splits + split) * _rowsMax + row) * (_dp + 2);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int index)
    {
        AttentionShape sh = _call.Shape;
        int unit = index / _splits, split = index % _splits;
        int s = unit / sh.KvHeads, hk = unit % sh.KvHeads, b = sh.SeqBatch[s];
        int g = sh.GroupSize, tq = sh.QLen[s], tk = sh.KLen[s], d = sh.Dim, dp = _dp, w = TIsa.Width;
        int rows = g * tq, rp = (rows + 3) & ~3;
        if (rows == 0) return;
        int blocks = (tk + Bk - 1) / Bk;
        int kb0 = (int)((long)blocks * split / _splits), kb1 = (int)((long)blocks * (split + 1) / _splits);

        int rs = (rp + w - 1) / w * w; // row statistics padded to whole vectors
        float* q = Scratch.Get((long)rp * dp * 2 + (long)rp * Bk + 4L * rs + (long)Bk * dp);
        float* o = q + (long)rp * dp;
        float* p = o + (long)rp * dp;
        float* m = p + (long)rp * Bk;
        float* l = m + rs;
        float* alpha = l + rs;
        float* rowMax = alpha + rs;
        float* kv = rowMax + rs; // converted K or V rows of one block [64][dp] when the input is not float32
        // Rows are (head in group, query): row r is head hk·g + r / tq, query r % tq. The scale is folded into Q.
        TVec vscale = TIsa.Splat(_call.Scale);
        for (int r = 0; r < rp; r++)
        {
            float* qr = q + (long)r * dp;
            new Span<float>(qr, dp).Clear();
            if (r < rows) ElementConvert.ToSingle(_call.Q.Row(b, sh.QStart[s] + r % tq, hk * g + r / tq), qr, d);
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(qr + x), vscale), qr + x);
        }
        new Span<float>(m, rs).Fill(float.NegativeInfinity);
        new Span<float>(rowMax, rs).Fill(float.NegativeInfinity);
        new Span<float>(l, rs).Clear();
        new Span<float>(o, rp * dp).Clear();
        bool direct = typeof(T) == typeof(float) && dp == d;
        BlockMask blocksMask = _call.Blocks;
        TensorView<T> kView = _call.K;
        for (int kb = kb0; kb < kb1; kb++)
        {
            int kc = Math.Min(Bk, tk - kb * Bk);
            int token0 = sh.KStart[s] + kb * Bk;
            // Decode streams the cache from memory once; ask for the block after next while this one computes, since
            // the hardware prefetcher alone leaves a single core latency-bound (measured: about 4 GB/s without this).
            if (kb + PrefetchDistance < kb1) Prefetch(b, token0 + PrefetchDistance * Bk, hk, Math.Min(Bk, tk - (kb + PrefetchDistance) * Bk));
            // Scores: one dot product per (row, key), each key read once for the whole group.
            if (!direct) LoadBlock(_call.K, b, token0, hk, kc, kv);
            float* keys = direct ? (float*)kView.Row(b, token0, hk) : kv;
            nint keyStride = direct ? kView.StrideToken : dp;
            Scores(q, rows, keys, keyStride, kc, dp, p);
            for (int gi = 0; gi < g; gi++)
            {
                int h = hk * g + gi;
                float* block = p + (long)gi * tq * Bk;
                BlockKind kind = blocksMask.KindOf(s, h, 0, kb);
                if (kind == BlockKind.Empty)
                {
                    new Span<float>(block, tq * Bk).Fill(float.NegativeInfinity);
                    new Span<float>(rowMax + gi * tq, tq).Fill(float.NegativeInfinity);
                    continue;
                }
                ScoreTile.Finish<TIsa, TVec, TMask, TScore>(block, null, rowMax + gi * tq, tq, tq, kc, 1f, kind == BlockKind.Partial,
                    _mask, _score, s, h, tk - tq, kb * Bk);
            }
            for (int r = rows; r < rp; r++) new Span<float>(p + r * Bk, Bk).Fill(float.NegativeInfinity);
            OnlineSoftmax.Update<TIsa, TVec>(p, rp, Bk, rowMax, m, l, alpha);
            float* vb;
            nint ldv;
            if (direct)
            {
                vb = (float*)_call.V.Row(b, token0, hk);
                ldv = _call.V.StrideToken;
            }
            else
            {
                LoadBlock(_call.V, b, token0, hk, kc, kv);
                vb = kv;
                ldv = dp;
            }
            TileGemm.MultiplyAccumulate<TIsa, TVec>(p, Bk, vb, ldv, o, dp, alpha, rp, dp, kc);
        }
        for (int r = 0; r < rows; r++)
        {
            float* target = PartialRow(unit, split, r);
            float inv = l[r] > 0 ? 1f / l[r] : 0f;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(o + (long)r * dp + x), TIsa.Splat(inv)), target + x);
            // Keep the max and ln(sum) apart: their sum, the range's LSE, would round to float32 at the scores'
            // magnitude (about 1e-3 at logits of 1e4) before the merge, which compares ranges by LSE differences.
            target[dp] = l[r] > 0 ? m[r] : float.NegativeInfinity;
            target[dp + 1] = l[r] > 0 ? MathF.Log(l[r]) : float.NegativeInfinity;
        }
    }

    private const int PrefetchDistance = 2;

    private void Prefetch(int b, int token0, int head, int count)
    {
        if (!Sse.IsSupported) return;
        int bytes = _call.Shape.Dim * sizeof(T);
        for (int c = 0; c < count; c++)
        {
            byte* k = (byte*)_call.K.Row(b, token0 + c, head);
            byte* v = (byte*)_call.V.Row(b, token0 + c, head);
            for (int x = 0; x < bytes; x += 64)
            {
                Sse.Prefetch0(k + x);
                Sse.Prefetch0(v + x);
            }
        }
    }

    private void LoadBlock(TensorView<T> view, int b, int token0, int head, int count, float* target)
    {
        int d = _call.Shape.Dim;
        for (int c = 0; c < count; c++)
        {
            float* row = target + (long)c * _dp;
            ElementConvert.ToSingle(view.Row(b, token0 + c, head), row, d);
            for (int x = d; x < _dp; x++) row[x] = 0;
        }
    }

    /// <summary>
    /// p[r][c] = q_r · k_c for the group's rows and a block of keys. Four rows share each key load; each dot product
    /// keeps two independent accumulator chains so FMA latency overlaps.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores(float* q, int rows, float* keys, nint keyStride, int count, int dp, float* p)
    {
        int w = TIsa.Width;
        for (int c = 0; c < count; c++)
        {
            float* k = keys + c * keyStride;
            int r = 0;
            for (; r + 4 <= rows; r += 4)
            {
                float* q0 = q + (long)r * dp, q1 = q0 + dp, q2 = q1 + dp, q3 = q2 + dp;
                TVec a0 = TIsa.Zero, a1 = TIsa.Zero, a2 = TIsa.Zero, a3 = TIsa.Zero;
                for (int x = 0; x < dp; x += w)
                {
                    TVec kx = TIsa.Load(k + x);
                    a0 = TIsa.Fma(TIsa.Load(q0 + x), kx, a0);
                    a1 = TIsa.Fma(TIsa.Load(q1 + x), kx, a1);
                    a2 = TIsa.Fma(TIsa.Load(q2 + x), kx, a2);
                    a3 = TIsa.Fma(TIsa.Load(q3 + x), kx, a3);
                }
                p[r * Bk + c] = TIsa.Sum(a0);
                p[(r + 1) * Bk + c] = TIsa.Sum(a1);
                p[(r + 2) * Bk + c] = TIsa.Sum(a2);
                p[(r + 3) * Bk + c] = TIsa.Sum(a3);
            }
            for (; r < rows; r++)
            {
                float* qr = q + (long)r * dp;
                TVec a = TIsa.Zero;
                for (int x = 0; x < dp; x += w) a = TIsa.Fma(TIsa.Load(qr + x), TIsa.Load(k + x), a);
                p[r * Bk + c] = TIsa.Sum(a);
            }
        }
    }

    /// <summary>Joins the key ranges of one (sequence, KV head) with the LSE merge and writes output and LSE.</summary>
    private sealed class MergePass(SplitKvDecode<T, TMask, TScore, TIsa, TVec> self) : IWorkItems
    {
        public void Execute(int unit)
        {
            ForwardCall<T> call = self._call;
            AttentionShape sh = call.Shape;
            int s = unit / sh.KvHeads, hk = unit % sh.KvHeads, b = sh.SeqBatch[s];
            int g = sh.GroupSize, tq = sh.QLen[s], d = sh.Dim, dp = self._dp;
            for (int r = 0; r < g * tq; r++)
            {
                // Lse.Merge is shift-invariant, so the ranges are merged with LSEs taken relative to the largest
                // range max (small numbers, exact to float32 rounding) and the shift is added back at the end.
                float shift = float.NegativeInfinity;
                for (int split = 0; split < self._splits; split++) shift = MathF.Max(shift, self.PartialRow(unit, split, r)[dp]);
                if (float.IsNegativeInfinity(shift)) shift = 0;
                float* acc = self.PartialRow(unit, 0, r);
                var accSpan = new Span<float>(acc, dp);
                float lse = (acc[dp] - shift) + acc[dp + 1];
                for (int split = 1; split < self._splits; split++)
                {
                    float* part = self.PartialRow(unit, split, r);
                    Lse.Merge(accSpan, lse, new ReadOnlySpan<float>(part, dp), (part[dp] - shift) + part[dp + 1], accSpan, out lse);
                }
                lse += shift;
                int h = hk * g + r / tq, token = sh.QStart[s] + r % tq;
                ElementConvert.FromSingle(acc, call.O.Row(b, token, h), d);
                if (!call.Lse.IsNull) *call.Lse.At(b, h, token) = lse;
            }
        }
    }
}
