using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The forward work of <see cref="CpuFlashKernel{TIsa, TVec}"/>: one item per (unit, query block, query head of the
/// group), unit by unit and heaviest query block first within a unit, so causal rows balance across cores.
/// </summary>
internal sealed unsafe class FlashForward<T, TMask, TScore, TIsa, TVec> : IWorkItems
    where T : unmanaged
    where TMask : struct, IMaskMod<TMask>
    where TScore : struct, IScoreMod<TScore>
    where TIsa : struct, IVectorIsa<TVec>
    where TVec : unmanaged
{
    private const int Bq = CpuFlashKernel<TIsa, TVec>.QueryRows;
    private const int Bk = KvPanels<float>.BlockKeys;

    private readonly ForwardCall<T> _call;
    private readonly TMask _mask;
    private readonly TScore _score;
    private readonly KvPanels<T> _panels;
    private readonly List<(int Seq, int KvHead)> _units;
    private readonly int _unitStart;
    private readonly int[] _items;
    private readonly int _dp;
    private readonly bool _vDirect;

    private FlashForward(ForwardCall<T> call, TMask mask, TScore score, KvPanels<T> panels, List<(int, int)> units, int unitStart, int unitCount, int dp, bool vDirect)
    {
        _call = call;
        _mask = mask;
        _score = score;
        _panels = panels;
        _units = units;
        _unitStart = unitStart;
        _dp = dp;
        _vDirect = vDirect;
        AttentionShape sh = call.Shape;
        int g = sh.GroupSize;
        // Items encode (unit, query block, head in group), unit by unit: one KV head's panels at a time stay in the
        // last-level cache (all heads' panels at once did not: with 8 KV heads at T = 4096, D = 128 the interleaved order
        // measured 137 GFLOP/s against 176 unit by unit).
        // Within a unit the highest query blocks come first: under causal masks they are the heaviest, so the
        // dynamic claiming in ParallelWork ends each unit on light items and the cores stay balanced.
        var items = new List<int>();
        for (int u = 0; u < unitCount; u++)
            for (int qb = Blocks(sh.QLen[units[unitStart + u].Item1]) - 1; qb >= 0; qb--)
                for (int gi = 0; gi < g; gi++) items.Add((qb * unitCount + u) * g + gi);
        _items = items.ToArray();
    }

    private static int Blocks(int length) => (length + Bq - 1) / Bq;

    public static void Run(ForwardCall<T> call, TMask mask, TScore score)
    {
        AttentionShape sh = call.Shape;
        int dp = CpuFlashKernel<TIsa, TVec>.PaddedDim(sh.Dim);
        // V rows can be read in place when they are float32 and a whole number of vectors; otherwise they are packed.
        bool vDirect = typeof(T) == typeof(float) && dp == sh.Dim;
        var units = CpuFlashKernel<TIsa, TVec>.Units(sh);
        long perBlock = KvPanels<T>.FloatsPerBlock(dp, vDirect ? 1 : 2);
        foreach ((int start, int count) in CpuFlashKernel<TIsa, TVec>.Chunks(sh, units, perBlock))
        {
            var panels = new KvPanels<T>(sh, call.K, call.V, dp, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(units).Slice(start, count),
                kTransposed: true, vTransposed: false, kRows: false, vRows: !vDirect, slot: 0);
            ParallelWork.Run(panels.BlockCount, call.Threads, panels);
            var work = new FlashForward<T, TMask, TScore, TIsa, TVec>(call, mask, score, panels, units, start, count, dp, vDirect);
            ParallelWork.Run(work._items.Length, call.Threads, work);
        }
        // Sequences with no keys never appear in a block list: their rows are fully masked.
        WriteEmptySequences(call);
    }

    private static void WriteEmptySequences(ForwardCall<T> call)
    {
        AttentionShape sh = call.Shape;
        for (int s = 0; s < sh.Sequences; s++)
        {
            if (sh.KLen[s] > 0) continue;
            for (int i = 0; i < sh.QLen[s]; i++)
                for (int h = 0; h < sh.Heads; h++)
                {
                    T* row = call.O.Row(sh.SeqBatch[s], sh.QStart[s] + i, h);
                    new Span<T>(row, sh.Dim).Clear();
                    if (!call.Lse.IsNull) *call.Lse.At(sh.SeqBatch[s], h, sh.QStart[s] + i) = float.NegativeInfinity;
                }
        }
    }

    // Bits lo … hi − 1 set (none when hi ≤ lo).
    private static ulong RangeBits(int lo, int hi) =>
        hi <= lo ? 0UL : (hi - lo == 64 ? ulong.MaxValue : ((1UL << (hi - lo)) - 1) << lo);

    // Rows per group of a partial block's product: the work skipped is decided per group and per column range.
    private const int Group = 16;

    // Evaluates the mask on a partial block into visible[r] (bit c: row r sees key c) and, per group of Group rows,
    // the column range [lo, hi) that holds visible keys, widened to whole vectors (empty when lo ≥ hi). The block is
    // classified in Group × Group sub-tiles first (closed-form masks answer in O(1)); only partial sub-tiles are
    // evaluated pair by pair, so a causal diagonal or a window edge costs a quarter of the evaluations.
    private void PartialRanges(ulong* visible, Span<int> lo, Span<int> hi, int mr, int mp, int kc, int groups, int s, int h, int qPos, int kPos)
    {
        int w = TIsa.Width;
        for (int gr = 0; gr < groups; gr++)
        {
            int r0 = gr * Group, r1 = Math.Min(mp, r0 + Group), rv = Math.Min(mr, r1);
            for (int r = r0; r < r1; r++) visible[r] = 0;
            for (int c0 = 0; c0 < kc && r0 < rv; c0 += Group)
            {
                int c1 = Math.Min(kc, c0 + Group);
                BlockKind kind = _mask.ClassifyBlock(s, h, qPos + r0, qPos + rv, kPos + c0, kPos + c1);
                if (kind == BlockKind.Empty) continue;
                if (kind == BlockKind.Full)
                {
                    ulong span = (c1 - c0 == 64 ? ulong.MaxValue : (1UL << (c1 - c0)) - 1) << c0;
                    for (int r = r0; r < rv; r++) visible[r] |= span;
                    continue;
                }
                for (int r = r0; r < rv; r++)
                {
                    ulong bits = 0;
                    for (int c = c0; c < c1; c++)
                        if (_mask.IsVisible(s, h, qPos + r, kPos + c)) bits |= 1UL << c;
                    visible[r] |= bits;
                }
            }
            ulong any = 0;
            for (int r = r0; r < r1; r++) any |= visible[r];
            if (any == 0)
            {
                lo[gr] = 0;
                hi[gr] = 0;
                continue;
            }
            int first = System.Numerics.BitOperations.TrailingZeroCount(any), last = 63 - System.Numerics.BitOperations.LeadingZeroCount(any);
            lo[gr] = first / w * w;
            hi[gr] = Math.Min(Bk, (last / w + 1) * w);
        }
    }

    // Prefetches rows token0 … token0 + rows − 1 of head h in Q (into L1) and O (into L2, written at the item's end).
    private void PrefetchRows(int b, int token0, int h, int rows)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return;
        int bytes = _call.Shape.Dim * sizeof(T);
        for (int r = 0; r < rows; r++)
        {
            byte* qr = (byte*)_call.Q.Row(b, token0 + r, h);
            for (int x = 0; x < bytes; x += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch0(qr + x);
        }
        for (int r = 0; r < rows; r++)
        {
            byte* orow = (byte*)_call.O.Row(b, token0 + r, h);
            for (int x = 0; x < bytes; x += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch1(orow + x);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int index)
    {
        AttentionShape sh = _call.Shape;
        int g = sh.GroupSize;
        int code = _items[index];
        int gi = code % g;
        int rest = code / g;
        int u = rest % _panels.UnitCount, qb = rest / _panels.UnitCount;
        (int s, int hk) = _units[_unitStart + u];
        int h = hk * g + gi, b = sh.SeqBatch[s];
        int tq = sh.QLen[s], tk = sh.KLen[s];
        if (tk == 0) return;
        int i0 = qb * Bq, mr = Math.Min(Bq, tq - i0), mp = (mr + 3) & ~3;
        int dp = _dp, d = sh.Dim, w = TIsa.Width;
        int qPos = i0 + tk - tq;

        float* q = Scratch.Get((long)mp * dp * 2 + (long)mp * Bk + 4L * Bq + 2L * Bq);
        float* o = q + (long)mp * dp;
        float* p = o + (long)mp * dp;
        float* m = p + (long)mp * Bk;
        float* l = m + Bq;
        float* alpha = l + Bq;
        float* rowMax = alpha + Bq;
        ulong* visible = (ulong*)(rowMax + Bq); // one 64-bit row of the partial block's mask per query row
        // The tile's Q rows and output rows are touched once per item and are rarely in cache: ask for all of them at
        // once so their misses overlap (one row at a time, the item waited on each; at low density, where an item
        // visits few key blocks, those waits were about a tenth of the kernel's time).
        PrefetchRows(b, sh.QStart[s] + i0, h, mr);
        // The scale is folded into Q once per tile, so scores come out of the product already scaled.
        TVec vscale = TIsa.Splat(_call.Scale);
        for (int r = 0; r < mp; r++)
        {
            float* qr = q + (long)r * dp;
            if (_vDirect && r < mr)
            {
                // float32 rows of whole vectors: scale straight from the input (one pass instead of copy, then scale).
                float* src = (float*)_call.Q.Row(b, sh.QStart[s] + i0 + r, h);
                for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(src + x), vscale), qr + x);
                continue;
            }
            if (r < mr) ElementConvert.ToSingle(_call.Q.Row(b, sh.QStart[s] + i0 + r, h), qr, d);
            else new Span<float>(qr, d).Clear();
            for (int x = d; x < dp; x++) qr[x] = 0;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(qr + x), vscale), qr + x);
        }
        new Span<float>(m, Bq).Fill(float.NegativeInfinity);
        new Span<float>(rowMax, Bq).Fill(float.NegativeInfinity);
        new Span<float>(l, Bq).Clear();
        new Span<float>(o, mp * dp).Clear();

        // Full and partial blocks in ascending key order (a fixed order keeps results reproducible).
        var blocks = new MergedBlocks(_call.Blocks.FullKeyBlocks(s, h, qb), _call.Blocks.PartialKeyBlocks(s, h, qb));
        Span<int> colLo = stackalloc int[Bq / Group], colHi = stackalloc int[Bq / Group];
        while (blocks.Next(out int kb, out bool partial))
        {
            int kc = Math.Min(Bk, tk - kb * Bk);
            float* kt = _panels.KTransposed(u, kb);
            float* vb;
            nint ldv;
            if (_vDirect)
            {
                vb = (float*)_call.V.Row(b, sh.KStart[s] + kb * Bk, hk);
                ldv = _call.V.StrideToken;
            }
            else
            {
                vb = _panels.VRows(u, kb);
                ldv = dp;
            }
            if (!partial)
            {
                ScoreTile.Compute<TIsa, TVec, TMask, TScore>(q, kt, p, null, rowMax, mp, mr, kc, dp, 1f,
                    false, _mask, _score, s, h, qPos, kb * Bk);
                OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha);
                TileGemm.MultiplyAccumulate<TIsa, TVec>(p, Bk, vb, ldv, o, dp, alpha, mp, dp, kc);
                continue;
            }
            // A partial block: evaluate the mask once, then multiply only the row groups × column ranges that hold
            // visible pairs (the rest of the tile is −∞ and contributes exactly 0). Sliding windows and causal
            // diagonals leave triangles of such blocks empty, which otherwise cost as much as full blocks and keep
            // the kernel's time from following its density at low density.
            int groups = (mp + Group - 1) / Group;
            PartialRanges(visible, colLo, colHi, mr, mp, kc, groups, s, h, qPos, kb * Bk);
            new Span<float>(p, mp * Bk).Fill(float.NegativeInfinity);
            for (int gr = 0; gr < groups; gr++)
            {
                if (colHi[gr] <= colLo[gr]) continue;
                int r0 = gr * Group, rows = Math.Min(Group, mp - r0);
                TileGemm.MultiplyTransposed<TIsa, TVec>(q + (long)r0 * dp, dp, kt + colLo[gr], Bk, p + (long)r0 * Bk + colLo[gr], Bk,
                    rows, colHi[gr] - colLo[gr], dp);
            }
            if (_score.IsIdentity)
            {
                // Outside a group's computed range the tile is −∞ from the fill, and without a score mod nothing can
                // change that: mark those columns visible so the mask pass only writes inside the range.
                for (int gr = 0; gr < groups; gr++)
                {
                    ulong outside = ~RangeBits(colLo[gr], colHi[gr]);
                    for (int r = gr * Group; r < Math.Min(mr, (gr + 1) * Group); r++) visible[r] |= outside;
                }
            }
            ScoreTile.Finish<TIsa, TVec, TMask, TScore>(p, null, rowMax, mp, mr, kc, 1f, true, _mask, _score, s, h, qPos, kb * Bk, visible);
            // Only the computed range of each group can hold a finite score (the rest is −∞ and its exp is 0, which
            // neither the sum nor the P·V range below reads), so the exps are taken there alone.
            OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha, colLo, colHi, Group);
            for (int gr = 0; gr < groups; gr++)
            {
                int r0 = gr * Group, rows = Math.Min(Group, mp - r0);
                int c0 = colLo[gr], c1 = Math.Min(colHi[gr], kc);
                if (c1 > c0)
                {
                    TileGemm.MultiplyAccumulate<TIsa, TVec>(p + (long)r0 * Bk + c0, Bk, vb + c0 * ldv, ldv, o + (long)r0 * dp, dp, alpha + r0, rows, dp, c1 - c0);
                    continue;
                }
                // No visible key in these rows: their running maximum did not move, so alpha is 1 (or 0 on a row that
                // has seen nothing yet, whose output is still 0); rescale only if the exp rounding says otherwise.
                for (int r = r0; r < r0 + rows; r++)
                {
                    if (alpha[r] == 1f) continue;
                    float* orow = o + (long)r * dp;
                    for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(orow + x), TIsa.Splat(alpha[r])), orow + x);
                }
            }
        }

        for (int r = 0; r < mr; r++)
        {
            float sum = l[r];
            float inv = sum > 0 ? 1f / sum : 0f;
            float* orow = o + (long)r * dp;
            if (_vDirect)
            {
                // float32 rows of whole vectors: normalise straight into the output (one pass instead of two).
                float* dst = (float*)_call.O.Row(b, sh.QStart[s] + i0 + r, h);
                for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(orow + x), TIsa.Splat(inv)), dst + x);
            }
            else
            {
                for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(orow + x), TIsa.Splat(inv)), orow + x);
                ElementConvert.FromSingle(orow, _call.O.Row(b, sh.QStart[s] + i0 + r, h), d);
            }
            if (!_call.Lse.IsNull)
                *_call.Lse.At(b, h, sh.QStart[s] + i0 + r) = sum > 0 ? m[r] + MathF.Log(sum) : float.NegativeInfinity;
        }
    }
}
