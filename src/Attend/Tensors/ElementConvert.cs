using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Attend;

/// <summary>
/// Conversions between the supported element types and float32 (the accumulation type) or float64 (the reference).
/// The branches on <c>typeof(T)</c> are constants to the JIT, so each instantiation keeps one path.
/// </summary>
internal static unsafe class ElementConvert
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle<T>(T value) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<T, float>(ref value);
        if (typeof(T) == typeof(Half)) return (float)Unsafe.As<T, Half>(ref value);
        if (typeof(T) == typeof(BFloat16)) return BFloat16.ToSingle(Unsafe.As<T, BFloat16>(ref value));
        throw new NotSupportedException(typeof(T).Name);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T FromSingle<T>(float value) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<float, T>(ref value);
        if (typeof(T) == typeof(Half)) { Half h = (Half)value; return Unsafe.As<Half, T>(ref h); }
        if (typeof(T) == typeof(BFloat16)) { BFloat16 b = BFloat16.FromSingle(value); return Unsafe.As<BFloat16, T>(ref b); }
        throw new NotSupportedException(typeof(T).Name);
    }

    /// <summary>Widens <paramref name="count"/> elements to float32.</summary>
    public static void ToSingle<T>(T* source, float* destination, int count) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
        }
        else if (typeof(T) == typeof(Half))
        {
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, count), new Span<float>(destination, count));
        }
        else if (typeof(T) == typeof(BFloat16))
        {
            ushort* s = (ushort*)source;
            uint* d = (uint*)destination;
            int i = 0;
            if (Vector512.IsHardwareAccelerated)
            {
                for (; i + 16 <= count; i += 16)
                {
                    Vector512<uint> wide = Vector512.WidenLower(Vector512.Create(Vector256.Load(s + i), Vector256<ushort>.Zero));
                    (wide << 16).Store(d + i);
                }
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                for (; i + 8 <= count; i += 8)
                {
                    Vector256<uint> wide = Vector256.WidenLower(Vector256.Create(Vector128.Load(s + i), Vector128<ushort>.Zero));
                    (wide << 16).Store(d + i);
                }
            }
            for (; i < count; i++) d[i] = (uint)s[i] << 16;
        }
        else
        {
            throw new NotSupportedException(typeof(T).Name);
        }
    }

    /// <summary>Narrows <paramref name="count"/> float32 values to <typeparamref name="T"/> (round to nearest even).</summary>
    public static void FromSingle<T>(float* source, T* destination, int count) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
        }
        else if (typeof(T) == typeof(Half))
        {
            TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(source, count), new Span<Half>(destination, count));
        }
        else if (typeof(T) == typeof(BFloat16))
        {
            BFloat16* d = (BFloat16*)destination;
            for (int i = 0; i < count; i++) d[i] = BFloat16.FromSingle(source[i]);
        }
        else
        {
            throw new NotSupportedException(typeof(T).Name);
        }
    }
}
