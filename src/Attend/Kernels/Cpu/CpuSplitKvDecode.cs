using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Attend.Kernels.Cpu;

/// <summary>
/// Decode: a few queries (1–16 per sequence) against a long cache. Bandwidth-bound, so the work is arranged to read
/// every key and value once: the query heads of a KV group are processed together, and the keys of each sequence
/// are split into ranges across the cores (split-KV, "flash-decoding"); the partial results are
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
        if (!Vector128.IsHardwareAccelerated)
        {
            reason = "no hardware-accelerated vectors on this machine";
            return false;
        }
        reason = "";
        return true;
    }

    internal override void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
    {
        if (Vector512.IsHardwareAccelerated) SplitKvDecode<T, TMask, TScore, Isa512, Vector512<float>>.Run(call, mask, score);
        else if (Vector256.IsHardwareAccelerated) SplitKvDecode<T, TMask, TScore, Isa256, Vector256<float>>.Run(call, mask, score);
        else SplitKvDecode<T, TMask, TScore, Isa128, Vector128<float>>.Run(call, mask, score);
    }
}

/// <summary>
/// The work of <see cref="CpuSplitKvDecode"/>: items are (sequence, group of KV heads, key range). A group holds as
/// many consecutive KV heads as fit 64 query rows (and 256 KB of packed block), so that an item reads whole token rows
/// of the [B, T, Hkv, D] cache. A float32 cache is read in place, token by token across the group's heads; other
/// element types are first converted block by block, token by token, into a float32 scratch. Decode is bound by that
/// stream, and its order matters on this machine: one head's slice of every token row streamed at 8 GB/s against 25
/// for whole rows, and a block read head by head at 15 against 29 read token by token (two cores, pure reads,
/// measured while tuning).
/// </summary>
internal sealed unsafe class SplitKvDecode<T, TMask, TScore, TIsa, TVec> : IWorkItems
    where T : unmanaged
    where TMask : struct, IMaskMod<TMask>
    where TScore : struct, IScoreMod<TScore>
    where TIsa : struct, IVectorIsa<TVec>
    where TVec : unmanaged
{
    private const int Bk = 64;
    private const int RowsPerItem = 64;
    private const int PackFloats = 64 * 1024;

    private readonly ForwardCall<T> _call;
    private readonly TMask _mask;
    private readonly TScore _score;
    private readonly int _dp, _kvPerGroup, _groups, _rowsMax, _splits;
    private readonly float* _partial; // [unit][split][rowsMax] × (dp output, running max, ln running sum)

    private SplitKvDecode(ForwardCall<T> call, TMask mask, TScore score)
    {
        _call = call;
        _mask = mask;
        _score = score;
        AttentionShape sh = call.Shape;
        _dp = (sh.Dim + TIsa.Width - 1) / TIsa.Width * TIsa.Width;
        int rowsPerKv = RowsPerKv(sh.GroupSize * Math.Max(1, sh.MaxQueryLength));
        // As many KV heads as fit 64 query rows, and whose packed K and V blocks fit 256 KB of scratch (L2-resident).
        int byScratch = Math.Max(1, PackFloats / (2 * Bk * _dp));
        _kvPerGroup = Math.Clamp(Math.Min(RowsPerItem / rowsPerKv, byScratch), 1, sh.KvHeads);
        _groups = (sh.KvHeads + _kvPerGroup - 1) / _kvPerGroup;
        _rowsMax = _kvPerGroup * rowsPerKv;
        int units = sh.Sequences * _groups;
        int maxBlocks = (sh.MaxKeyLength + Bk - 1) / Bk;
        // Enough ranges for every core to have several, but none shorter than one block.
        _splits = Math.Clamp((4 * call.Threads + units - 1) / units, 1, Math.Max(1, maxBlocks));
        _partial = SharedBuffer.Rent(0, (long)units * _splits * _rowsMax * (_dp + 2)).Pointer;
    }

    /// <summary>Rows of one KV head (its query heads × queries), padded to the tile products' 4-row groups.</summary>
    private static int RowsPerKv(int rows) => (rows + 3) & ~3;

    public static void Run(ForwardCall<T> call, TMask mask, TScore score)
    {
        var work = new SplitKvDecode<T, TMask, TScore, TIsa, TVec>(call, mask, score);
        int units = call.Shape.Sequences * work._groups;
        ParallelWork.Run(units * work._splits, call.Threads, work);
        ParallelWork.Run(units, call.Threads, new MergePass(work));
    }

    private float* PartialRow(int unit, int split, int row) => _partial + (((long)unit * _splits + split) * _rowsMax + row) * (_dp + 2);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int index)
    {
        AttentionShape sh = _call.Shape;
        int unit = index / _splits, split = index % _splits;
        int s = unit / _groups, hk0 = unit % _groups * _kvPerGroup, hk1 = Math.Min(sh.KvHeads, hk0 + _kvPerGroup);
        int b = sh.SeqBatch[s], g = sh.GroupSize, tq = sh.QLen[s], tk = sh.KLen[s], d = sh.Dim, dp = _dp, w = TIsa.Width;
        int perKv = g * tq, rpk = RowsPerKv(perKv), nkv = hk1 - hk0, rp = nkv * rpk;
        if (perKv == 0) return;
        int blocks = (tk + Bk - 1) / Bk;
        int kb0 = (int)((long)blocks * split / _splits), kb1 = (int)((long)blocks * (split + 1) / _splits);

        // Row r is KV head hk0 + r / rpk, query head (r % rpk) / tq of its group, query (r % rpk) % tq; rows with
        // r % rpk ≥ perKv are padding (zero queries, −∞ scores).
        int rs = (rp + w - 1) / w * w; // row statistics padded to whole vectors
        float* q = Scratch.Get((long)rp * dp * 2 + (long)rp * Bk + 4L * rs + 2L * nkv * Bk * dp);
        float* o = q + (long)rp * dp;
        float* p = o + (long)rp * dp;
        float* m = p + (long)rp * Bk;
        float* l = m + rs;
        float* alpha = l + rs;
        float* rowMax = alpha + rs;
        float* kPack = rowMax + rs;               // this block's keys, [head][64][dp], float32
        float* vPack = kPack + (long)nkv * Bk * dp; // and values
        TVec vscale = TIsa.Splat(_call.Scale); // folded into Q
        for (int r = 0; r < rp; r++)
        {
            float* qr = q + (long)r * dp;
            new Span<float>(qr, dp).Clear();
            int local = r % rpk;
            if (local < perKv)
                ElementConvert.ToSingle(_call.Q.Row(b, sh.QStart[s] + local % tq, (hk0 + r / rpk) * g + local / tq), qr, d);
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(qr + x), vscale), qr + x);
        }
        new Span<float>(m, rs).Fill(float.NegativeInfinity);
        new Span<float>(rowMax, rs).Fill(float.NegativeInfinity);
        new Span<float>(l, rs).Clear();
        new Span<float>(o, rp * dp).Clear();
        BlockMask blocksMask = _call.Blocks;
        TensorView<T> kView = _call.K, vView = _call.V;
        // float32 caches whose rows need no padding are read in place, token by token across the item's heads (address
        // order); other element types are converted into a packed block first.
        bool inPlace = typeof(T) == typeof(float) && d == dp;
        for (int kb = kb0; kb < kb1; kb++)
        {
            int kc = Math.Min(Bk, tk - kb * Bk);
            int token0 = sh.KStart[s] + kb * Bk;
            if (!inPlace && kb + PrefetchBlocks < kb1)
                Prefetch(kView, vView, b, token0 + PrefetchBlocks * Bk, hk0, hk1, Math.Min(Bk, tk - (kb + PrefetchBlocks) * Bk));
            if (inPlace)
            {
                ScoresInPlace(q, kView, b, token0, hk0, hk1, kc, rpk, dp, p);
            }
            else
            {
                // Copy the block's keys and values token by token (whole token rows in address order): the same bytes
                // read head by head streamed at half the rate from DRAM on this machine (15 against 29 GB/s).
                PackBlock(kView, b, token0, hk0, hk1, kc, kPack);
                PackBlock(vView, b, token0, hk0, hk1, kc, vPack);
                for (int hk = hk0; hk < hk1; hk++)
                {
                    // One dot product per (row, key); each key is read once for its whole group of query heads.
                    int r0 = (hk - hk0) * rpk;
                    Scores(q + (long)r0 * dp, perKv, kPack + (long)(hk - hk0) * Bk * dp, dp, kc, dp, p + (long)r0 * Bk);
                }
            }
            for (int hk = hk0; hk < hk1; hk++)
            {
                int r0 = (hk - hk0) * rpk;
                for (int gi = 0; gi < g; gi++)
                {
                    int h = hk * g + gi;
                    float* block = p + (long)(r0 + gi * tq) * Bk;
                    BlockKind kind = blocksMask.KindOf(s, h, 0, kb);
                    if (kind == BlockKind.Empty)
                    {
                        new Span<float>(block, tq * Bk).Fill(float.NegativeInfinity);
                        new Span<float>(rowMax + r0 + gi * tq, tq).Fill(float.NegativeInfinity);
                        continue;
                    }
                    ScoreTile.Finish<TIsa, TVec, TMask, TScore>(block, null, rowMax + r0 + gi * tq, tq, tq, kc, 1f, kind == BlockKind.Partial,
                        _mask, _score, s, h, tk - tq, kb * Bk);
                }
                for (int r = r0 + perKv; r < r0 + rpk; r++)
                {
                    new Span<float>(p + (long)r * Bk, Bk).Fill(float.NegativeInfinity);
                    rowMax[r] = float.NegativeInfinity;
                }
            }
            OnlineSoftmax.Update<TIsa, TVec>(p, rp, Bk, rowMax, m, l, alpha);
            if (inPlace)
            {
                AccumulateInPlace(p, vView, b, token0, hk0, hk1, kc, rpk, dp, alpha, o);
                continue;
            }
            for (int hk = hk0; hk < hk1; hk++)
            {
                int r0 = (hk - hk0) * rpk;
                TileGemm.MultiplyAccumulate<TIsa, TVec>(p + (long)r0 * Bk, Bk, vPack + (long)(hk - hk0) * Bk * dp, dp, o + (long)r0 * dp, dp, alpha + r0, rpk, dp, kc);
            }
        }
        for (int r = 0; r < rp; r++)
        {
            if (r % rpk >= perKv) continue;
            float* target = PartialRow(unit, split, r);
            float inv = l[r] > 0 ? 1f / l[r] : 0f;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(o + (long)r * dp + x), TIsa.Splat(inv)), target + x);
            // Keep the max and ln(sum) apart: their sum, the range's LSE, would round to float32 at the scores'
            // magnitude (about 1e-3 at logits of 1e4) before the merge, which compares ranges by LSE differences.
            target[dp] = l[r] > 0 ? m[r] : float.NegativeInfinity;
            target[dp + 1] = l[r] > 0 ? MathF.Log(l[r]) : float.NegativeInfinity;
        }
    }

    // How far ahead the in-place loops request the cache, in tokens: each token row read asks for the row this many
    // tokens later, into L2, so the requests stream evenly with the compute. 32 tokens measured best at a 131k cache on
    // two cores (medians 17–19.5 GB/s against 12–14 for the whole next block at once, whose burst of requests
    // overflows the miss queue; 128 and 256 tokens gave 15–20; 2026-11-22, alternating runs).
    private const int StreamPrefetchTokens = 32;

    // How far ahead the packing path (non-float32 caches) requests the cache: the next block (64 tokens), into L2. Reading in place at a 131k cache on two
    // cores this gave 15.4–16.8 GB/s against 13.2–14.8 for two blocks ahead into L1 (which evicts the block being
    // computed) and 14.4–14.8 for none; four or eight blocks ahead gained nothing (2026-11-22, paired runs).
    private const int PrefetchBlocks = 1;

    // Asks for a later block's key and value rows of the item's heads into L2 while this block computes.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(TensorView<T> k, TensorView<T> v, int b, int token0, int hk0, int hk1, int count)
    {
        if (!Sse.IsSupported) return;
        for (int c = 0; c < count; c++)
        {
            for (int hk = hk0; hk < hk1; hk++)
            {
                byte* kr = (byte*)k.Row(b, token0 + c, hk), vr = (byte*)v.Row(b, token0 + c, hk);
                int bytes = k.Dim * sizeof(T);
                for (int x = 0; x < bytes; x += 64)
                {
                    Sse.Prefetch1(kr + x);
                    Sse.Prefetch1(vr + x);
                }
            }
        }
    }

    // Asks for one float32 row of dp elements into L2. Rows past the end of the cache are only addresses: a prefetch
    // never faults, so the loops need no bounds test.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchRow(byte* row, int dp)
    {
        if (!Sse.IsSupported) return;
        for (int x = 0; x < dp * sizeof(float); x += 64) Sse.Prefetch1(row + x);
    }

    // Rows of tokens [token0, token0 + count) for heads [hk0, hk1), converted to float32 and zero-padded to dp, stored
    // [head][token][dp]. Token-major loops keep the reads in address order.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void PackBlock(TensorView<T> view, int b, int token0, int hk0, int hk1, int count, float* target)
    {
        int d = _call.Shape.Dim;
        for (int c = 0; c < count; c++)
        {
            for (int hk = hk0; hk < hk1; hk++)
            {
                float* row = target + ((long)(hk - hk0) * Bk + c) * _dp;
                if (typeof(T) == typeof(float) && d == _dp)
                {
                    // Inline vector copy: a library copy call per 512-byte row costs as much as the row itself.
                    float* src = (float*)view.Row(b, token0 + c, hk);
                    for (int x = 0; x < d; x += TIsa.Width) TIsa.Store(TIsa.Load(src + x), row + x);
                    continue;
                }
                ElementConvert.ToSingle(view.Row(b, token0 + c, hk), row, d);
                for (int x = d; x < _dp; x++) row[x] = 0;
            }
        }
    }

    /// <summary>
    /// p[r][c] = q_r · k_c for a block of keys read in place from a float32 cache: token by token, and for each token
    /// the item's KV heads in turn, so the reads walk the [B, T, Hkv, D] cache in address order. Four rows share
    /// each key load (rows per head are a multiple of four).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScoresInPlace(float* q, TensorView<T> keys, int b, int token0, int hk0, int hk1, int count, int rpk, int dp, float* p)
    {
        for (int c = 0; c < count; c++)
        {
            for (int hk = hk0; hk < hk1; hk++)
            {
                float* k = (float*)keys.Row(b, token0 + c, hk);
                PrefetchRow((byte*)keys.Row(b, token0 + c + StreamPrefetchTokens, hk), dp);
                int r0 = (hk - hk0) * rpk;
                for (int r = r0; r < r0 + rpk; r += 4)
                {
                    Dot4(q + (long)r * dp, dp, k, p + (long)r * Bk + c);
                }
            }
        }
    }

    /// <summary>
    /// o_r ← α_r·o_r + Σ_c p[r][c]·v_c for a block of values read in place from a float32 cache, four tokens at a time
    /// and the item's heads in turn (address order again). Each value vector loaded serves the four rows of its
    /// group, whose 16 probabilities stay in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateInPlace(float* p, TensorView<T> values, int b, int token0, int hk0, int hk1, int count, int rpk, int dp, float* alpha, float* o)
    {
        int w = TIsa.Width, rows = (hk1 - hk0) * rpk;
        for (int r = 0; r < rows; r++)
        {
            TVec a = TIsa.Splat(alpha[r]);
            float* orow = o + (long)r * dp;
            for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Mul(TIsa.Load(orow + x), a), orow + x);
        }
        int c = 0;
        for (; c + 4 <= count; c += 4)
        {
            for (int hk = hk0; hk < hk1; hk++)
            {
                float* v0 = (float*)values.Row(b, token0 + c, hk), v1 = (float*)values.Row(b, token0 + c + 1, hk);
                float* v2 = (float*)values.Row(b, token0 + c + 2, hk), v3 = (float*)values.Row(b, token0 + c + 3, hk);
                for (int j = 0; j < 4; j++) PrefetchRow((byte*)values.Row(b, token0 + c + j + StreamPrefetchTokens, hk), dp);
                int r0 = (hk - hk0) * rpk;
                for (int r = r0; r < r0 + rpk; r += 4)
                {
                    float* p0 = p + (long)r * Bk + c, p1 = p0 + Bk, p2 = p1 + Bk, p3 = p2 + Bk;
                    TVec s00 = TIsa.Splat(p0[0]), s01 = TIsa.Splat(p0[1]), s02 = TIsa.Splat(p0[2]), s03 = TIsa.Splat(p0[3]);
                    TVec s10 = TIsa.Splat(p1[0]), s11 = TIsa.Splat(p1[1]), s12 = TIsa.Splat(p1[2]), s13 = TIsa.Splat(p1[3]);
                    TVec s20 = TIsa.Splat(p2[0]), s21 = TIsa.Splat(p2[1]), s22 = TIsa.Splat(p2[2]), s23 = TIsa.Splat(p2[3]);
                    TVec s30 = TIsa.Splat(p3[0]), s31 = TIsa.Splat(p3[1]), s32 = TIsa.Splat(p3[2]), s33 = TIsa.Splat(p3[3]);
                    float* o0 = o + (long)r * dp, o1 = o0 + dp, o2 = o1 + dp, o3 = o2 + dp;
                    for (int x = 0; x < dp; x += w)
                    {
                        TVec x0 = TIsa.Load(v0 + x), x1 = TIsa.Load(v1 + x), x2 = TIsa.Load(v2 + x), x3 = TIsa.Load(v3 + x);
                        TIsa.Store(TIsa.Fma(s03, x3, TIsa.Fma(s02, x2, TIsa.Fma(s01, x1, TIsa.Fma(s00, x0, TIsa.Load(o0 + x))))), o0 + x);
                        TIsa.Store(TIsa.Fma(s13, x3, TIsa.Fma(s12, x2, TIsa.Fma(s11, x1, TIsa.Fma(s10, x0, TIsa.Load(o1 + x))))), o1 + x);
                        TIsa.Store(TIsa.Fma(s23, x3, TIsa.Fma(s22, x2, TIsa.Fma(s21, x1, TIsa.Fma(s20, x0, TIsa.Load(o2 + x))))), o2 + x);
                        TIsa.Store(TIsa.Fma(s33, x3, TIsa.Fma(s32, x2, TIsa.Fma(s31, x1, TIsa.Fma(s30, x0, TIsa.Load(o3 + x))))), o3 + x);
                    }
                }
            }
        }
        for (; c < count; c++)
        {
            for (int hk = hk0; hk < hk1; hk++)
            {
                float* v0 = (float*)values.Row(b, token0 + c, hk);
                int r0 = (hk - hk0) * rpk;
                for (int r = r0; r < r0 + rpk; r++)
                {
                    TVec sc = TIsa.Splat(p[(long)r * Bk + c]);
                    float* orow = o + (long)r * dp;
                    for (int x = 0; x < dp; x += w) TIsa.Store(TIsa.Fma(sc, TIsa.Load(v0 + x), TIsa.Load(orow + x)), orow + x);
                }
            }
        }
    }

    /// <summary>
    /// p[r][c] = q_r · k_c for the group's rows and a block of packed keys: four rows at a time share each key load
    /// (<see cref="Dot4"/>), the remaining rows one by one.
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
                Dot4(q + (long)r * dp, dp, k, p + (long)r * Bk + c);
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

    /// <summary>
    /// Four consecutive rows' dot products with one key: <c>p[i·Bk] = q_i · k</c> for i = 0..3, the key loaded once for
    /// all four, each row its own accumulator chain.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(float* q, int dp, float* k, float* p)
    {
        float* q0 = q, q1 = q0 + dp, q2 = q1 + dp, q3 = q2 + dp;
        TVec a0 = TIsa.Zero, a1 = TIsa.Zero, a2 = TIsa.Zero, a3 = TIsa.Zero;
        for (int x = 0; x < dp; x += TIsa.Width)
        {
            TVec kx = TIsa.Load(k + x);
            a0 = TIsa.Fma(TIsa.Load(q0 + x), kx, a0);
            a1 = TIsa.Fma(TIsa.Load(q1 + x), kx, a1);
            a2 = TIsa.Fma(TIsa.Load(q2 + x), kx, a2);
            a3 = TIsa.Fma(TIsa.Load(q3 + x), kx, a3);
        }
        Vector128<float> sums = Sum4(a0, a1, a2, a3);
        p[0] = sums.GetElement(0);
        p[Bk] = sums.GetElement(1);
        p[2 * Bk] = sums.GetElement(2);
        p[3 * Bk] = sums.GetElement(3);
    }

    /// <summary>
    /// The horizontal sums of four vectors at once: halves are added, then AVX's pairwise adds reduce the four
    /// together (about 13 instructions instead of four separate reductions of 7).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Sum4(TVec a0, TVec a1, TVec a2, TVec a3)
    {
        if (Avx.IsSupported && typeof(TVec) != typeof(Vector128<float>))
        {
            Vector256<float> x0 = Half(a0), x1 = Half(a1), x2 = Half(a2), x3 = Half(a3);
            Vector256<float> h = Avx.HorizontalAdd(Avx.HorizontalAdd(x0, x1), Avx.HorizontalAdd(x2, x3));
            return h.GetLower() + h.GetUpper();
        }
        return Vector128.Create(TIsa.Sum(a0), TIsa.Sum(a1), TIsa.Sum(a2), TIsa.Sum(a3));
    }

    // A 512-bit vector folded to 256 bits (lane sums preserved), or the 256-bit vector itself (never called for 128).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Half(TVec v)
    {
        if (typeof(TVec) == typeof(Vector512<float>))
        {
            Vector512<float> x = Unsafe.As<TVec, Vector512<float>>(ref v);
            return x.GetLower() + x.GetUpper();
        }
        return Unsafe.As<TVec, Vector256<float>>(ref v);
    }

    /// <summary>Joins the key ranges of one (sequence, KV head) with the LSE merge and writes output and LSE.</summary>
    private sealed class MergePass(SplitKvDecode<T, TMask, TScore, TIsa, TVec> self) : IWorkItems
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Execute(int unit)
        {
            ForwardCall<T> call = self._call;
            AttentionShape sh = call.Shape;
            int s = unit / self._groups, hk0 = unit % self._groups * self._kvPerGroup, hk1 = Math.Min(sh.KvHeads, hk0 + self._kvPerGroup);
            int b = sh.SeqBatch[s], g = sh.GroupSize, tq = sh.QLen[s], d = sh.Dim, dp = self._dp;
            int perKv = g * tq, rpk = RowsPerKv(perKv);
            for (int r = 0; r < (hk1 - hk0) * rpk; r++)
            {
                int local = r % rpk;
                if (local >= perKv) continue;
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
                int h = (hk0 + r / rpk) * g + local / tq, token = sh.QStart[s] + local % tq;
                ElementConvert.FromSingle(acc, call.O.Row(b, token, h), d);
                if (!call.Lse.IsNull) *call.Lse.At(b, h, token) = lse;
            }
        }
    }
}
