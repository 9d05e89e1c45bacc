using System.Runtime.CompilerServices;
using Attend.Methods.Sparse;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The token-level sparse forward on the CPU: runs a <see cref="VerticalSlashPlan"/> (gathered key columns plus
/// diagonal bands) with the shared tile code (<see cref="TileGemm"/>, <see cref="OnlineSoftmax"/>), one work item per
/// (strip of 8 query blocks, query head of a KV group), heaviest strips first.
/// </summary>
/// <remarks>
/// <para>Per (sequence, KV head) unit, K is packed once as one long Kᵀ panel [D′][Tk′], V as Vᵀ panel and as rows
/// [Tk′][D′], so a band of keys starting anywhere is a plain sub-panel (pointer + offset, row stride Tk′): diagonal
/// bands need no per-tile packing. Per query head, its vertical columns are gathered once into their own Kᵀ panel and
/// V rows, shared by every query block (a block uses the prefix of verticals at or before its last position).</para>
/// <para>For a query block, the diagonals are grouped in clusters (offsets at most 16 apart). A dense cluster gives a
/// key range [p₀ − b, p_last − a]; ranges are merged when they touch and computed in 64-key tiles whose scores get an
/// additive bias: 0 where the pair is on one of the head's diagonals, or is a vertical / block column at or before the
/// row's position, −∞ elsewhere (rows of the bias are contiguous slices of per-head arrays indexed by k − p and k, so
/// the mask costs a few vector operations per row). A sparse cluster goes to the diagonal path, run transposed: a
/// diagonal's 64 pairs are 64 vector lanes over consecutive Kᵀ / Vᵀ panel columns, and the strip's blocks take the
/// diagonals chunk by chunk in turn, so the panel window a chunk reaches is reused by the next block. When the diagonal path (or gathering
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
    // A pair on the diagonal path costs about this many pairs of a band tile. The path runs transposed (a diagonal's
    // keys are consecutive Kᵀ/Vᵀ panel columns, four diagonals register-blocked, as many FMAs per pair as a tile), but
    // the panels' keys are streamed from memory (reused across a strip of query blocks, see Strip): measured ≈2.5× a
    // dense pair at T = 16384, D = 128. It had read one K and one V row per pair and cost 4.6–5.1× at T = 4096 (the
    // constant was 6).
    private const int DiagonalCost = 3;
    private const int GatherCost = 2; // a block's own column: packed per tile, then computed like a band key

    private readonly AttentionShape _sh;
    private readonly TensorView<T> _q, _k, _v, _o;
    private readonly LseView _lse;
    private readonly VerticalSlashPlan _plan;
    private readonly float _scale;
    private readonly int _dp;

    // The current unit.
    private int _seq, _kvHead, _tk, _tkPad, _nvPad;
    private long _panelStride; // row stride of the Kᵀ and Vᵀ panels: Bk zero keys before key 0, then _tkPad keys
    private float* _kt, _vt, _vRows, _causalRev;
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
        // Kᵀ and Vᵀ panels start Bk zero keys early: a diagonal's keys for a block's first rows may lie before key 0.
        _panelStride = _tkPad + Bk;
        long floats = 2L * dp * _panelStride + (long)dp * _tkPad + revLength + g * (revLength + _tkPad + 2L * dp * _nvPad);
        float* p = SharedBuffer.Rent(0, floats).Pointer;
        _kt = p + Bk; p += (long)dp * _panelStride;
        _vt = p + Bk; p += (long)dp * _panelStride;
        _vRows = p; p += (long)dp * _tkPad;
        for (int x = 0; x < dp; x++)
        {
            new Span<float>(_kt + x * _panelStride - Bk, Bk).Clear();
            new Span<float>(_vt + x * _panelStride - Bk, Bk).Clear();
        }
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
        // One item per (strip of Strip query blocks, query head), the last strips (most keys) first.
        int strips = (blocks + Strip - 1) / Strip;
        var items = new int[strips * g];
        int n = 0;
        for (int st = strips - 1; st >= 0; st--)
            for (int gi = 0; gi < g; gi++) items[n++] = st * g + gi;
        _items = items;
    }

    public void Execute(int index)
    {
        if (_stage == 1)
        {
            QueryStrip(_items[index]);
            return;
        }
        int blocks = (_tk + Bk - 1) / Bk;
        if (index < blocks) PackKeys(index);
        else PrepareHead(index - blocks);
    }

    // Kᵀ and Vᵀ panel columns and V rows of one 64-key block (and the zero padding after the last).
    private void PackKeys(int block)
    {
        int dp = _dp, d = _sh.Dim, b = _sh.SeqBatch[_seq], k0 = _sh.KStart[_seq];
        int first = block * Bk, end = block == (_tk + Bk - 1) / Bk - 1 ? _tkPad : first + Bk;
        float* row = Scratch.Get(dp);
        for (int key = first; key < end; key++)
        {
            bool valid = key < _tk;
            LoadRow(_k, b, k0 + key, valid, row, d, dp);
            for (int x = 0; x < dp; x++) _kt[x * _panelStride + key] = row[x];
            float* vr = _vRows + (long)key * dp;
            LoadRow(_v, b, k0 + key, valid, vr, d, dp);
            for (int x = 0; x < dp; x++) _vt[x * _panelStride + key] = vr[x];
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
        if (_plan.Coverage == SlashCoverage.Blocks)
            new Span<float>(slashRev, _tk + 1).Clear(); // range tiles compute every causal pair of a covering range
        else
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

    // Query blocks per work item. Their diagonal paths run interleaved, chunk by chunk: consecutive blocks meet almost
    // the same diagonals, whose keys for the next block are the previous block's shifted by 64, so a chunk's window of
    // the Kᵀ/Vᵀ panels is read from memory once per strip rather than once per block. MInference's 878 scattered
    // diagonals at T = 16384 (random inputs, CPU time): 4.3–4.5× d·exact with one block per item, 2.3–3.3× with strips of
    // 4–16 blocks and chunks of 16–64 diagonals (8 and 32: 2.5–2.7×), on a loaded machine.
    private const int Strip = 8;

    // Diagonals per interleaved chunk: their key window (≈ chunk × the mean offset gap + 64 keys of Kᵀ and Vᵀ) should
    // stay in L2 while the strip's blocks pass over it.
    private const int DiagonalChunk = 32;

    // What a block leaves for the strip's diagonal pass and its final write.
    private struct BlockState
    {
        public float* Q, O, M, L, Alpha, RowMax, QT, OT, PT, ColumnBias;
        public int* Ranges, Diagonals;
        public int RangeCount, DiagonalCount, Pos0, Mr, Mp, Qb;
    }

    // Floats of one block's scratch (rounded to whole 64-byte lines).
    private long BlockScratch(int slashCount) =>
        (2L * Bq * _dp + (long)Bq * Bk + 5L * Bq + _tkPad + 2L * _dp * Bk + 3L * (slashCount + 1) + Bk + 2L * _dp * Bq + (long)Bk * Bq + 32 + 15) / 16 * 16;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void QueryStrip(int code)
    {
        int g = _sh.GroupSize, gi = code % g, st = code / g, h = _kvHead * g + gi;
        int blocks = (_sh.QLen[_seq] + Bq - 1) / Bq, qb0 = st * Strip, count = Math.Min(Strip, blocks - qb0);
        long per = BlockScratch(_plan.Slash(_seq, h).Length);
        float* buffer = Scratch.Get(per * count);
        Span<BlockState> states = stackalloc BlockState[Strip];
        int maxDiagonals = 0;
        for (int i = 0; i < count; i++)
        {
            QueryBlock(qb0 + i, gi, buffer + i * per, ref states[i]);
            maxDiagonals = Math.Max(maxDiagonals, states[i].DiagonalCount);
        }
        if (maxDiagonals > 0)
        {
            // The diagonal path runs transposed: vector lanes run over a block's rows, so a diagonal's 64 keys
            // (consecutive columns of the Kᵀ and Vᵀ panels) are whole vector loads, and its scores, exps and value
            // updates are whole vectors too, register-blocked like a tile product.
            for (int i = 0; i < count; i++)
            {
                ref BlockState b = ref states[i];
                if (b.DiagonalCount == 0) continue;
                Transpose(b.Q, b.Mp, _dp, b.QT);
                Transpose(b.O, b.Mp, _dp, b.OT);
            }
            for (int d0 = 0; d0 < maxDiagonals; d0 += DiagonalChunk)
                for (int i = 0; i < count; i++)
                {
                    ref BlockState b = ref states[i];
                    if (d0 >= b.DiagonalCount) continue;
                    int nd = Math.Min(DiagonalChunk, b.DiagonalCount - d0);
                    DiagonalScores(b.QT, b.Diagonals + d0, nd, b.Pos0, b.Mr, b.Ranges, b.RangeCount, b.ColumnBias, b.PT, b.RowMax);
                    OnlineSoftmax.UpdateColumns<TIsa, TVec>(b.PT, nd, Bq, b.RowMax, b.M, b.L, b.Alpha);
                    DiagonalValues(b.PT, b.Diagonals + d0, nd, b.Pos0, b.Alpha, b.OT);
                }
            for (int i = 0; i < count; i++)
            {
                ref BlockState b = ref states[i];
                if (b.DiagonalCount == 0) continue;
                for (int r = 0; r < b.Mp; r++)
                    for (int x = 0; x < _dp; x++) b.O[(long)r * _dp + x] = b.OT[(long)x * Bq + r];
            }
        }
        for (int i = 0; i < count; i++) FinishBlock(gi, ref states[i]);
    }

    // One query block's ranges, vertical columns and own columns; its diagonals are left in `state` for the strip.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void QueryBlock(int qb, int gi, float* q, ref BlockState state)
    {
        AttentionShape sh = _sh;
        int g = sh.GroupSize;
        int s = _seq, h = _kvHead * g + gi, b = sh.SeqBatch[s];
        int tq = sh.QLen[s], tk = _tk, dp = _dp, d = sh.Dim, w = TIsa.Width;
        int i0 = qb * Bq, mr = Math.Min(Bq, tq - i0), mp = (mr + 3) & ~3;
        int pos0 = i0 + tk - tq, pLast = pos0 + mr - 1;
        ReadOnlySpan<int> slash = _plan.Slash(s, h), vertical = _plan.Vertical(s, h), ownColumns = _plan.BlockColumns(s, h, qb);
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
        float* qT = (float*)(diagonals + slash.Length + 1); // the diagonal path's transposed Q, O and scores
        qT += (16 - ((nint)qT & 63) / 4) % 16; // 64-byte aligned (the slack at the end of BlockScratch)
        float* oT = qT + (long)dp * Bq;
        float* pT = oT + (long)dp * Bq;

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
        state = new BlockState
        {
            Q = q, O = o, M = m, L = l, Alpha = alpha, RowMax = rowMax, QT = qT, OT = oT, PT = pT, ColumnBias = _columnBias[gi],
            Ranges = ranges, Diagonals = diagonals, Pos0 = pos0, Mr = mr, Mp = mp, Qb = qb,
        };

        if (pLast >= 0)
        {
            // Diagonals in clusters (offsets at most ClusterGap apart). A dense cluster becomes a key range computed in
            // 64-key tiles; a sparse one (tiles would waste more than DiagonalCost times its pairs) goes to the diagonal
            // path, one dot product per (row, diagonal). Ranges are [lo, hi] inclusive pairs, descending (offsets ascend).
            int rangeCount = 0, diagonalCount = 0;
            if (_plan.Coverage == SlashCoverage.Blocks)
            {
                // MInference's covering ranges: every causal key of each range, as range tiles (whose slash bias is the
                // causal bias, see PrepareHead); no diagonal path. The kernel's range list is descending, ends inclusive.
                rangeCount = _plan.SlashRanges(s, h, qb, new Span<int>(ranges, 2 * slash.Length));
                for (int a = 0, z = rangeCount - 1; a < z; a++, z--)
                {
                    (ranges[2 * a], ranges[2 * z]) = (ranges[2 * z], ranges[2 * a]);
                    (ranges[2 * a + 1], ranges[2 * z + 1]) = (ranges[2 * z + 1], ranges[2 * a + 1]);
                }
                for (int r = 0; r < rangeCount; r++) ranges[2 * r + 1]--;
            }
            else
            {
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
                    TileGemm.MultiplyTransposed<TIsa, TVec>(q, dp, _kt + a, (int)_panelStride, p, Bk, mp, Bk, dp);
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

            state.RangeCount = rangeCount;
            state.DiagonalCount = diagonalCount;
            state.ColumnBias = columnBias;

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
                    float* src = _kt + x * _panelStride;
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

    }

    // Normalises one block's output rows and writes them with their LSE.
    private void FinishBlock(int gi, ref BlockState state)
    {
        AttentionShape sh = _sh;
        int s = _seq, h = _kvHead * sh.GroupSize + gi, b = sh.SeqBatch[s];
        int dp = _dp, d = sh.Dim, w = TIsa.Width, mr = state.Mr, i0 = state.Qb * Bq;
        float* o = state.O, l = state.L, m = state.M;
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

    // qT[x][r] = q[r][x] for the block's mp rows; rows mp … Bq − 1 are 0.
    private static void Transpose(float* q, int mp, int dp, float* qT)
    {
        for (int x = 0; x < dp; x++)
        {
            float* dst = qT + (long)x * Bq;
            for (int r = 0; r < mp; r++) dst[r] = q[(long)r * dp + x];
            for (int r = mp; r < Bq; r++) dst[r] = 0;
        }
    }

    // Scores of up to 64 diagonals, transposed: sT[c][r] = q_r · k(pos0 + r − offset_c), −∞ where the row is padding,
    // the key is before 0, lies in a range tile, or is a column (vertical or the block's own; the column tiles count
    // those pairs); rowMax[r] = the row's largest score. Diagonal c's keys for rows r … r + 4W − 1 are consecutive
    // columns of the Kᵀ panel, so four diagonals × 4 row vectors are accumulated over the head dim at once.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void DiagonalScores(float* qT, int* offsets, int count, int pos0, int mr, int* ranges, int rangeCount, float* columnBias,
        float* sT, float* rowMax)
    {
        int w = TIsa.Width, dp = _dp;
        long ps = _panelStride;
        for (int rc = 0; rc < Bq; rc += 4 * w)
        {
            int c = 0;
            for (; c + 4 <= count; c += 4)
            {
                float* k0 = _kt + (pos0 - offsets[c] + rc), k1 = _kt + (pos0 - offsets[c + 1] + rc);
                float* k2 = _kt + (pos0 - offsets[c + 2] + rc), k3 = _kt + (pos0 - offsets[c + 3] + rc);
                TVec a00 = TIsa.Zero, a01 = TIsa.Zero, a02 = TIsa.Zero, a03 = TIsa.Zero;
                TVec a10 = TIsa.Zero, a11 = TIsa.Zero, a12 = TIsa.Zero, a13 = TIsa.Zero;
                TVec a20 = TIsa.Zero, a21 = TIsa.Zero, a22 = TIsa.Zero, a23 = TIsa.Zero;
                TVec a30 = TIsa.Zero, a31 = TIsa.Zero, a32 = TIsa.Zero, a33 = TIsa.Zero;
                float* qx = qT + rc;
                for (int x = 0; x < dp; x++, qx += Bq, k0 += ps, k1 += ps, k2 += ps, k3 += ps)
                {
                    TVec q0 = TIsa.Load(qx), q1 = TIsa.Load(qx + w), q2 = TIsa.Load(qx + 2 * w), q3 = TIsa.Load(qx + 3 * w);
                    a00 = TIsa.Fma(q0, TIsa.Load(k0), a00); a01 = TIsa.Fma(q1, TIsa.Load(k0 + w), a01);
                    a02 = TIsa.Fma(q2, TIsa.Load(k0 + 2 * w), a02); a03 = TIsa.Fma(q3, TIsa.Load(k0 + 3 * w), a03);
                    a10 = TIsa.Fma(q0, TIsa.Load(k1), a10); a11 = TIsa.Fma(q1, TIsa.Load(k1 + w), a11);
                    a12 = TIsa.Fma(q2, TIsa.Load(k1 + 2 * w), a12); a13 = TIsa.Fma(q3, TIsa.Load(k1 + 3 * w), a13);
                    a20 = TIsa.Fma(q0, TIsa.Load(k2), a20); a21 = TIsa.Fma(q1, TIsa.Load(k2 + w), a21);
                    a22 = TIsa.Fma(q2, TIsa.Load(k2 + 2 * w), a22); a23 = TIsa.Fma(q3, TIsa.Load(k2 + 3 * w), a23);
                    a30 = TIsa.Fma(q0, TIsa.Load(k3), a30); a31 = TIsa.Fma(q1, TIsa.Load(k3 + w), a31);
                    a32 = TIsa.Fma(q2, TIsa.Load(k3 + 2 * w), a32); a33 = TIsa.Fma(q3, TIsa.Load(k3 + 3 * w), a33);
                }
                float* s0 = sT + (long)c * Bq + rc, s1 = s0 + Bq, s2 = s1 + Bq, s3 = s2 + Bq;
                TIsa.Store(a00, s0); TIsa.Store(a01, s0 + w); TIsa.Store(a02, s0 + 2 * w); TIsa.Store(a03, s0 + 3 * w);
                TIsa.Store(a10, s1); TIsa.Store(a11, s1 + w); TIsa.Store(a12, s1 + 2 * w); TIsa.Store(a13, s1 + 3 * w);
                TIsa.Store(a20, s2); TIsa.Store(a21, s2 + w); TIsa.Store(a22, s2 + 2 * w); TIsa.Store(a23, s2 + 3 * w);
                TIsa.Store(a30, s3); TIsa.Store(a31, s3 + w); TIsa.Store(a32, s3 + 2 * w); TIsa.Store(a33, s3 + 3 * w);
            }
            for (; c < count; c++)
            {
                float* k0 = _kt + (pos0 - offsets[c] + rc);
                TVec a0 = TIsa.Zero, a1 = TIsa.Zero, a2 = TIsa.Zero, a3 = TIsa.Zero;
                float* qx = qT + rc;
                for (int x = 0; x < dp; x++, qx += Bq, k0 += ps)
                {
                    a0 = TIsa.Fma(TIsa.Load(qx), TIsa.Load(k0), a0);
                    a1 = TIsa.Fma(TIsa.Load(qx + w), TIsa.Load(k0 + w), a1);
                    a2 = TIsa.Fma(TIsa.Load(qx + 2 * w), TIsa.Load(k0 + 2 * w), a2);
                    a3 = TIsa.Fma(TIsa.Load(qx + 3 * w), TIsa.Load(k0 + 3 * w), a3);
                }
                float* s0 = sT + (long)c * Bq + rc;
                TIsa.Store(a0, s0); TIsa.Store(a1, s0 + w); TIsa.Store(a2, s0 + 2 * w); TIsa.Store(a3, s0 + 3 * w);
            }
        }
        TVec negInf = TIsa.Splat(float.NegativeInfinity);
        for (int c = 0; c < count; c++)
        {
            int key0 = pos0 - offsets[c];
            float* sc = sT + (long)c * Bq;
            for (int r0 = 0; r0 < Bq; r0 += w)
            {
                if (r0 + w <= mr && key0 + r0 >= 0)
                {
                    // Column keys (bias 0) are hidden here; every other key of the diagonal is visible.
                    TVec bias = TIsa.Load(columnBias + key0 + r0);
                    TIsa.Store(TIsa.Add(TIsa.Load(sc + r0), TIsa.Select(TIsa.Equal(bias, TIsa.Zero), negInf, TIsa.Zero)), sc + r0);
                    continue;
                }
                for (int r = r0; r < r0 + w; r++)
                {
                    int key = key0 + r;
                    if (r >= mr || key < 0 || columnBias[key] == 0) sc[r] = float.NegativeInfinity;
                }
            }
            // Rows whose key falls in a range tile: that tile counted the pair.
            for (int rg = 0; rg < rangeCount; rg++)
            {
                int lo = ranges[2 * rg] - key0, hi = ranges[2 * rg + 1] - key0;
                for (int r = Math.Max(lo, 0); r <= Math.Min(hi, mr - 1); r++) sc[r] = float.NegativeInfinity;
            }
        }
        for (int r0 = 0; r0 < Bq; r0 += w)
        {
            TVec mx = negInf;
            for (int c = 0; c < count; c++) mx = TIsa.Max(mx, TIsa.Load(sT + (long)c * Bq + r0));
            TIsa.Store(mx, rowMax + r0);
        }
    }

    // oT[x][r] = alpha[r]·oT[x][r] + Σ_c pT[c][r]·v(pos0 + r − offset_c)[x]: diagonal c's values for rows r … r + 4W − 1
    // are consecutive columns of the Vᵀ panel; 4 features × 4 row vectors are accumulated over the diagonals at once.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void DiagonalValues(float* pT, int* offsets, int count, int pos0, float* alpha, float* oT)
    {
        int w = TIsa.Width, dp = _dp;
        long ps = _panelStride;
        for (int rc = 0; rc < Bq; rc += 4 * w)
        {
            TVec g0 = TIsa.Load(alpha + rc), g1 = TIsa.Load(alpha + rc + w), g2 = TIsa.Load(alpha + rc + 2 * w), g3 = TIsa.Load(alpha + rc + 3 * w);
            for (int x = 0; x < dp; x += 4)
            {
                float* o0 = oT + (long)x * Bq + rc, o1 = o0 + Bq, o2 = o1 + Bq, o3 = o2 + Bq;
                TVec a00 = TIsa.Mul(g0, TIsa.Load(o0)), a01 = TIsa.Mul(g1, TIsa.Load(o0 + w)), a02 = TIsa.Mul(g2, TIsa.Load(o0 + 2 * w)), a03 = TIsa.Mul(g3, TIsa.Load(o0 + 3 * w));
                TVec a10 = TIsa.Mul(g0, TIsa.Load(o1)), a11 = TIsa.Mul(g1, TIsa.Load(o1 + w)), a12 = TIsa.Mul(g2, TIsa.Load(o1 + 2 * w)), a13 = TIsa.Mul(g3, TIsa.Load(o1 + 3 * w));
                TVec a20 = TIsa.Mul(g0, TIsa.Load(o2)), a21 = TIsa.Mul(g1, TIsa.Load(o2 + w)), a22 = TIsa.Mul(g2, TIsa.Load(o2 + 2 * w)), a23 = TIsa.Mul(g3, TIsa.Load(o2 + 3 * w));
                TVec a30 = TIsa.Mul(g0, TIsa.Load(o3)), a31 = TIsa.Mul(g1, TIsa.Load(o3 + w)), a32 = TIsa.Mul(g2, TIsa.Load(o3 + 2 * w)), a33 = TIsa.Mul(g3, TIsa.Load(o3 + 3 * w));
                float* vx = _vt + x * ps + pos0 + rc;
                for (int c = 0; c < count; c++)
                {
                    float* pc = pT + (long)c * Bq + rc;
                    TVec p0 = TIsa.Load(pc), p1 = TIsa.Load(pc + w), p2 = TIsa.Load(pc + 2 * w), p3 = TIsa.Load(pc + 3 * w);
                    float* v0 = vx - offsets[c], v1 = v0 + ps, v2 = v1 + ps, v3 = v2 + ps;
                    a00 = TIsa.Fma(p0, TIsa.Load(v0), a00); a01 = TIsa.Fma(p1, TIsa.Load(v0 + w), a01);
                    a02 = TIsa.Fma(p2, TIsa.Load(v0 + 2 * w), a02); a03 = TIsa.Fma(p3, TIsa.Load(v0 + 3 * w), a03);
                    a10 = TIsa.Fma(p0, TIsa.Load(v1), a10); a11 = TIsa.Fma(p1, TIsa.Load(v1 + w), a11);
                    a12 = TIsa.Fma(p2, TIsa.Load(v1 + 2 * w), a12); a13 = TIsa.Fma(p3, TIsa.Load(v1 + 3 * w), a13);
                    a20 = TIsa.Fma(p0, TIsa.Load(v2), a20); a21 = TIsa.Fma(p1, TIsa.Load(v2 + w), a21);
                    a22 = TIsa.Fma(p2, TIsa.Load(v2 + 2 * w), a22); a23 = TIsa.Fma(p3, TIsa.Load(v2 + 3 * w), a23);
                    a30 = TIsa.Fma(p0, TIsa.Load(v3), a30); a31 = TIsa.Fma(p1, TIsa.Load(v3 + w), a31);
                    a32 = TIsa.Fma(p2, TIsa.Load(v3 + 2 * w), a32); a33 = TIsa.Fma(p3, TIsa.Load(v3 + 3 * w), a33);
                }
                TIsa.Store(a00, o0); TIsa.Store(a01, o0 + w); TIsa.Store(a02, o0 + 2 * w); TIsa.Store(a03, o0 + 3 * w);
                TIsa.Store(a10, o1); TIsa.Store(a11, o1 + w); TIsa.Store(a12, o1 + 2 * w); TIsa.Store(a13, o1 + 3 * w);
                TIsa.Store(a20, o2); TIsa.Store(a21, o2 + w); TIsa.Store(a22, o2 + 2 * w); TIsa.Store(a23, o2 + 3 * w);
                TIsa.Store(a30, o3); TIsa.Store(a31, o3 + w); TIsa.Store(a32, o3 + 2 * w); TIsa.Store(a33, o3 + 3 * w);
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
