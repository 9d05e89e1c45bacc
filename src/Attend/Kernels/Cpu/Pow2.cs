using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Attend.Kernels.Cpu;

/// <summary>
/// p · 2^n for integral n in [−150, 128] built in the exponent bits, for vector widths without a scale instruction.
/// 2^n is applied as two factors 2^⌊n/2⌋ · 2^(n − ⌊n/2⌋), each a normal float over that range, so results that
/// underflow become subnormal or 0 by ordinary rounding and n = 128 does not overflow the exponent field.
/// </summary>
internal static class Pow2
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Scale(Vector512<float> p, Vector512<float> n)
    {
        Vector512<int> ni = Vector512.ConvertToInt32(n);
        Vector512<int> half = ni >> 1;
        Vector512<float> s1 = ((half + Vector512.Create(127)) << 23).AsSingle();
        Vector512<float> s2 = ((ni - half + Vector512.Create(127)) << 23).AsSingle();
        return p * s1 * s2;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Scale(Vector256<float> p, Vector256<float> n)
    {
        Vector256<int> ni = Vector256.ConvertToInt32(n);
        Vector256<int> half = ni >> 1;
        Vector256<float> s1 = ((half + Vector256.Create(127)) << 23).AsSingle();
        Vector256<float> s2 = ((ni - half + Vector256.Create(127)) << 23).AsSingle();
        return p * s1 * s2;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Scale(Vector128<float> p, Vector128<float> n)
    {
        Vector128<int> ni = Vector128.ConvertToInt32(n);
        Vector128<int> half = ni >> 1;
        Vector128<float> s1 = ((half + Vector128.Create(127)) << 23).AsSingle();
        Vector128<float> s2 = ((ni - half + Vector128.Create(127)) << 23).AsSingle();
        return p * s1 * s2;
    }
}
