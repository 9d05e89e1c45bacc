using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Attend.Kernels.Cpu;

/// <summary>
/// Vector e^x for float32, written here (rather than calling <c>Vector512.Exp</c>) so it stays in float32 and
/// inlines into the softmax loop. Range reduction x = n·ln2 + r with a two-part ln2 (Cody–Waite), a degree-6
/// polynomial for e^r on |r| ≤ ln2/2 (relative error about 2e-7, i.e. ~2 ulp), and the 2^n factor applied with
/// AVX-512's <c>vscalefps</c> where available (one instruction that also underflows cleanly to 0), else built in the
/// exponent bits. −∞ gives exactly 0, which the online softmax relies on; inputs above 88.7 give +∞.
/// </summary>
internal static class FastExp
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2Hi = 0.693359375f;
    private const float Ln2Lo = -2.12194440e-4f;
    private const float Lo = -87.33654f;
    private const float Hi = 88.72283f;

    // Minimax coefficients of (e^r − 1 − r) / r² ≈ c2 + c3 r + … (Cephes expf).
    private const float C0 = 1.9875691500e-4f;
    private const float C1 = 1.3981999507e-3f;
    private const float C2 = 8.3334519073e-3f;
    private const float C3 = 4.1665795894e-2f;
    private const float C4 = 1.6666665459e-1f;
    private const float C5 = 5.0000001201e-1f;

    // e^x < 2^-150 below this, which rounds to 0 after scaling; clamping here makes −∞ (masked scores) exactly 0.
    private const float ScaleLo = -104f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        if (!Avx512F.IsSupported) return ExpByExponentBits(x);
        Vector512<float> over = Vector512.GreaterThan(x, Vector512.Create(Hi));
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(ScaleLo)), Vector512.Create(Hi));
        Vector512<float> n = Vector512.Round(x * Vector512.Create(Log2E));
        Vector512<float> p = Polynomial(x, n);
        Vector512<float> result = Avx512F.Scale(p, n);
        return Vector512.ConditionalSelect(over, Vector512.Create(float.PositiveInfinity), result);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Polynomial(Vector512<float> x, Vector512<float> n)
    {
        Vector512<float> r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), x);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        Vector512<float> p = Vector512.Create(C0);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C5));
        return Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One);
    }

    private static Vector512<float> ExpByExponentBits(Vector512<float> x)
    {
        Vector512<float> under = Vector512.LessThan(x, Vector512.Create(Lo));
        Vector512<float> over = Vector512.GreaterThan(x, Vector512.Create(Hi));
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(Lo)), Vector512.Create(Hi));
        Vector512<float> n = Vector512.Round(x * Vector512.Create(Log2E));
        Vector512<float> p = Polynomial(x, n);
        // 2^n: n is in [-126, 128] after clamping; build it in two halves so n = 128 does not overflow the exponent.
        Vector512<int> ni = Vector512.ConvertToInt32(n);
        Vector512<int> half = ni >> 1;
        Vector512<float> s1 = ((half + Vector512.Create(127)) << 23).AsSingle();
        Vector512<float> s2 = ((ni - half + Vector512.Create(127)) << 23).AsSingle();
        Vector512<float> result = p * s1 * s2;
        result = Vector512.ConditionalSelect(under, Vector512<float>.Zero, result);
        return Vector512.ConditionalSelect(over, Vector512.Create(float.PositiveInfinity), result);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        Vector256<float> under = Vector256.LessThan(x, Vector256.Create(Lo));
        Vector256<float> over = Vector256.GreaterThan(x, Vector256.Create(Hi));
        x = Vector256.Min(Vector256.Max(x, Vector256.Create(Lo)), Vector256.Create(Hi));
        Vector256<float> n = Vector256.Round(x * Vector256.Create(Log2E));
        Vector256<float> r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        Vector256<float> p = Vector256.Create(C0);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C5));
        p = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        Vector256<int> ni = Vector256.ConvertToInt32(n);
        Vector256<int> half = ni >> 1;
        Vector256<float> s1 = ((half + Vector256.Create(127)) << 23).AsSingle();
        Vector256<float> s2 = ((ni - half + Vector256.Create(127)) << 23).AsSingle();
        Vector256<float> result = p * s1 * s2;
        result = Vector256.ConditionalSelect(under, Vector256<float>.Zero, result);
        return Vector256.ConditionalSelect(over, Vector256.Create(float.PositiveInfinity), result);
    }
}
