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

        float* q = Scratch.Get((long)mp * dp * 2 + (long)mp * Bk + 4L * Bq);
        float* o = q + (long)mp * dp;
        float* p = o + (long)mp * dp;
        float* m = p + (long)mp * Bk;
        float* l = m + Bq;
        float* alpha = l + Bq;
        float* rowMax = alpha + Bq;
        // The scale is folded into Q once per tile, so scores come out of the product already scaled.
        TVec vscale = TIsa.Splat(_call.Scale);
        for (int r = 0; r < mp; r++)
        {
            float* qr = q + (long)r * dp;
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
        while (blocks.Next(out int kb, out bool partial))
        {
            int kc = Math.Min(Bk, tk - kb * Bk);
            ScoreTile.Compute<TIsa, TVec, TMask, TScore>(q, _panels.KTransposed(u, kb), p, null, rowMax, mp, mr, kc, dp, 1f,
                partial, _mask, _score, s, h, qPos, kb * Bk);
            OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha);
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
            TileGemm.MultiplyAccumulate<TIsa, TVec>(p, Bk, vb, ldv, o, dp, alpha, mp, dp, kc);
        }

        for (int r = 0; r < mr; r++)
        {
            float sum = l[r];
            float inv = sum > 0 ? 1f / sum : 0f;
            float* orow = o + (long)r * dp;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(orow + x), TIsa.Splat(inv)), orow + x);
            ElementConvert.FromSingle(orow, _call.O.Row(b, sh.QStart[s] + i0 + r, h), d);
            if (!_call.Lse.IsNull)
                *_call.Lse.At(b, h, sh.QStart[s] + i0 + r) = sum > 0 ? m[r] + MathF.Log(sum) : float.NegativeInfinity;
        }
    }
}
