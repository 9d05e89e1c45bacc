using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Sparse.Dynamic;

/// <summary>
/// The small dense computations the dynamic selectors share: a head's rows as a float32 matrix, pooled rows, a score
/// product on the shared <see cref="TileGemm"/>, causal softmax of a few query rows, and top-k / cumulative-mass picks.
/// None of it is a softmax attention kernel: selectors only estimate where the mass is.
/// </summary>
internal static unsafe class SelectorMath
{
    /// <summary>Rows [start, start + count) of head <paramref name="head"/> in batch entry <paramref name="batch"/>, as [count][d].</summary>
    public static float[] Rows(TensorView<float> t, int batch, int start, int count, int head)
    {
        int d = t.Dim;
        var rows = new float[(long)count * d];
        for (int i = 0; i < count; i++)
            new ReadOnlySpan<float>(t.Row(batch, start + i, head), d).CopyTo(rows.AsSpan(i * d, d));
        return rows;
    }

    /// <summary>Means of consecutive groups of <paramref name="size"/> rows of [n][d] (the last group may be short).</summary>
    public static float[] PoolMeans(ReadOnlySpan<float> rows, int n, int d, int size)
    {
        int groups = (n + size - 1) / size;
        var pooled = new float[(long)groups * d];
        for (int gI = 0; gI < groups; gI++)
        {
            int r0 = gI * size, r1 = Math.Min(n, r0 + size);
            Span<float> dst = pooled.AsSpan(gI * d, d);
            for (int r = r0; r < r1; r++) TensorPrimitives.Add(dst, rows.Slice(r * d, d), dst);
            TensorPrimitives.Multiply(dst, 1f / (r1 - r0), dst);
        }
        return pooled;
    }

    /// <summary>C[m][n] = scale · A[m][d] · B[n][d]ᵀ, on the shared tile product.</summary>
    public static float[] Scores(ReadOnlySpan<float> a, int m, ReadOnlySpan<float> b, int n, int d, float scale)
    {
        if (Isa512.IsSupported) return Scores<Isa512, System.Runtime.Intrinsics.Vector512<float>>(a, m, b, n, d, scale);
        if (Isa256.IsSupported) return Scores<Isa256, System.Runtime.Intrinsics.Vector256<float>>(a, m, b, n, d, scale);
        return Scores<Isa128, System.Runtime.Intrinsics.Vector128<float>>(a, m, b, n, d, scale);
    }

    private static float[] Scores<TIsa, TVec>(ReadOnlySpan<float> a, int m, ReadOnlySpan<float> b, int n, int d, float scale)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int block = 4 * TIsa.Width, mp = (m + 3) & ~3;
        var ap = new float[(long)mp * d];
        for (int i = 0; i < m; i++) TensorPrimitives.Multiply(a.Slice(i * d, d), scale, ap.AsSpan(i * d, d));
        float[] bt = TransposeKeys(b, n, d, out int np);
        var c = new float[(long)mp * Math.Max(np, block)];
        if (m > 0 && n > 0)
            fixed (float* pa = ap, pb = bt, pc = c)
                TileGemm.MultiplyTransposed<TIsa, TVec>(pa, d, pb, np, pc, np, mp, np, d);
        if (np == n && mp == m) return c;
        var result = new float[(long)m * n];
        for (int i = 0; i < m; i++) c.AsSpan(i * np, n).CopyTo(result.AsSpan(i * n, n));
        return result;
    }

    /// <summary>Columns per group of the score product (<see cref="ScoreRows"/>): 4 vectors of the widest ISA here.</summary>
    public static int ColumnBlock => 4 * (Isa512.IsSupported ? Isa512.Width : Isa256.IsSupported ? Isa256.Width : Isa128.Width);

    /// <summary>
    /// Keys [n][d] transposed to [d][np], np = n rounded up to a whole <see cref="ColumnBlock"/> (at least one), the
    /// padding zero: the right operand of <see cref="ScoreRows"/>, built once and shared by every query head that
    /// reads these keys.
    /// </summary>
    public static float[] TransposeKeys(ReadOnlySpan<float> b, int n, int d, out int np)
    {
        int block = ColumnBlock;
        np = Math.Max(block, (n + block - 1) / block * block);
        var bt = new float[(long)d * np];
        // Transposed 64 keys at a time: each pass writes 64 consecutive floats per feature row and reads a 64 × d slab
        // that stays in L1 (a key-by-key transpose wrote one float per 4·np-byte row and missed the cache every time).
        const int keyTile = 64;
        for (int j0 = 0; j0 < n; j0 += keyTile)
        {
            int j1 = Math.Min(n, j0 + keyTile);
            for (int x = 0; x < d; x++)
            {
                Span<float> row = bt.AsSpan((int)((long)x * np), np);
                for (int j = j0; j < j1; j++) row[j] = b[j * d + x];
            }
        }
        return bt;
    }

    /// <summary>
    /// C[m][0, cols) = A[m][d] · Bt[d][0, cols) with C rows at stride <paramref name="ldc"/>: the score product over the
    /// first <paramref name="cols"/> keys of transposed keys (<see cref="TransposeKeys"/>, row stride
    /// <paramref name="np"/>). m % 4 == 0 (zero rows pad), cols a multiple of <see cref="ColumnBlock"/> and ≤ np.
    /// Column slabs of 256 keys keep the right operand in L2 while every row of A passes over it. Each score is the
    /// same sequence of FMAs as in <see cref="Scores"/>, so the two agree bitwise.
    /// </summary>
    public static void ScoreRows(float* a, int m, float* bt, int np, int cols, int d, float* c, int ldc)
    {
        if (Isa512.IsSupported) ScoreRows<Isa512, System.Runtime.Intrinsics.Vector512<float>>(a, m, bt, np, cols, d, c, ldc);
        else if (Isa256.IsSupported) ScoreRows<Isa256, System.Runtime.Intrinsics.Vector256<float>>(a, m, bt, np, cols, d, c, ldc);
        else ScoreRows<Isa128, System.Runtime.Intrinsics.Vector128<float>>(a, m, bt, np, cols, d, c, ldc);
    }

    private static void ScoreRows<TIsa, TVec>(float* a, int m, float* bt, int np, int cols, int d, float* c, int ldc)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        const int slab = 256;
        for (int j0 = 0; j0 < cols; j0 += slab)
            TileGemm.MultiplyTransposed<TIsa, TVec>(a, d, bt + j0, np, c + j0, ldc, m, Math.Min(slab, cols - j0), d);
    }

    /// <summary>
    /// In place: each row r of <paramref name="scores"/> [rows][n] becomes the causal softmax over keys 0..positions[r]
    /// (keys after the position get 0). A row with no visible key stays all 0.
    /// </summary>
    public static void CausalSoftmax(Span<float> scores, int rows, int n, ReadOnlySpan<int> positions)
    {
        for (int r = 0; r < rows; r++)
        {
            Span<float> row = scores.Slice(r * n, n);
            int visible = Math.Clamp(positions[r] + 1, 0, n);
            row[visible..].Clear();
            if (visible == 0) continue;
            Softmax(row[..visible]);
        }
    }

    /// <summary>In place: softmax of <paramref name="values"/> (e^(x − max) / Σ), with the kernels' vector exponential.</summary>
    public static void Softmax(Span<float> values)
    {
        if (values.IsEmpty) return;
        float max = TensorPrimitives.Max(values);
        // TensorPrimitives.Exp measured ~100 ns per element here; the kernels' FastExp is a few ns.
        float sum = Isa512.IsSupported ? ExpShifted<Isa512, System.Runtime.Intrinsics.Vector512<float>>(values, max)
            : Isa256.IsSupported ? ExpShifted<Isa256, System.Runtime.Intrinsics.Vector256<float>>(values, max)
            : ExpShifted<Isa128, System.Runtime.Intrinsics.Vector128<float>>(values, max);
        TensorPrimitives.Multiply(values, 1f / sum, values);
    }

    // values[i] = e^(values[i] − shift); returns the sum.
    private static float ExpShifted<TIsa, TVec>(Span<float> values, float shift)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width, n = values.Length, i = 0;
        TVec vs = TIsa.Splat(shift), acc = TIsa.Zero;
        float sum = 0;
        fixed (float* p = values)
        {
            for (; i + w <= n; i += w)
            {
                TVec e = TIsa.Exp(TIsa.Sub(TIsa.Load(p + i), vs));
                TIsa.Store(e, p + i);
                acc = TIsa.Add(acc, e);
            }
            for (; i < n; i++)
            {
                p[i] = MathF.Exp(p[i] - shift);
                sum += p[i];
            }
        }
        return sum + TIsa.Sum(acc);
    }

    /// <summary>Indices of the <paramref name="k"/> largest values (ties: lower index first), ascending by index.</summary>
    public static int[] TopK(ReadOnlySpan<float> values, int k)
    {
        k = Math.Min(k, values.Length);
        if (k <= 0) return [];
        int[] order = DescendingOrder(values);
        int[] pick = order[..k];
        Array.Sort(pick);
        return pick;
    }

    /// <summary>
    /// The fewest indices, largest values first, whose values sum to at least <paramref name="fraction"/> of the total
    /// (FlexPrefill's cumulative-attention rule), ascending by index. Values must be ≥ 0.
    /// </summary>
    public static int[] CumulativeMass(ReadOnlySpan<float> values, double fraction)
    {
        double total = 0;
        foreach (float v in values) total += v;
        if (total <= 0 || values.Length == 0) return [];
        int[] order = DescendingOrder(values);
        double target = fraction * total, sum = 0;
        int n = 0;
        while (n < order.Length && sum < target) sum += values[order[n++]];
        int[] pick = order[..Math.Max(n, 1)];
        Array.Sort(pick);
        return pick;
    }

    private static int[] DescendingOrder(ReadOnlySpan<float> values)
    {
        var order = new int[values.Length];
        var keys = new float[values.Length];
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
            keys[i] = -values[i]; // NaN-free inputs; −∞ scores sort last
        }
        Array.Sort(keys, order); // introsort is unstable: break ties by index below
        int start = 0;
        for (int i = 1; i <= order.Length; i++)
        {
            if (i < order.Length && keys[i] == keys[start]) continue;
            if (i - start > 1) Array.Sort(order, start, i - start);
            start = i;
        }
        return order;
    }

    /// <summary>Merges ascending index lists into one ascending list without duplicates.</summary>
    public static int[] Union(params int[][] lists)
    {
        var set = new SortedSet<int>();
        foreach (int[] l in lists)
            foreach (int x in l) set.Add(x);
        var result = new int[set.Count];
        set.CopyTo(result);
        return result;
    }

    /// <summary>The integers [from, to) clipped to [0, limit).</summary>
    public static int[] Range(int from, int to, int limit)
    {
        from = Math.Max(from, 0);
        to = Math.Min(to, limit);
        if (to <= from) return [];
        var r = new int[to - from];
        for (int i = 0; i < r.Length; i++) r[i] = from + i;
        return r;
    }
}
