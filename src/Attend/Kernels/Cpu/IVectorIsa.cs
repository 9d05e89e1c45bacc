namespace Attend.Kernels.Cpu;

/// <summary>
/// The vector operations CPU kernels are written against. Implemented by <see cref="Isa512"/>, <see cref="Isa256"/>
/// and <see cref="Isa128"/> (the width Arm64's NEON gives .NET); kernels are generic over the struct, so each width
/// gets its own specialised code and every call inlines (the TensorPrimitives operator idiom).
/// </summary>
internal unsafe interface IVectorIsa<TVec> where TVec : unmanaged
{
    /// <summary>Floats per vector.</summary>
    static abstract int Width { get; }

    /// <summary>True when the hardware runs this width natively.</summary>
    static abstract bool IsSupported { get; }

    /// <summary>Name used in variant names: Vector512, Vector256, Vector128.</summary>
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

    static abstract TVec Min(TVec a, TVec b);

    /// <summary>Round to nearest integer, ties to even.</summary>
    static abstract TVec Round(TVec x);

    /// <summary>p · 2^n for integral n in [−150, 128], rounding to subnormals or 0 on underflow.</summary>
    static abstract TVec ScaleByPowerOfTwo(TVec p, TVec n);

    /// <summary>e^x (see <see cref="FastExp"/>).</summary>
    static abstract TVec Exp(TVec x);

    /// <summary>All-ones lanes where a &gt; b.</summary>
    static abstract TVec GreaterThan(TVec a, TVec b);

    /// <summary>All-ones lanes where a == b.</summary>
    static abstract TVec Equal(TVec a, TVec b);

    /// <summary>Lanes of <paramref name="whenTrue"/> where <paramref name="condition"/> is all-ones, else of <paramref name="whenFalse"/>.</summary>
    static abstract TVec Select(TVec condition, TVec whenTrue, TVec whenFalse);

    static abstract float Sum(TVec v);

    static abstract float MaxAcross(TVec v);
}
