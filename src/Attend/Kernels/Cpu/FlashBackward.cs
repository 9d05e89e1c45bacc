using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The backward work of <see cref="CpuFlashKernel{TIsa, TVec}"/> (FlashAttention-2, Algorithm 2): one item per
/// (unit, key block) owns that block's dK and dV, walks the query heads of its group and the query blocks that see
/// the key block (the block mask's transposed lists), recomputes P from the saved LSE, and accumulates
/// dV += Pᵀ dO, dK += dSᵀ Q, dQ += dS K. dQ rows are shared between key blocks: by default each query block's dQ is
/// added under a lock (order varies run to run); <see cref="AttentionOptions.Deterministic"/> instead recomputes dQ in
/// a second pass over query blocks, in a fixed order, at the cost of two more tile products per block.
/// </summary>
internal sealed unsafe class FlashBackward<T, TMask, TScore, TIsa, TVec>
    where T : unmanaged
    where TMask : struct, IMaskMod<TMask>
    where TScore : struct, IScoreMod<TScore>
    where TIsa : struct, IVectorIsa<TVec>
    where TVec : unmanaged
{
    private const int Bq = CpuFlashKernel<TIsa, TVec>.QueryRows;
    private const int Bk = KvPanels<float>.BlockKeys;

    private readonly BackwardCall<T> _call;
    private readonly TMask _mask;
    private readonly TScore _score;
    private readonly int _dp;
    private readonly float* _delta;     // [B][H][Tq]: Σ dO·O per row
    private readonly float* _dqAcc;     // [B][Tq][H][dp] float32 dQ (lock mode only)
    private readonly int[] _locks;      // one spin lock per (sequence, head, query block)
    private readonly int[] _lockBase;   // first lock of each sequence
    private KvPanels<T> _panels = null!;
    private int _unitStart;
    private List<(int Seq, int KvHead)> _units = null!;

    private FlashBackward(BackwardCall<T> call, TMask mask, TScore score, int dp)
    {
        _call = call;
        _mask = mask;
        _score = score;
        _dp = dp;
        AttentionShape sh = call.Shape;
        long rows = (long)sh.Batch * sh.Heads * sh.QueryTokens;
        float* shared = SharedBuffer.Rent(1, rows + (call.Deterministic ? 0 : (long)sh.Batch * sh.QueryTokens * sh.Heads * dp)).Pointer;
        _delta = shared;
        _dqAcc = shared + rows;
        _lockBase = new int[sh.Sequences + 1];
        for (int s = 0; s < sh.Sequences; s++) _lockBase[s + 1] = _lockBase[s] + sh.Heads * ((sh.QLen[s] + Bq - 1) / Bq);
        _locks = call.Deterministic ? [] : new int[_lockBase[^1]];
    }

    public static void Run(BackwardCall<T> call, TMask mask, TScore score)
    {
        AttentionShape sh = call.Shape;
        int dp = CpuFlashKernel<TIsa, TVec>.PaddedDim(sh.Dim);
        var self = new FlashBackward<T, TMask, TScore, TIsa, TVec>(call, mask, score, dp);
        ParallelWork.Run(sh.Sequences * sh.Heads, call.Threads, new DeltaPass(self));
        var units = CpuFlashKernel<TIsa, TVec>.Units(sh);
        self._units = units;
        foreach ((int start, int count) in CpuFlashKernel<TIsa, TVec>.Chunks(sh, units, KvPanels<T>.FloatsPerBlock(dp, 4)))
        {
            self._panels = new KvPanels<T>(sh, call.K, call.V, dp, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(units).Slice(start, count),
                kTransposed: true, vTransposed: true, kRows: true, vRows: false, slot: 0);
            self._unitStart = start;
            ParallelWork.Run(self._panels.BlockCount, call.Threads, self._panels);
            ParallelWork.Run(self._panels.BlockCount, call.Threads, new KeyBlockPass(self));
            if (call.Deterministic)
                ParallelWork.Run(count * sh.GroupSize * MaxQueryBlocks(sh), call.Threads, new QueryBlockPass(self, count));
        }
        if (!call.Deterministic) ParallelWork.Run(sh.Sequences * sh.Heads, call.Threads, new DqStore(self));
    }

    private static int MaxQueryBlocks(AttentionShape sh) => (sh.MaxQueryLength + Bq - 1) / Bq;

    private float* Delta(int b, int h, int token) => _delta + ((long)b * _call.Shape.Heads + h) * _call.Shape.QueryTokens + token;

    private float* DqAcc(int b, int token, int h) => _dqAcc + (((long)b * _call.Shape.QueryTokens + token) * _call.Shape.Heads + h) * _dp;

    /// <summary>Loads rows [i0, i0 + mr) of a [B, T, H, D] tensor into a zero-padded [mp][dp] float tile.</summary>
    private void LoadTile(TensorView<T> view, int b, int token0, int h, int mr, int mp, float* tile)
    {
        int d = _call.Shape.Dim;
        for (int r = 0; r < mp; r++)
        {
            float* row = tile + (long)r * _dp;
            if (r < mr) ElementConvert.ToSingle(view.Row(b, token0 + r, h), row, d);
            else new Span<float>(row, d).Clear();
            for (int x = d; x < _dp; x++) row[x] = 0;
        }
    }

    /// <summary>
    /// For one (query block, key block) pair: P (from the saved LSE) and dS = P ⊙ (dP − Δ) ⊙ mod′ · scale, both [mp][64].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Gradients(int s, int h, int b, int i0, int mr, int mp, int kb, int kc, bool partial, int u,
        float* q, float* dO, float* p, float* ds, float* deriv)
    {
        AttentionShape sh = _call.Shape;
        int tq = sh.QLen[s], tk = sh.KLen[s];
        int w = TIsa.Width;
        ScoreTile.Compute<TIsa, TVec, TMask, TScore>(q, _panels.KTransposed(u, kb), p, _score.IsIdentity ? null : deriv, null, mp, mr, kc, _dp,
            _call.Scale, partial, _mask, _score, s, h, i0 + tk - tq, kb * Bk);
        TileGemm.MultiplyTransposed<TIsa, TVec>(dO, _dp, _panels.VTransposed(u, kb), Bk, ds, Bk, mp, Bk, _dp);
        for (int r = 0; r < mp; r++)
        {
            float* prow = p + r * Bk, dsrow = ds + r * Bk;
            float lse = r < mr ? *_call.Lse.At(b, h, sh.QStart[s] + i0 + r) : float.NegativeInfinity;
            if (float.IsNegativeInfinity(lse))
            {
                new Span<float>(prow, Bk).Clear();
                new Span<float>(dsrow, Bk).Clear();
                continue;
            }
            TVec vl = TIsa.Splat(lse);
            TVec vd = TIsa.Splat(*Delta(b, h, sh.QStart[s] + i0 + r));
            TVec vscale = TIsa.Splat(_call.Scale);
            for (int c = 0; c < Bk; c += w)
            {
                TVec pv = TIsa.Exp(TIsa.Sub(TIsa.Load(prow + c), vl));
                TIsa.Store(pv, prow + c);
                TVec dsv = TIsa.Mul(TIsa.Mul(pv, TIsa.Sub(TIsa.Load(dsrow + c), vd)), vscale);
                TIsa.Store(dsv, dsrow + c);
            }
            if (!_score.IsIdentity)
                for (int c = 0; c < kc; c++) dsrow[c] *= deriv[r * Bk + c];
        }
    }

    /// <summary>Δ_i = Σ_d dO_i·O_i for every query row (FlashAttention-2's D).</summary>
    private sealed class DeltaPass(FlashBackward<T, TMask, TScore, TIsa, TVec> self) : IWorkItems
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Execute(int index)
        {
            AttentionShape sh = self._call.Shape;
            int s = index / sh.Heads, h = index % sh.Heads, b = sh.SeqBatch[s], d = sh.Dim;
            float* tmp = Scratch.Get(2L * d);
            for (int i = 0; i < sh.QLen[s]; i++)
            {
                int token = sh.QStart[s] + i;
                ElementConvert.ToSingle(self._call.DO.Row(b, token, h), tmp, d);
                ElementConvert.ToSingle(self._call.O.Row(b, token, h), tmp + d, d);
                float acc = 0;
                for (int x = 0; x < d; x++) acc += tmp[x] * tmp[d + x];
                *self.Delta(b, h, token) = acc;
                if (!self._call.Deterministic) new Span<float>(self.DqAcc(b, token, h), self._dp).Clear();
            }
        }
    }

    /// <summary>One key block: dK and dV for its rows, and (lock mode) dQ contributions.</summary>
    private sealed class KeyBlockPass(FlashBackward<T, TMask, TScore, TIsa, TVec> self) : IWorkItems
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Execute(int index)
        {
            BackwardCall<T> call = self._call;
            AttentionShape sh = call.Shape;
            KvPanels<T> panels = self._panels;
            // Find the unit of this block.
            int u = 0, kb = index;
            while (kb >= KvPanels<T>.BlocksOf(sh, self._units[self._unitStart + u].Seq))
            {
                kb -= KvPanels<T>.BlocksOf(sh, self._units[self._unitStart + u].Seq);
                u++;
            }
            (int s, int hk) = self._units[self._unitStart + u];
            int b = sh.SeqBatch[s], g = sh.GroupSize, dp = self._dp, d = sh.Dim;
            int kc = Math.Min(Bk, sh.KLen[s] - kb * Bk);
            long tile = (long)Bq * dp;
            float* q = Scratch.Get(4 * tile + 4L * Bq * Bk + 2L * Bk * dp);
            float* dO = q + tile;
            float* p = dO + tile;
            float* ds = p + Bq * Bk;
            float* deriv = ds + Bq * Bk;
            float* dk = deriv + Bq * Bk;
            float* dv = dk + (long)Bk * dp;
            float* dqTile = dv + (long)Bk * dp;  // [mp][dp] dQ contribution (lock mode)
            new Span<float>(dk, 2 * Bk * dp).Clear();
            float* kRows = panels.KRows(u, kb);
            for (int h = hk * g; h < (hk + 1) * g; h++)
            {
                var blocks = new MergedBlocks(call.Blocks.FullQueryBlocks(s, h, kb), call.Blocks.PartialQueryBlocks(s, h, kb));
                while (blocks.Next(out int qb, out bool partial))
                {
                    int i0 = qb * Bq, mr = Math.Min(Bq, sh.QLen[s] - i0), mp = (mr + 3) & ~3;
                    self.LoadTile(call.Q, b, sh.QStart[s] + i0, h, mr, mp, q);
                    self.LoadTile(call.DO, b, sh.QStart[s] + i0, h, mr, mp, dO);
                    self.Gradients(s, h, b, i0, mr, mp, kb, kc, partial, u, q, dO, p, ds, deriv);
                    // dV += Pᵀ dO and dK += dSᵀ Q (inner dimension: the mp query rows).
                    TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(p, Bk, dO, dp, dv, dp, Bk, dp, mp);
                    TileGemm.MultiplyTransposedAccumulate<TIsa, TVec>(ds, Bk, q, dp, dk, dp, Bk, dp, mp);
                    if (!call.Deterministic)
                    {
                        ref int gate = ref self._locks[self._lockBase[s] + h * ((sh.QLen[s] + Bq - 1) / Bq) + qb];
                        float* acc = self.DqAcc(b, sh.QStart[s] + i0, h);
                        int ldq = sh.Heads * dp;
                        if (mr == mp)
                        {
                            // Whole row groups: add dS·K straight into the shared accumulator while holding the lock.
                            var spin = new SpinWait();
                            while (Interlocked.CompareExchange(ref gate, 1, 0) != 0) spin.SpinOnce();
                            TileGemm.MultiplyAccumulate<TIsa, TVec>(ds, Bk, kRows, dp, acc, ldq, null, mp, dp, kc);
                        }
                        else
                        {
                            // The last, ragged block: compute privately, then add only the real rows (padding rows of
                            // the shared buffer belong to other queries).
                            new Span<float>(dqTile, mp * dp).Clear();
                            TileGemm.MultiplyAccumulate<TIsa, TVec>(ds, Bk, kRows, dp, dqTile, dp, null, mp, dp, kc);
                            var spin = new SpinWait();
                            while (Interlocked.CompareExchange(ref gate, 1, 0) != 0) spin.SpinOnce();
                            for (int r = 0; r < mr; r++)
                            {
                                float* row = acc + (long)r * ldq;
                                float* add = dqTile + (long)r * dp;
                                for (int x = 0; x < dp; x += TIsa.Width) TIsa.Store(TIsa.Add(TIsa.Load(row + x), TIsa.Load(add + x)), row + x);
                            }
                        }
                        Volatile.Write(ref gate, 0);
                    }
                }
            }
            for (int c = 0; c < kc; c++)
            {
                int token = sh.KStart[s] + kb * Bk + c;
                ElementConvert.FromSingle(dk + (long)c * dp, call.DK.Row(b, token, hk), d);
                ElementConvert.FromSingle(dv + (long)c * dp, call.DV.Row(b, token, hk), d);
            }
        }
    }

    /// <summary>Deterministic dQ: one item per (unit, query head, query block), key blocks in ascending order.</summary>
    private sealed class QueryBlockPass(FlashBackward<T, TMask, TScore, TIsa, TVec> self, int unitCount) : IWorkItems
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Execute(int index)
        {
            BackwardCall<T> call = self._call;
            AttentionShape sh = call.Shape;
            int g = sh.GroupSize;
            int gi = index % g, rest = index / g;
            // Highest query blocks first: under causal masks they have the most key blocks.
            int u = rest % unitCount, qb = MaxQueryBlocks(sh) - 1 - rest / unitCount;
            (int s, int hk) = self._units[self._unitStart + u];
            int h = hk * g + gi, b = sh.SeqBatch[s], dp = self._dp, d = sh.Dim;
            if (qb * Bq >= sh.QLen[s]) return;
            int i0 = qb * Bq, mr = Math.Min(Bq, sh.QLen[s] - i0), mp = (mr + 3) & ~3;
            long tile = (long)Bq * dp;
            float* q = Scratch.Get(3 * tile + 3L * Bq * Bk);
            float* dO = q + tile;
            float* dq = dO + tile;
            float* p = dq + tile;
            float* ds = p + Bq * Bk;
            float* deriv = ds + Bq * Bk;
            self.LoadTile(call.Q, b, sh.QStart[s] + i0, h, mr, mp, q);
            self.LoadTile(call.DO, b, sh.QStart[s] + i0, h, mr, mp, dO);
            new Span<float>(dq, mp * dp).Clear();
            var blocks = new MergedBlocks(call.Blocks.FullKeyBlocks(s, h, qb), call.Blocks.PartialKeyBlocks(s, h, qb));
            while (blocks.Next(out int kb, out bool partial))
            {
                int kc = Math.Min(Bk, sh.KLen[s] - kb * Bk);
                self.Gradients(s, h, b, i0, mr, mp, kb, kc, partial, u, q, dO, p, ds, deriv);
                TileGemm.MultiplyAccumulate<TIsa, TVec>(ds, Bk, self._panels.KRows(u, kb), dp, dq, dp, null, mp, dp, kc);
            }
            for (int r = 0; r < mr; r++)
                ElementConvert.FromSingle(dq + (long)r * dp, call.DQ.Row(b, sh.QStart[s] + i0 + r, h), d);
        }
    }

    /// <summary>Lock mode: converts the float32 dQ accumulators to the output type.</summary>
    private sealed class DqStore(FlashBackward<T, TMask, TScore, TIsa, TVec> self) : IWorkItems
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Execute(int index)
        {
            AttentionShape sh = self._call.Shape;
            int s = index / sh.Heads, h = index % sh.Heads, b = sh.SeqBatch[s];
            for (int i = 0; i < sh.QLen[s]; i++)
            {
                int token = sh.QStart[s] + i;
                ElementConvert.FromSingle(self.DqAcc(b, token, h), self._call.DQ.Row(b, token, h), sh.Dim);
            }
        }
    }
}
