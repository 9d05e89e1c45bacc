using System.Runtime.CompilerServices;
using Attend.Methods.Sparse;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The token-level sparse forward on the CPU: runs a <see cref="VerticalSlashPlan"/> (gathered key columns plus
/// diagonal bands) with the shared tile code (<see cref="TileGemm"/>, <see cref="OnlineSoftmax"/>), one work item per
/// (query block, query head of a KV group), heaviest blocks first.
/// </summary>
/// <remarks>
/// <para>Per (sequence, KV head) unit, K is packed once as one long Kᵀ panel [D′][Tk′] (and as rows), V as rows
/// [Tk′][D′], so a band of keys starting anywhere is a plain sub-panel (pointer + offset, row stride Tk′): diagonal
/// bands need no per-tile packing. Per query head, its vertical columns are gathered once into their own Kᵀ panel and
/// V rows, shared by every query block (a block uses the prefix of verticals at or before its last position).</para>
/// <para>For a query block, the diagonals are grouped in clusters (offsets at most 16 apart). A dense cluster gives a
/// key range [p₀ − b, p_last − a]; ranges are merged when they touch and computed in 64-key tiles whose scores get an
/// additive bias: 0 where the pair is on one of the head's diagonals, or is a vertical / block column at or before the
/// row's position, −∞ elsewhere (rows of the bias are contiguous slices of per-head arrays indexed by k − p and k, so
/// the mask costs a few vector operations per row). A sparse cluster goes to the diagonal path: a diagonal's 64 pairs
/// are 64 dot products over consecutive K rows, its values 64 consecutive V rows. When the diagonal path (or gathering
/// the block's own columns) would cost more than computing all of [0, p_last], the block runs as that one band.
/// Column tiles (verticals, then the block's own columns) skip keys in a range, which the range tiles counted, and the
/// diagonal path skips column keys, which the column tiles counted: every pair is computed once.</para>
/// </remarks>
internal sealed unsafe class ColumnSparseForward<T, TIsa, TVec> : IWorkItems
    where T : unmanaged
    where TIsa : struct, IVectorIsa<TVec>
    where TVec : unmanaged
{
    private const int Bq = VerticalSlashPlan.QueryBlockSize;
    private const int Bk = 64;
    private const int MergeGap = 16; // ranges closer than this are computed as one (fewer partial tiles)
    private const int ClusterGap = 16; // diagonals at most this many offsets apart form one cluster
    // A pair on the diagonal path costs about this many pairs of a band tile: every pair reads its own K and V rows
    // (no reuse across the block's rows). Measured 4.6–5.1x at T = 4096, D = 128 (K rows read as sequential streams).
    private const int DiagonalCost = 6;
    private const int GatherCost = 2; // a block's own column: packed per tile, then computed like a band key

    private readonly AttentionShape _sh;
    private readonly TensorView<T> _q, _k, _v, _o;
    private readonly LseView _lse;
    private readonly VerticalSlashPlan _plan;
    private readonly float _scale;
    private readonly int _dp;

    // The current unit.
    private int _seq, _kvHead, _tk, _tkPad, _nvPad;
    private float* _kt, _kRows, _vRows, _causalRev;
    private float*[] _slashRev = [], _columnBias = [], _vertKt = [], _vertV = [];
    private int[] _items = [];
    private int _stage; // 0: packing, 1: query blocks

    private ColumnSparseForward(AttentionShape sh, TensorView<T> q, TensorView<T> k, TensorView<T> v, TensorView<T> o, LseView lse,
        VerticalSlashPlan plan, float scale)
    {
        _sh = sh;
        _q = q;
        _k = k;
        _v = v;
        _o = o;
        _lse = lse;
        _plan = plan;
        _scale = scale;
        _dp = (sh.Dim + TIsa.Width - 1) / TIsa.Width * TIsa.Width;
    }

    public static void Run(AttentionShape sh, TensorView<T> q, TensorView<T> k, TensorView<T> v, TensorView<T> o, LseView lse,
        VerticalSlashPlan plan, float scale, int threads)
    {
        var work = new ColumnSparseForward<T, TIsa, TVec>(sh, q, k, v, o, lse, plan, scale);
        int g = sh.GroupSize;
        work._slashRev = new float*[g];
        work._columnBias = new float*[g];
        work._vertKt = new float*[g];
        work._vertV = new float*[g];
        for (int s = 0; s < sh.Sequences; s++)
        {
            if (sh.QLen[s] == 0) continue;
            for (int hk = 0; hk < sh.KvHeads; hk++)
            {
                work.Prepare(s, hk);
                work._stage = 0;
                ParallelWork.Run((work._tk + Bk - 1) / Bk + g, threads, work);
                work._stage = 1;
                ParallelWork.Run(work._items.Length, threads, work);
            }
        }
    }

    // Lays out the unit's buffers and its item list.
    private void Prepare(int s, int hk)
    {
        int g = _sh.GroupSize, dp = _dp;
        _seq = s;
        _kvHead = hk;
        _tk = _sh.KLen[s];
        // Tiles read 64 keys from any start ≤ Tk − 1, so the panel has 64 zero keys past the last block.
        _tkPad = (_tk + Bk - 1) / Bk * Bk + Bk;
        int nv = 0;
        for (int gi = 0; gi < g; gi++) nv = Math.Max(nv, _plan.Vertical(s, hk * g + gi).Length);
        _nvPad = (nv + Bk - 1) / Bk * Bk;
        long revLength = (long)_tkPad + _tk + 1;
        long floats = 3L * dp * _tkPad + revLength + g * (revLength + _tkPad + 2L * dp * _nvPad);
        float* p = SharedBuffer.Rent(0, floats).Pointer;
        _kt = p; p += (long)dp * _tkPad;
        _vRows = p; p += (long)dp * _tkPad;
        _kRows = p; p += (long)dp * _tkPad;
        _causalRev = p; p += revLength;
        for (int gi = 0; gi < g; gi++)
        {
            _slashRev[gi] = p; p += revLength;
            _columnBias[gi] = p; p += _tkPad;
            _vertKt[gi] = p; p += (long)dp * _nvPad;
            _vertV[gi] = p; p += (long)dp * _nvPad;
        }
        // Index t = k − p + Tk: the pair is causal when t ≤ Tk.
        new Span<float>(_causalRev, _tk + 1).Clear();
        new Span<float>(_causalRev + _tk + 1, (int)(revLength - _tk - 1)).Fill(float.NegativeInfinity);

        int tq = _sh.QLen[s], blocks = (tq + Bq - 1) / Bq;
        var items = new int[blocks * g];
        int n = 0;
        for (int qb = blocks - 1; qb >= 0; qb--)
            for (int gi = 0; gi < g; gi++) items[n++] = qb * g + gi;
        _items = items;
    }

    public void Execute(int index)
    {
        if (_stage == 1)
        {
            QueryBlock(_items[index]);
            return;
        }
        int blocks = (_tk + Bk - 1) / Bk;
        if (index < blocks) PackKeys(index);
        else PrepareHead(index - blocks);
    }

    // Kᵀ panel columns and V rows of one 64-key block (and the zero padding after the last).
    private void PackKeys(int block)
    {
        int dp = _dp, d = _sh.Dim, b = _sh.SeqBatch[_seq], k0 = _sh.KStart[_seq];
        int first = block * Bk, end = block == (_tk + Bk - 1) / Bk - 1 ? _tkPad : first + Bk;
        float* row = Scratch.Get(dp);
        for (int key = first; key < end; key++)
        {
            bool valid = key < _tk;
            LoadRow(_k, b, k0 + key, valid, row, d, dp);
            for (int x = 0; x < dp; x++) _kt[(long)x * _tkPad + key] = row[x];
            new Span<float>(row, dp).CopyTo(new Span<float>(_kRows + (long)key * dp, dp));
            LoadRow(_v, b, k0 + key, valid, _vRows + (long)key * dp, d, dp);
        }
    }

    private void LoadRow(TensorView<T> view, int b, int token, bool valid, float* row, int d, int dp)
    {
        if (valid)
        {
            ElementConvert.ToSingle(view.Row(b, token, _kvHead), row, d);
            for (int x = d; x < dp; x++) row[x] = 0;
        }
        else
        {
            new Span<float>(row, dp).Clear();
        }
    }

    // The head's diagonal and column bias arrays, and its gathered vertical panel.
    private void PrepareHead(int gi)
    {
        int h = _kvHead * _sh.GroupSize + gi, dp = _dp, d = _sh.Dim, b = _sh.SeqBatch[_seq], k0 = _sh.KStart[_seq];
        long revLength = (long)_tkPad + _tk + 1;
        float* slashRev = _slashRev[gi];
        new Span<float>(slashRev, (int)revLength).Fill(float.NegativeInfinity);
        foreach (int o in _plan.Slash(_seq, h)) slashRev[_tk - o] = 0;
        float* columnBias = _columnBias[gi];
        new Span<float>(columnBias, _tkPad).Fill(float.NegativeInfinity);
        ReadOnlySpan<int> vertical = _plan.Vertical(_seq, h);
        foreach (int k in vertical) columnBias[k] = 0;
        float* kt = _vertKt[gi], vv = _vertV[gi];
        float* row = Scratch.Get(dp);
        for (int c = 0; c < _nvPad; c++)
        {
            bool valid = c < vertical.Length;
            LoadRow(_k, b, valid ? k0 + vertical[c] : 0, valid, row, d, dp);
            for (int x = 0; x < dp; x++) kt[(long)x * _nvPad + c] = row[x];
            LoadRow(_v, b, valid ? k0 + vertical[c] : 0, valid, vv + (long)c * dp, d, dp);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void QueryBlock(int code)
    {
        AttentionShape sh = _sh;
        int g = sh.GroupSize, gi = code % g, qb = code / g;
        int s = _seq, h = _kvHead * g + gi, b = sh.SeqBatch[s];
        int tq = sh.QLen[s], tk = _tk, dp = _dp, d = sh.Dim, w = TIsa.Width;
        int i0 = qb * Bq, mr = Math.Min(Bq, tq - i0), mp = (mr + 3) & ~3;
        int pos0 = i0 + tk - tq, pLast = pos0 + mr - 1;
        ReadOnlySpan<int> slash = _plan.Slash(s, h), vertical = _plan.Vertical(s, h), ownColumns = _plan.BlockColumns(s, h, qb);

        long need = 2L * mp * dp + (long)mp * Bk + 5L * Bq + _tkPad + 2L * dp * Bk + 3L * (slash.Length + 1) + Bk;
        float* q = Scratch.Get(need);
        float* o = q + (long)mp * dp;
        float* p = o + (long)mp * dp;
        float* m = p + (long)mp * Bk;
        float* l = m + Bq;
        float* alpha = l + Bq;
        float* rowMax = alpha + Bq;
        float* tileBias = rowMax + Bq;
        float* itemBias = tileBias + Bq;
        float* gatherKt = itemBias + _tkPad;
        float* gatherV = gatherKt + (long)dp * Bk;
        float* column = gatherV + (long)dp * Bk;
        int* ranges = (int*)(column + Bk);
        int* diagonals = ranges + 2 * (slash.Length + 1);

        TVec vscale = TIsa.Splat(_scale);
        for (int r = 0; r < mp; r++)
        {
            float* qr = q + (long)r * dp;
            if (r < mr) ElementConvert.ToSingle(_q.Row(b, sh.QStart[s] + i0 + r, h), qr, d);
            else new Span<float>(qr, d).Clear();
            for (int x = d; x < dp; x++) qr[x] = 0;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(qr + x), vscale), qr + x);
        }
        new Span<float>(m, Bq).Fill(float.NegativeInfinity);
        new Span<float>(l, Bq).Clear();
        new Span<float>(o, mp * dp).Clear();

        if (pLast >= 0)
        {
            // Diagonals in clusters (offsets at most ClusterGap apart). A dense cluster becomes a key range computed in
            // 64-key tiles; a sparse one (tiles would waste more than DiagonalCost times its pairs) goes to the diagonal
            // path, one dot product per (row, diagonal). Ranges are [lo, hi] inclusive pairs, descending (offsets ascend).
            int rangeCount = 0, diagonalCount = 0;
            for (int c0 = 0; c0 < slash.Length && slash[c0] <= pLast;)
            {
                int c1 = c0;
                while (c1 + 1 < slash.Length && slash[c1 + 1] <= pLast && slash[c1 + 1] - slash[c1] <= ClusterGap) c1++;
                int a = slash[c0], bOff = slash[c1], n = c1 - c0 + 1;
                int lo = Math.Max(pos0 - bOff, 0), hi = pLast - a;
                if (DiagonalCost * n >= hi - lo + 1)
                {
                    if (rangeCount > 0 && hi >= ranges[2 * rangeCount - 2] - 1 - MergeGap)
                    {
                        ranges[2 * rangeCount - 2] = Math.Min(ranges[2 * rangeCount - 2], lo);
                    }
                    else
                    {
                        ranges[2 * rangeCount] = lo;
                        ranges[2 * rangeCount + 1] = hi;
                        rangeCount++;
                    }
                }
                else
                {
                    for (int c = c0; c <= c1; c++) diagonals[diagonalCount++] = slash[c];
                }
                c0 = c1 + 1;
            }
            // When the diagonal path, or gathering the block's own columns, would cost more than every key of the
            // block, compute [0, p_last] as one band (the bias still keeps only the plan's pairs; columns in a band are
            // skipped by the column tiles).
            int ownCount = CountAtMost(ownColumns, pLast);
            if ((long)DiagonalCost * diagonalCount + GatherCost * ownCount > pLast + 1)
            {
                ranges[0] = 0;
                ranges[1] = pLast;
                rangeCount = 1;
                diagonalCount = 0;
            }

            // The column bias the range tiles use: the head's verticals, plus this block's own columns.
            float* columnBias = _columnBias[gi];
            if (!ownColumns.IsEmpty && (rangeCount > 0 || diagonalCount > 0))
            {
                int from = 0, to = pLast + 1; // every key a range or a diagonal of this block can reach
                new Span<float>(columnBias + from, to - from).CopyTo(new Span<float>(itemBias + from, to - from));
                foreach (int k in ownColumns)
                    if (k >= from && k < to) itemBias[k] = 0;
                columnBias = itemBias;
            }

            float* slashRev = _slashRev[gi];
            for (int rg = rangeCount - 1; rg >= 0; rg--) // ascending keys
            {
                int lo = ranges[2 * rg], hi = ranges[2 * rg + 1];
                for (int a = lo; a <= hi; a += Bk)
                {
                    int kc = Math.Min(Bk, hi - a + 1);
                    TileGemm.MultiplyTransposed<TIsa, TVec>(q, dp, _kt + a, _tkPad, p, Bk, mp, Bk, dp);
                    for (int r = 0; r < mp; r++)
                    {
                        float* row = p + (long)r * Bk;
                        if (r >= mr || pos0 + r < 0) // padding rows, and rows before the first key (Tq > Tk)
                        {
                            rowMax[r] = float.NegativeInfinity;
                            new Span<float>(row, Bk).Fill(float.NegativeInfinity);
                            continue;
                        }
                        // t = k − p + Tk for column 0 of this row.
                        long t0 = (long)a - (pos0 + r) + tk;
                        TVec mx = TIsa.Splat(float.NegativeInfinity);
                        for (int c = 0; c < Bk; c += w)
                        {
                            TVec bias = TIsa.Max(TIsa.Load(slashRev + t0 + c), TIsa.Min(TIsa.Load(columnBias + a + c), TIsa.Load(_causalRev + t0 + c)));
                            TVec x = TIsa.Add(TIsa.Load(row + c), bias);
                            TIsa.Store(x, row + c);
                            mx = TIsa.Max(mx, x);
                        }
                        if (kc < Bk)
                        {
                            for (int c = kc; c < Bk; c++) row[c] = float.NegativeInfinity;
                            mx = TIsa.Load(row);
                            for (int c = w; c < Bk; c += w) mx = TIsa.Max(mx, TIsa.Load(row + c));
                        }
                        rowMax[r] = TIsa.MaxAcross(mx);
                    }
                    OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha);
                    TileGemm.MultiplyAccumulate<TIsa, TVec>(p, Bk, _vRows + (long)a * dp, dp, o, dp, alpha, mp, dp, kc);
                }
            }

            if (diagonalCount > 0)
            {
                for (int d0 = 0; d0 < diagonalCount; d0 += Bk)
                {
                    int nd = Math.Min(Bk, diagonalCount - d0);
                    DiagonalScores(q, diagonals + d0, nd, pos0, mr, mp, ranges, rangeCount, columnBias, p, column, rowMax);
                    OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha);
                    DiagonalValues(p, diagonals + d0, nd, pos0, mr, alpha, o);
                }
            }

            // Vertical columns at or before the block's last position, from the head's gathered panel.
            int nUse = CountAtMost(vertical, pLast);
            for (int c0 = 0; c0 < nUse; c0 += Bk)
            {
                int kc = Math.Min(Bk, nUse - c0);
                bool any = ColumnBias(vertical.Slice(c0, kc), ranges, rangeCount, null, tileBias);
                if (!any) continue;
                TileGemm.MultiplyTransposed<TIsa, TVec>(q, dp, _vertKt[gi] + c0, _nvPad, p, Bk, mp, Bk, dp);
                ColumnScores(p, mp, mr, pos0, vertical.Slice(c0, kc), tileBias, rowMax);
                OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha);
                TileGemm.MultiplyAccumulate<TIsa, TVec>(p, Bk, _vertV[gi] + (long)c0 * dp, dp, o, dp, alpha, mp, dp, kc);
            }

            // The block's own columns, gathered per tile.
            int nOwn = CountAtMost(ownColumns, pLast);
            for (int c0 = 0; c0 < nOwn; c0 += Bk)
            {
                int kc = Math.Min(Bk, nOwn - c0);
                ReadOnlySpan<int> keys = ownColumns.Slice(c0, kc);
                bool any = ColumnBias(keys, ranges, rangeCount, _columnBias[gi], tileBias);
                if (!any) continue;
                for (int x = 0; x < dp; x++)
                {
                    float* src = _kt + (long)x * _tkPad;
                    float* dst = gatherKt + (long)x * Bk;
                    for (int c = 0; c < kc; c++) dst[c] = src[keys[c]];
                    for (int c = kc; c < Bk; c++) dst[c] = 0;
                }
                for (int c = 0; c < kc; c++)
                    new Span<float>(_vRows + (long)keys[c] * dp, dp).CopyTo(new Span<float>(gatherV + (long)c * dp, dp));
                TileGemm.MultiplyTransposed<TIsa, TVec>(q, dp, gatherKt, Bk, p, Bk, mp, Bk, dp);
                ColumnScores(p, mp, mr, pos0, keys, tileBias, rowMax);
                OnlineSoftmax.Update<TIsa, TVec>(p, mp, Bk, rowMax, m, l, alpha);
                TileGemm.MultiplyAccumulate<TIsa, TVec>(p, Bk, gatherV, dp, o, dp, alpha, mp, dp, kc);
            }
        }

        for (int r = 0; r < mr; r++)
        {
            float sum = l[r];
            float inv = sum > 0 ? 1f / sum : 0f;
            float* orow = o + (long)r * dp;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(orow + x), TIsa.Splat(inv)), orow + x);
            ElementConvert.FromSingle(orow, _o.Row(b, sh.QStart[s] + i0 + r, h), d);
            if (!_lse.IsNull)
                *_lse.At(b, h, sh.QStart[s] + i0 + r) = sum > 0 ? m[r] + MathF.Log(sum) : float.NegativeInfinity;
        }
    }

    // Scores of up to 64 diagonals as the columns of a tile: p[r][c] = q_r · k(pos0 + r − offset_c), −∞ where the key is
    // before 0, lies in a range tile, or is a column (vertical or the block's own; the column tiles count those pairs).
    // A diagonal's keys are 64 consecutive K rows, read as one sequential stream (the rows are packed per unit).
    private void DiagonalScores(float* q, int* offsets, int count, int pos0, int mr, int mp, int* ranges, int rangeCount, float* columnBias,
        float* p, float* column, float* rowMax)
    {
        int w = TIsa.Width, dp = _dp;
        for (int c = 0; c < Bk; c++)
        {
            if (c >= count)
            {
                for (int r = 0; r < mp; r++) p[(long)r * Bk + c] = float.NegativeInfinity;
                continue;
            }
            int key0 = pos0 - offsets[c];
            for (int r = Math.Max(0, -key0); r < mr; r++)
            {
                float* qr = q + (long)r * dp;
                float* kr = _kRows + (long)(key0 + r) * dp;
                TVec a0 = TIsa.Zero, a1 = TIsa.Zero;
                int x = 0;
                for (; x + 2 * w <= dp; x += 2 * w)
                {
                    a0 = TIsa.Fma(TIsa.Load(qr + x), TIsa.Load(kr + x), a0);
                    a1 = TIsa.Fma(TIsa.Load(qr + x + w), TIsa.Load(kr + x + w), a1);
                }
                if (x < dp) a0 = TIsa.Fma(TIsa.Load(qr + x), TIsa.Load(kr + x), a0);
                column[r] = TIsa.Sum(TIsa.Add(a0, a1));
            }
            for (int r = 0; r < mp; r++)
            {
                int key = key0 + r;
                bool hidden = r >= mr || key < 0 || columnBias[key] == 0;
                p[(long)r * Bk + c] = hidden ? float.NegativeInfinity : column[r];
            }
            // Rows whose key falls in a range tile: that tile counted the pair.
            for (int rg = 0; rg < rangeCount; rg++)
            {
                int lo = ranges[2 * rg] - key0, hi = ranges[2 * rg + 1] - key0;
                for (int r = Math.Max(lo, 0); r <= Math.Min(hi, mr - 1); r++) p[(long)r * Bk + c] = float.NegativeInfinity;
            }
        }
        for (int r = 0; r < mp; r++)
        {
            float* row = p + (long)r * Bk;
            TVec mx = TIsa.Load(row);
            for (int c = w; c < Bk; c += w) mx = TIsa.Max(mx, TIsa.Load(row + c));
            rowMax[r] = TIsa.MaxAcross(mx);
        }
    }

    // o[r] = alpha[r]·o[r] + Σ_c p[r][c]·v(pos0 + r − offset_c), a row's output held in registers four vectors at a time.
    private void DiagonalValues(float* p, int* offsets, int count, int pos0, int mr, float* alpha, float* o)
    {
        int w = TIsa.Width, dp = _dp;
        for (int r = 0; r < mr; r++)
        {
            float* orow = o + (long)r * dp;
            float* prow = p + (long)r * Bk;
            float* vbase = _vRows + (long)(pos0 + r) * dp;
            TVec a = TIsa.Splat(alpha[r]);
            int x0 = 0;
            for (; x0 + 4 * w <= dp; x0 += 4 * w)
            {
                TVec o0 = TIsa.Mul(TIsa.Load(orow + x0), a), o1 = TIsa.Mul(TIsa.Load(orow + x0 + w), a);
                TVec o2 = TIsa.Mul(TIsa.Load(orow + x0 + 2 * w), a), o3 = TIsa.Mul(TIsa.Load(orow + x0 + 3 * w), a);
                for (int c = 0; c < count; c++)
                {
                    float pc = prow[c];
                    if (pc == 0) continue;
                    float* v = vbase - (long)offsets[c] * dp + x0;
                    TVec sv = TIsa.Splat(pc);
                    o0 = TIsa.Fma(sv, TIsa.Load(v), o0);
                    o1 = TIsa.Fma(sv, TIsa.Load(v + w), o1);
                    o2 = TIsa.Fma(sv, TIsa.Load(v + 2 * w), o2);
                    o3 = TIsa.Fma(sv, TIsa.Load(v + 3 * w), o3);
                }
                TIsa.Store(o0, orow + x0);
                TIsa.Store(o1, orow + x0 + w);
                TIsa.Store(o2, orow + x0 + 2 * w);
                TIsa.Store(o3, orow + x0 + 3 * w);
            }
            for (; x0 < dp; x0 += w)
            {
                TVec acc = TIsa.Mul(TIsa.Load(orow + x0), a);
                for (int c = 0; c < count; c++)
                {
                    float pc = prow[c];
                    if (pc != 0) acc = TIsa.Fma(TIsa.Splat(pc), TIsa.Load(vbase - (long)offsets[c] * dp + x0), acc);
                }
                TIsa.Store(acc, orow + x0);
            }
        }
    }

    private static int CountAtMost(ReadOnlySpan<int> sorted, int value)
    {
        int i = sorted.BinarySearch(value);
        return i >= 0 ? i + 1 : ~i;
    }

    // Bias of a column tile: −∞ for keys a merged range already covers (and, with `skip`, keys whose bias there is 0:
    // verticals, which the vertical tiles covered), and for the padding columns. Returns whether any column remains.
    private static bool ColumnBias(ReadOnlySpan<int> keys, int* ranges, int rangeCount, float* skip, float* bias)
    {
        bool any = false;
        int rg = rangeCount - 1; // ranges ascend as rg falls
        for (int c = 0; c < Bk; c++)
        {
            if (c >= keys.Length)
            {
                bias[c] = float.NegativeInfinity;
                continue;
            }
            int k = keys[c];
            while (rg >= 0 && ranges[2 * rg + 1] < k) rg--;
            bool inRange = rg >= 0 && ranges[2 * rg] <= k;
            bool skipped = inRange || (skip != null && skip[k] == 0);
            bias[c] = skipped ? float.NegativeInfinity : 0;
            any |= !skipped;
        }
        return any;
    }

    // Scores of a column tile: add the column bias, then mask keys after each row's position (only the tile's last
    // columns can be), and take row maxima.
    private static void ColumnScores(float* p, int mp, int mr, int pos0, ReadOnlySpan<int> keys, float* bias, float* rowMax)
    {
        int w = TIsa.Width;
        int firstLate = keys.Length; // first column whose key is after pos0
        while (firstLate > 0 && keys[firstLate - 1] > pos0) firstLate--;
        for (int r = 0; r < mp; r++)
        {
            float* row = p + (long)r * Bk;
            if (r >= mr)
            {
                rowMax[r] = float.NegativeInfinity;
                new Span<float>(row, Bk).Fill(float.NegativeInfinity);
                continue;
            }
            for (int c = 0; c < Bk; c += w) TIsa.Store(TIsa.Add(TIsa.Load(row + c), TIsa.Load(bias + c)), row + c);
            for (int c = firstLate; c < keys.Length; c++)
                if (keys[c] > pos0 + r) row[c] = float.NegativeInfinity;
            TVec mx = TIsa.Load(row);
            for (int c = w; c < Bk; c += w) mx = TIsa.Max(mx, TIsa.Load(row + c));
            rowMax[r] = TIsa.MaxAcross(mx);
        }
    }
}
