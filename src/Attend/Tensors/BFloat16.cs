using System.Globalization;
using System.Runtime.CompilerServices;

namespace Attend;

/// <summary>
/// Brain floating point: the upper 16 bits of an IEEE float32 (1 sign, 8 exponent, 7 mantissa bits).
/// Conversion from <see cref="float"/> rounds to nearest, ties to even; NaN stays NaN (quiet).
/// The project owns this type so that its rounding is specified and tested, not left to a platform version.
/// </summary>
public readonly struct BFloat16 : IEquatable<BFloat16>, IComparable<BFloat16>, IFormattable
{
    /// <summary>The raw bit pattern.</summary>
    public ushort Bits { get; }

    private BFloat16(ushort bits) => Bits = bits;

    /// <summary>Creates a value from its raw bit pattern.</summary>
    public static BFloat16 FromBits(ushort bits) => new(bits);

    /// <summary>Positive zero.</summary>
    public static BFloat16 Zero => new(0);

    /// <summary>One.</summary>
    public static BFloat16 One => new(0x3F80);

    /// <summary>Positive infinity.</summary>
    public static BFloat16 PositiveInfinity => new(0x7F80);

    /// <summary>Negative infinity.</summary>
    public static BFloat16 NegativeInfinity => new(0xFF80);

    /// <summary>A quiet NaN.</summary>
    public static BFloat16 NaN => new(0x7FC0);

    /// <summary>The largest finite value (about 3.39e38).</summary>
    public static BFloat16 MaxValue => new(0x7F7F);

    /// <summary>Distance from 1 to the next larger value, 2^-7.</summary>
    public static float Epsilon => 0.0078125f;

    /// <summary>Rounds a float32 to the nearest BFloat16, ties to even.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static BFloat16 FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
        {
            // NaN: keep the sign and the top of the payload, force the quiet bit so the result stays NaN.
            return new BFloat16((ushort)((bits >> 16) | 0x0040u));
        }
        uint lsb = (bits >> 16) & 1u;
        uint rounded = bits + 0x7FFFu + lsb;
        return new BFloat16((ushort)(rounded >> 16));
    }

    /// <summary>Widens to float32 exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(BFloat16 value) => BitConverter.UInt32BitsToSingle((uint)value.Bits << 16);

    /// <summary>Rounds a float32 to the nearest BFloat16, ties to even.</summary>
    public static explicit operator BFloat16(float value) => FromSingle(value);

    /// <summary>Rounds a float64 to the nearest BFloat16 (through float32; double rounding is possible only within 2^-24 of a tie).</summary>
    public static explicit operator BFloat16(double value) => FromSingle((float)value);

    /// <summary>Widens to float32 exactly.</summary>
    public static implicit operator float(BFloat16 value) => ToSingle(value);

    /// <summary>Widens to float64 exactly.</summary>
    public static implicit operator double(BFloat16 value) => ToSingle(value);

    /// <summary>True when the value is NaN.</summary>
    public static bool IsNaN(BFloat16 value) => (value.Bits & 0x7FFF) > 0x7F80;

    /// <summary>True when the value is neither infinite nor NaN.</summary>
    public static bool IsFinite(BFloat16 value) => (value.Bits & 0x7F80) != 0x7F80;

    /// <inheritdoc/>
    public bool Equals(BFloat16 other) => ToSingle(this).Equals(ToSingle(other));

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is BFloat16 other && Equals(other);

    /// <inheritdoc/>
    public override int GetHashCode() => ToSingle(this).GetHashCode();

    /// <inheritdoc/>
    public int CompareTo(BFloat16 other) => ToSingle(this).CompareTo(ToSingle(other));

    /// <summary>IEEE equality (NaN is not equal to itself; +0 equals -0).</summary>
    public static bool operator ==(BFloat16 left, BFloat16 right) => ToSingle(left) == ToSingle(right);

    /// <summary>IEEE inequality.</summary>
    public static bool operator !=(BFloat16 left, BFloat16 right) => ToSingle(left) != ToSingle(right);

    /// <inheritdoc/>
    public override string ToString() => ToSingle(this).ToString(CultureInfo.InvariantCulture);

    /// <inheritdoc/>
    public string ToString(string? format, IFormatProvider? formatProvider) => ToSingle(this).ToString(format, formatProvider);
}
