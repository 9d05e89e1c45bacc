using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The two register-blocked float32 products every CPU softmax kernel is built from (forward, backward, decode
/// blocks): 4 rows × 4 vectors of accumulators, broadcasting one operand and streaming the other.
/// </summary>
/// <remarks>
/// Callers pad: row counts to a multiple of 4, the streamed dimension to a multiple of the vector width (and, for
/// <see cref="MultiplyTransposed{TIsa,TVec}"/>, to a multiple of 4 vectors). Padding is zero, so it adds nothing.
/// </remarks>
internal static unsafe class TileGemm
{
    /// <summary>
    /// C[m, n] = A[m, k] · Bt[k, n]: A rows at stride <paramref name="lda"/>, Bt (the transposed right operand, e.g. a
    /// packed Kᵀ panel) rows at stride <paramref name="ldb"/>, C rows at stride <paramref name="ldc"/>.
    /// m % 4 == 0, n % W == 0 (columns in groups of 4 vectors, then single vectors: sparse kernels multiply only the
    /// column range of a partial block that holds visible keys).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MultiplyTransposed<TIsa, TVec>(float* a, int lda, float* bt, int ldb, float* c, int ldc, int m, int n, int k)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        for (int i = 0; i < m; i += 4)
        {
            float* a0 = a + (nint)i * lda, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda;
            int j4 = n - n % (4 * w);
            for (int j = 0; j < j4; j += 4 * w)
            {
                TVec c00 = TIsa.Zero, c01 = TIsa.Zero, c02 = TIsa.Zero, c03 = TIsa.Zero;
                TVec c10 = TIsa.Zero, c11 = TIsa.Zero, c12 = TIsa.Zero, c13 = TIsa.Zero;
                TVec c20 = TIsa.Zero, c21 = TIsa.Zero, c22 = TIsa.Zero, c23 = TIsa.Zero;
                TVec c30 = TIsa.Zero, c31 = TIsa.Zero, c32 = TIsa.Zero, c33 = TIsa.Zero;
                float* b = bt + j;
                for (int x = 0; x < k; x++, b += ldb)
                {
                    TVec b0 = TIsa.Load(b), b1 = TIsa.Load(b + w), b2 = TIsa.Load(b + 2 * w), b3 = TIsa.Load(b + 3 * w);
                    TVec s = TIsa.Splat(a0[x]);
                    c00 = TIsa.Fma(s, b0, c00); c01 = TIsa.Fma(s, b1, c01); c02 = TIsa.Fma(s, b2, c02); c03 = TIsa.Fma(s, b3, c03);
                    s = TIsa.Splat(a1[x]);
                    c10 = TIsa.Fma(s, b0, c10); c11 = TIsa.Fma(s, b1, c11); c12 = TIsa.Fma(s, b2, c12); c13 = TIsa.Fma(s, b3, c13);
                    s = TIsa.Splat(a2[x]);
                    c20 = TIsa.Fma(s, b0, c20); c21 = TIsa.Fma(s, b1, c21); c22 = TIsa.Fma(s, b2, c22); c23 = TIsa.Fma(s, b3, c23);
                    s = TIsa.Splat(a3[x]);
                    c30 = TIsa.Fma(s, b0, c30); c31 = TIsa.Fma(s, b1, c31); c32 = TIsa.Fma(s, b2, c32); c33 = TIsa.Fma(s, b3, c33);
                }
                float* r0 = c + (nint)i * ldc + j, r1 = r0 + ldc, r2 = r1 + ldc, r3 = r2 + ldc;
                TIsa.Store(c00, r0); TIsa.Store(c01, r0 + w); TIsa.Store(c02, r0 + 2 * w); TIsa.Store(c03, r0 + 3 * w);
                TIsa.Store(c10, r1); TIsa.Store(c11, r1 + w); TIsa.Store(c12, r1 + 2 * w); TIsa.Store(c13, r1 + 3 * w);
                TIsa.Store(c20, r2); TIsa.Store(c21, r2 + w); TIsa.Store(c22, r2 + 2 * w); TIsa.Store(c23, r2 + 3 * w);
                TIsa.Store(c30, r3); TIsa.Store(c31, r3 + w); TIsa.Store(c32, r3 + 2 * w); TIsa.Store(c33, r3 + 3 * w);
            }
            int left = (n - j4) / w;
            if (left >= 2)
            {
                // 4 rows × 2 or 3 vectors in one pass for the columns left over (partial blocks of a sparse mask
                // multiply column ranges of 2–3 vectors: one vector at a time re-broadcast the 4 rows' values per
                // vector and ran at half the FMA rate).
                TVec c00 = TIsa.Zero, c01 = TIsa.Zero, c02 = TIsa.Zero;
                TVec c10 = TIsa.Zero, c11 = TIsa.Zero, c12 = TIsa.Zero;
                TVec c20 = TIsa.Zero, c21 = TIsa.Zero, c22 = TIsa.Zero;
                TVec c30 = TIsa.Zero, c31 = TIsa.Zero, c32 = TIsa.Zero;
                float* b = bt + j4;
                if (left == 3)
                {
                    for (int x = 0; x < k; x++, b += ldb)
                    {
                        TVec b0 = TIsa.Load(b), b1 = TIsa.Load(b + w), b2 = TIsa.Load(b + 2 * w);
                        TVec s = TIsa.Splat(a0[x]);
                        c00 = TIsa.Fma(s, b0, c00); c01 = TIsa.Fma(s, b1, c01); c02 = TIsa.Fma(s, b2, c02);
                        s = TIsa.Splat(a1[x]);
                        c10 = TIsa.Fma(s, b0, c10); c11 = TIsa.Fma(s, b1, c11); c12 = TIsa.Fma(s, b2, c12);
                        s = TIsa.Splat(a2[x]);
                        c20 = TIsa.Fma(s, b0, c20); c21 = TIsa.Fma(s, b1, c21); c22 = TIsa.Fma(s, b2, c22);
                        s = TIsa.Splat(a3[x]);
                        c30 = TIsa.Fma(s, b0, c30); c31 = TIsa.Fma(s, b1, c31); c32 = TIsa.Fma(s, b2, c32);
                    }
                }
                else
                {
                    for (int x = 0; x < k; x++, b += ldb)
                    {
                        TVec b0 = TIsa.Load(b), b1 = TIsa.Load(b + w);
                        TVec s = TIsa.Splat(a0[x]);
                        c00 = TIsa.Fma(s, b0, c00); c01 = TIsa.Fma(s, b1, c01);
                        s = TIsa.Splat(a1[x]);
                        c10 = TIsa.Fma(s, b0, c10); c11 = TIsa.Fma(s, b1, c11);
                        s = TIsa.Splat(a2[x]);
                        c20 = TIsa.Fma(s, b0, c20); c21 = TIsa.Fma(s, b1, c21);
                        s = TIsa.Splat(a3[x]);
                        c30 = TIsa.Fma(s, b0, c30); c31 = TIsa.Fma(s, b1, c31);
                    }
                }
                float* r0 = c + (nint)i * ldc + j4, r1 = r0 + ldc, r2 = r1 + ldc, r3 = r2 + ldc;
                TIsa.Store(c00, r0); TIsa.Store(c01, r0 + w);
                TIsa.Store(c10, r1); TIsa.Store(c11, r1 + w);
                TIsa.Store(c20, r2); TIsa.Store(c21, r2 + w);
                TIsa.Store(c30, r3); TIsa.Store(c31, r3 + w);
                if (left == 3)
                {
                    TIsa.Store(c02, r0 + 2 * w); TIsa.Store(c12, r1 + 2 * w); TIsa.Store(c22, r2 + 2 * w); TIsa.Store(c32, r3 + 2 * w);
                }
                continue;
            }
            for (int j = j4; j < n; j += w)
            {
                // 4 rows × 1 vector for the column left over.
                TVec c0 = TIsa.Zero, c1 = TIsa.Zero, c2 = TIsa.Zero, c3 = TIsa.Zero;
                float* b = bt + j;
                for (int x = 0; x < k; x++, b += ldb)
                {
                    TVec b0 = TIsa.Load(b);
                    c0 = TIsa.Fma(TIsa.Splat(a0[x]), b0, c0);
                    c1 = TIsa.Fma(TIsa.Splat(a1[x]), b0, c1);
                    c2 = TIsa.Fma(TIsa.Splat(a2[x]), b0, c2);
                    c3 = TIsa.Fma(TIsa.Splat(a3[x]), b0, c3);
                }
                float* r0 = c + (nint)i * ldc + j;
                TIsa.Store(c0, r0); TIsa.Store(c1, r0 + ldc); TIsa.Store(c2, r0 + 2 * ldc); TIsa.Store(c3, r0 + 3 * ldc);
            }
        }
    }

    /// <summary>
    /// C[m, n] = rowScale[i]·C[m, n] + A[m, k] · B[k, n] (rowScale null: 1). A rows at stride <paramref name="lda"/>,
    /// B rows (e.g. V rows straight from the input) at stride <paramref name="ldb"/>, C rows at <paramref name="ldc"/>.
    /// m % 4 == 0, n % W == 0; k is any count.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MultiplyAccumulate<TIsa, TVec>(float* a, int lda, float* b, nint ldb, float* c, int ldc, float* rowScale, int m, int n, int k)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        => MultiplyAccumulate<TIsa, TVec>(a, lda, 1, b, ldb, c, ldc, rowScale, m, n, k);

    /// <summary>
    /// C[m, n] = rowScale[i]·C + Aᵀ[m, k] · B[k, n] where A is stored [k][m] with rows at stride <paramref name="lda"/>:
    /// the backward's Pᵀ·dO and dSᵀ·Q without transposing P or dS.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MultiplyTransposedAccumulate<TIsa, TVec>(float* a, int lda, float* b, nint ldb, float* c, int ldc, int m, int n, int k)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        => MultiplyAccumulate<TIsa, TVec>(a, 1, lda, b, ldb, c, ldc, null, m, n, k);

    // A element (i, x) is at a[i·rowStride + x·colStride].
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MultiplyAccumulate<TIsa, TVec>(float* a, int rowStride, int colStride, float* b, nint ldb, float* c, int ldc, float* rowScale, int m, int n, int k)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
    {
        int w = TIsa.Width;
        for (int i = 0; i < m; i += 4)
        {
            float* a0 = a + (nint)i * rowStride, a1 = a0 + rowStride, a2 = a1 + rowStride, a3 = a2 + rowStride;
            TVec g0 = rowScale == null ? TIsa.Splat(1f) : TIsa.Splat(rowScale[i]);
            TVec g1 = rowScale == null ? g0 : TIsa.Splat(rowScale[i + 1]);
            TVec g2 = rowScale == null ? g0 : TIsa.Splat(rowScale[i + 2]);
            TVec g3 = rowScale == null ? g0 : TIsa.Splat(rowScale[i + 3]);
            int j = 0;
            for (; j + 4 * w <= n; j += 4 * w)
            {
                float* r0 = c + (nint)i * ldc + j, r1 = r0 + ldc, r2 = r1 + ldc, r3 = r2 + ldc;
                TVec c00 = TIsa.Mul(g0, TIsa.Load(r0)), c01 = TIsa.Mul(g0, TIsa.Load(r0 + w)), c02 = TIsa.Mul(g0, TIsa.Load(r0 + 2 * w)), c03 = TIsa.Mul(g0, TIsa.Load(r0 + 3 * w));
                TVec c10 = TIsa.Mul(g1, TIsa.Load(r1)), c11 = TIsa.Mul(g1, TIsa.Load(r1 + w)), c12 = TIsa.Mul(g1, TIsa.Load(r1 + 2 * w)), c13 = TIsa.Mul(g1, TIsa.Load(r1 + 3 * w));
                TVec c20 = TIsa.Mul(g2, TIsa.Load(r2)), c21 = TIsa.Mul(g2, TIsa.Load(r2 + w)), c22 = TIsa.Mul(g2, TIsa.Load(r2 + 2 * w)), c23 = TIsa.Mul(g2, TIsa.Load(r2 + 3 * w));
                TVec c30 = TIsa.Mul(g3, TIsa.Load(r3)), c31 = TIsa.Mul(g3, TIsa.Load(r3 + w)), c32 = TIsa.Mul(g3, TIsa.Load(r3 + 2 * w)), c33 = TIsa.Mul(g3, TIsa.Load(r3 + 3 * w));
                float* bj = b + j;
                for (int x = 0; x < k; x++, bj += ldb)
                {
                    TVec b0 = TIsa.Load(bj), b1 = TIsa.Load(bj + w), b2 = TIsa.Load(bj + 2 * w), b3 = TIsa.Load(bj + 3 * w);
                    TVec s = TIsa.Splat(a0[(nint)x * colStride]);
                    c00 = TIsa.Fma(s, b0, c00); c01 = TIsa.Fma(s, b1, c01); c02 = TIsa.Fma(s, b2, c02); c03 = TIsa.Fma(s, b3, c03);
                    s = TIsa.Splat(a1[(nint)x * colStride]);
                    c10 = TIsa.Fma(s, b0, c10); c11 = TIsa.Fma(s, b1, c11); c12 = TIsa.Fma(s, b2, c12); c13 = TIsa.Fma(s, b3, c13);
                    s = TIsa.Splat(a2[(nint)x * colStride]);
                    c20 = TIsa.Fma(s, b0, c20); c21 = TIsa.Fma(s, b1, c21); c22 = TIsa.Fma(s, b2, c22); c23 = TIsa.Fma(s, b3, c23);
                    s = TIsa.Splat(a3[(nint)x * colStride]);
                    c30 = TIsa.Fma(s, b0, c30); c31 = TIsa.Fma(s, b1, c31); c32 = TIsa.Fma(s, b2, c32); c33 = TIsa.Fma(s, b3, c33);
                }
                TIsa.Store(c00, r0); TIsa.Store(c01, r0 + w); TIsa.Store(c02, r0 + 2 * w); TIsa.Store(c03, r0 + 3 * w);
                TIsa.Store(c10, r1); TIsa.Store(c11, r1 + w); TIsa.Store(c12, r1 + 2 * w); TIsa.Store(c13, r1 + 3 * w);
                TIsa.Store(c20, r2); TIsa.Store(c21, r2 + w); TIsa.Store(c22, r2 + 2 * w); TIsa.Store(c23, r2 + 3 * w);
                TIsa.Store(c30, r3); TIsa.Store(c31, r3 + w); TIsa.Store(c32, r3 + 2 * w); TIsa.Store(c33, r3 + 3 * w);
            }
            // Remaining vectors of the row (head dims that are not a multiple of 4 vectors): 4 rows × 1 vector.
            for (; j < n; j += w)
            {
                float* r0 = c + (nint)i * ldc + j, r1 = r0 + ldc, r2 = r1 + ldc, r3 = r2 + ldc;
                TVec c0 = TIsa.Mul(g0, TIsa.Load(r0)), c1 = TIsa.Mul(g1, TIsa.Load(r1)), c2 = TIsa.Mul(g2, TIsa.Load(r2)), c3 = TIsa.Mul(g3, TIsa.Load(r3));
                float* bj = b + j;
                for (int x = 0; x < k; x++, bj += ldb)
                {
                    TVec b0 = TIsa.Load(bj);
                    c0 = TIsa.Fma(TIsa.Splat(a0[(nint)x * colStride]), b0, c0);
                    c1 = TIsa.Fma(TIsa.Splat(a1[(nint)x * colStride]), b0, c1);
                    c2 = TIsa.Fma(TIsa.Splat(a2[(nint)x * colStride]), b0, c2);
                    c3 = TIsa.Fma(TIsa.Splat(a3[(nint)x * colStride]), b0, c3);
                }
                TIsa.Store(c0, r0); TIsa.Store(c1, r1); TIsa.Store(c2, r2); TIsa.Store(c3, r3);
            }
        }
    }
}
