using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Attend.Kernels.Cpu.Linear;

/// <summary>
/// dst[j, i] = src[i, j] for a rows × cols float block, 8 × 8 tiles at a time with AVX shuffles (the classic
/// unpack / shuffle / lane-permute transpose), scalar for the edges and without AVX. The chunked kernel transposes
/// each chunk's keys for the score product; done element by element it cost about a tenth of the chunk's time.
/// </summary>
internal static unsafe class Transpose
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Block(float* src, int lds, float* dst, int ldd, int rows, int cols)
    {
        int i = 0;
        if (Avx.IsSupported)
        {
            for (; i + 8 <= rows; i += 8)
            {
                int j = 0;
                for (; j + 8 <= cols; j += 8) Tile8(src + (long)i * lds + j, lds, dst + (long)j * ldd + i, ldd);
                for (; j < cols; j++)
                    for (int r = i; r < i + 8; r++) dst[(long)j * ldd + r] = src[(long)r * lds + j];
            }
        }
        for (; i < rows; i++)
            for (int j = 0; j < cols; j++) dst[(long)j * ldd + i] = src[(long)i * lds + j];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile8(float* s, int lds, float* d, int ldd)
    {
        Vector256<float> r0 = Avx.LoadVector256(s), r1 = Avx.LoadVector256(s + lds), r2 = Avx.LoadVector256(s + 2 * lds), r3 = Avx.LoadVector256(s + 3 * lds);
        Vector256<float> r4 = Avx.LoadVector256(s + 4 * lds), r5 = Avx.LoadVector256(s + 5 * lds), r6 = Avx.LoadVector256(s + 6 * lds), r7 = Avx.LoadVector256(s + 7 * lds);
        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1), t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5), t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);
        Vector256<float> u0 = Avx.Shuffle(t0, t2, 0x44), u1 = Avx.Shuffle(t0, t2, 0xEE), u2 = Avx.Shuffle(t1, t3, 0x44), u3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> u4 = Avx.Shuffle(t4, t6, 0x44), u5 = Avx.Shuffle(t4, t6, 0xEE), u6 = Avx.Shuffle(t5, t7, 0x44), u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(d, Avx.Permute2x128(u0, u4, 0x20));
        Avx.Store(d + ldd, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(d + 2 * ldd, Avx.Permute2x128(u2, u6, 0x20));
        Avx.Store(d + 3 * ldd, Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(d + 4 * ldd, Avx.Permute2x128(u0, u4, 0x31));
        Avx.Store(d + 5 * ldd, Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(d + 6 * ldd, Avx.Permute2x128(u2, u6, 0x31));
        Avx.Store(d + 7 * ldd, Avx.Permute2x128(u3, u7, 0x31));
    }
}
