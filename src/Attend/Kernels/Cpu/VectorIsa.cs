using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Attend.Kernels.Cpu;

/// <summary>
/// The vector operations CPU kernels are written against. Implemented by <see cref="Isa512"/> and
/// <see cref="Isa256"/>; kernels are generic over the struct, so each width gets its own specialised code and every
/// call inlines (the TensorPrimitives operator idiom).
/// </summary>
internal unsafe interface IVectorIsa<TVec> where TVec : unmanaged
{
    /// <summary>Floats per vector.</summary>
    static abstract int Width { get; }

    /// <summary>True when the hardware runs this width natively.</summary>
    static abstract bool IsSupported { get; }

    /// <summary>Name used in variant names: Vector512, Vector256.</summary>
    static abstract string Name { get; }

    static abstract TVec Zero { get; }

    static abstract TVec Load(float* p);

    static abstract void Store(TVec v, float* p);

    static abstract TVec Splat(float x);

    /// <summary>a·b + c, fused.</summary>
    static abstract TVec Fma(TVec a, TVec b, TVec c);

    static abstract TVec Mul(TVec a, TVec b);

    static abstract TVec Add(TVec a, TVec b);

    static abstract TVec Sub(TVec a, TVec b);

    static abstract TVec Max(TVec a, TVec b);

    static abstract TVec Exp(TVec x);

    /// <summary>All-ones lanes where a == b.</summary>
    static abstract TVec Equal(TVec a, TVec b);

    /// <summary>Lanes of <paramref name="whenTrue"/> where <paramref name="condition"/> is all-ones, else of <paramref name="whenFalse"/>.</summary>
    static abstract TVec Select(TVec condition, TVec whenTrue, TVec whenFalse);

    static abstract float Sum(TVec v);

    static abstract float MaxAcross(TVec v);
}

/// <summary>AVX-512 (or any 512-bit SIMD) operations.</summary>
internal readonly unsafe struct Isa512 : IVectorIsa<Vector512<float>>
{
    public static int Width => 16;
    public static bool IsSupported => Vector512.IsHardwareAccelerated;
    public static string Name => "Vector512";
    public static Vector512<float> Zero => Vector512<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load(float* p) => Vector512.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector512<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Splat(float x) => Vector512.Create(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Mul(Vector512<float> a, Vector512<float> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Sub(Vector512<float> a, Vector512<float> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Vector512.Max(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Exp(Vector512<float> x) => FastExp.Exp(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Equal(Vector512<float> a, Vector512<float> b) => Vector512.Equals(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Select(Vector512<float> c, Vector512<float> t, Vector512<float> f) => Vector512.ConditionalSelect(c, t, f);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector512<float> v) => Vector512.Sum(v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float MaxAcross(Vector512<float> v) => Isa256.MaxAcross(Vector256.Max(v.GetLower(), v.GetUpper()));
}

/// <summary>AVX2 (or any 256-bit SIMD) operations.</summary>
internal readonly unsafe struct Isa256 : IVectorIsa<Vector256<float>>
{
    public static int Width => 8;
    public static bool IsSupported => Vector256.IsHardwareAccelerated;
    public static string Name => "Vector256";
    public static Vector256<float> Zero => Vector256<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load(float* p) => Vector256.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector256<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Splat(float x) => Vector256.Create(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Mul(Vector256<float> a, Vector256<float> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Sub(Vector256<float> a, Vector256<float> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Vector256.Max(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Exp(Vector256<float> x) => FastExp.Exp(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Equal(Vector256<float> a, Vector256<float> b) => Vector256.Equals(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Select(Vector256<float> c, Vector256<float> t, Vector256<float> f) => Vector256.ConditionalSelect(c, t, f);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector256<float> v) => Vector256.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(Vector256<float> v)
    {
        Vector128<float> m = Vector128.Max(v.GetLower(), v.GetUpper());
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create(2, 3, 0, 1)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create(1, 0, 3, 2)));
        return m.ToScalar();
    }
}
