using Xunit;

namespace Attend.Tests;

/// <summary>BFloat16 conversion: round to nearest, ties to even; NaN, infinities, overflow, subnormals; vector paths.</summary>
public class BFloat16Tests
{
    private static ushort Round(uint floatBits) => BFloat16.FromSingle(BitConverter.UInt32BitsToSingle(floatBits)).Bits;

    /// <summary>The nearest bf16 by explicit comparison of the two neighbours in double (ties to the even one).</summary>
    private static ushort NearestByComparison(uint bits)
    {
        float f = BitConverter.UInt32BitsToSingle(bits);
        ushort lo = (ushort)(bits >> 16), hi = (ushort)(lo + 1); // same sign; hi is farther from zero
        double x = f, a = BFloat16.ToSingle(BFloat16.FromBits(lo)), b = BFloat16.ToSingle(BFloat16.FromBits(hi));
        double da = Math.Abs(x - a), db = Math.Abs(x - b);
        if (da < db) return lo;
        if (db < da) return hi;
        return (lo & 1) == 0 ? lo : hi;
    }

    [Theory]
    [InlineData(0x3F808000u, 0x3F80)] // 1 + 2^-8: tie, lower neighbour 0x3F80 is even → down
    [InlineData(0x3F818000u, 0x3F82)] // tie, lower neighbour 0x3F81 is odd → up
    [InlineData(0xBF808000u, 0xBF80)] // negative tie down
    [InlineData(0xBF818000u, 0xBF82)] // negative tie up
    [InlineData(0x3F808001u, 0x3F81)] // just above a tie → up
    [InlineData(0x3F807FFFu, 0x3F80)] // just below a tie → down
    [InlineData(0x3F817FFFu, 0x3F81)]
    [InlineData(0x3F80FFFFu, 0x3F81)]
    [InlineData(0x3FFF8000u, 0x4000)] // tie carrying into the exponent
    public void RoundsToNearestEven(uint input, int expected) => Assert.Equal((ushort)expected, Round(input));

    [Theory]
    [InlineData(0x7F800001u)] // signalling NaN with its payload only in the low half
    [InlineData(0x7FC00000u)]
    [InlineData(0x7FBFFFFFu)]
    [InlineData(0xFF800001u)]
    [InlineData(0xFFFFFFFFu)]
    [InlineData(0x7FFF0000u)]
    public void NaNStaysQuietNaNWithItsSign(uint input)
    {
        ushort r = Round(input);
        Assert.True(BFloat16.IsNaN(BFloat16.FromBits(r)), $"0x{input:X8} → 0x{r:X4} is not NaN");
        Assert.True((r & 0x0040) != 0, $"0x{input:X8} → 0x{r:X4} is not quiet");
        Assert.Equal(input >> 31, (uint)r >> 15);
        Assert.True(float.IsNaN(BFloat16.ToSingle(BFloat16.FromBits(r))));
    }

    [Fact]
    public void InfinitiesAndOverflow()
    {
        Assert.Equal(0x7F80, BFloat16.FromSingle(float.PositiveInfinity).Bits);
        Assert.Equal(0xFF80, BFloat16.FromSingle(float.NegativeInfinity).Bits);
        Assert.Equal(0x7F80, BFloat16.FromSingle(float.MaxValue).Bits);  // rounds up past the largest bf16
        Assert.Equal(0xFF80, BFloat16.FromSingle(float.MinValue).Bits);
        Assert.Equal(0x7F80, Round(0x7F7F8000u)); // tie above MaxValue (odd mantissa) → Inf
        Assert.Equal(0x7F7F, Round(0x7F7F7FFFu)); // just below the tie → MaxValue
        Assert.Equal(0x7F7F, BFloat16.MaxValue.Bits);
        Assert.Equal(float.PositiveInfinity, BFloat16.ToSingle(BFloat16.PositiveInfinity));
        Assert.Equal(float.NegativeInfinity, (float)BFloat16.NegativeInfinity);
        Assert.False(BFloat16.IsFinite(BFloat16.PositiveInfinity));
        Assert.True(BFloat16.IsFinite(BFloat16.MaxValue));
    }

    [Fact]
    public void SubnormalsAndZeros()
    {
        Assert.Equal(0x0000, Round(0x00008000u)); // tie to even zero
        Assert.Equal(0x0002, Round(0x00018000u)); // tie to even 2
        Assert.Equal(0x0001, Round(0x00008001u));
        Assert.Equal(0x0000, Round(0x00000001u)); // float.Epsilon → +0
        Assert.Equal(0x8000, Round(0x80000001u)); // −float.Epsilon → −0
        Assert.Equal(0x0080, Round(0x007FFFFFu)); // largest float subnormal rounds up to the smallest normal
        Assert.Equal(0x007F, Round(0x007F0000u));
        Assert.Equal(0x8000, BFloat16.FromSingle(-0f).Bits);
        Assert.Equal(0x0000, BFloat16.FromSingle(0f).Bits);
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x00010000u), BFloat16.ToSingle(BFloat16.FromBits(0x0001)));
    }

    [Fact]
    public void EveryBitPatternRoundTripsThroughFloat()
    {
        for (int i = 0; i <= 0xFFFF; i++)
        {
            var b = BFloat16.FromBits((ushort)i);
            float f = BFloat16.ToSingle(b);
            Assert.Equal((uint)i << 16, BitConverter.SingleToUInt32Bits(f));
            ushort back = BFloat16.FromSingle(f).Bits;
            if (BFloat16.IsNaN(b))
            {
                Assert.True(BFloat16.IsNaN(BFloat16.FromBits(back)), $"0x{i:X4}");
                Assert.Equal(i >> 15, back >> 15);
                if ((i & 0x0040) != 0) Assert.Equal((ushort)i, back); // quiet NaNs keep their bits
            }
            else
            {
                Assert.Equal((ushort)i, back);
            }
        }
    }

    [Fact]
    public void RandomFloatsRoundToTheNearestNeighbour()
    {
        var rng = TestData.Rng(101);
        for (int n = 0; n < 2_000_000; n++)
        {
            uint bits = (uint)rng.NextInt64(0, 1L << 32);
            if (n % 4 == 0) bits = (bits & 0xFFFF0000u) | 0x8000u; // many exact ties
            if ((bits & 0x7FFFFFFFu) >= 0x7F7F8000u) continue; // NaN, Inf and overflow are tested separately
            ushort got = Round(bits), want = NearestByComparison(bits);
            if (got != want) Assert.Fail($"seed {TestData.RunSeed}: 0x{bits:X8} → 0x{got:X4}, nearest-even is 0x{want:X4}");
        }
    }

    private static float[] SpecialAndRandomFloats(Random rng, int n)
    {
        float[] specials = [0f, -0f, 1f, -1f, 65504f, 65520f, 1e-8f, 6.1e-5f, 5.96e-8f, 1e30f, float.PositiveInfinity, float.NegativeInfinity,
            float.NaN, float.MaxValue, float.Epsilon, BitConverter.UInt32BitsToSingle(0x3F808000u), BitConverter.UInt32BitsToSingle(0x3F818000u)];
        var a = new float[n];
        for (int i = 0; i < n; i++)
            a[i] = rng.Next(3) == 0 ? specials[rng.Next(specials.Length)] : (float)((rng.NextDouble() - 0.5) * Math.Pow(2, rng.Next(-30, 30)));
        return a;
    }

    private static unsafe void CheckVectorPaths<T>(Func<T, ushort> bitsOf, Func<T, bool> isNaN) where T : unmanaged
    {
        var rng = TestData.Rng(102 + typeof(T).Name.Length);
        for (int n = 0; n <= 70; n++)
        {
            float[] src = SpecialAndRandomFloats(rng, n);
            // Narrowing: vector path into a buffer one longer than needed (the extra element must stay untouched).
            var narrow = new T[n + 1];
            T sentinel = ElementConvert.FromSingle<T>(12345f);
            narrow[n] = sentinel;
            fixed (float* ps = src) fixed (T* pd = narrow) ElementConvert.FromSingle(ps, pd, n);
            Assert.Equal(bitsOf(sentinel), bitsOf(narrow[n]));
            for (int i = 0; i < n; i++)
            {
                T scalar = ElementConvert.FromSingle<T>(src[i]);
                if (isNaN(scalar)) Assert.True(isNaN(narrow[i]), $"{typeof(T).Name} n={n} i={i}: NaN lost");
                else Assert.True(bitsOf(scalar) == bitsOf(narrow[i]), $"{typeof(T).Name} n={n} i={i}: {src[i]:R} → 0x{bitsOf(narrow[i]):X4}, scalar 0x{bitsOf(scalar):X4}");
            }
            // Widening.
            var wide = new float[n + 1];
            wide[n] = 777f;
            fixed (T* ps = narrow) fixed (float* pd = wide) ElementConvert.ToSingle(ps, pd, n);
            Assert.Equal(777f, wide[n]);
            for (int i = 0; i < n; i++)
            {
                float scalar = ElementConvert.ToSingle(narrow[i]);
                if (float.IsNaN(scalar)) Assert.True(float.IsNaN(wide[i]));
                else Assert.True(BitConverter.SingleToUInt32Bits(scalar) == BitConverter.SingleToUInt32Bits(wide[i]), $"{typeof(T).Name} widen n={n} i={i}");
            }
        }
    }

    [Fact]
    public void ElementConvertVectorPathsEqualScalarForBFloat16() => CheckVectorPaths<BFloat16>(b => b.Bits, BFloat16.IsNaN);

    [Fact]
    public void ElementConvertVectorPathsEqualScalarForHalf() => CheckVectorPaths<Half>(BitConverter.HalfToUInt16Bits, Half.IsNaN);

    [Fact]
    public unsafe void ElementConvertFloatIsACopy()
    {
        var rng = TestData.Rng(103);
        for (int n = 0; n <= 70; n++)
        {
            float[] src = SpecialAndRandomFloats(rng, n);
            var dst = new float[n + 1];
            dst[n] = 5f;
            fixed (float* ps = src) fixed (float* pd = dst) ElementConvert.ToSingle(ps, pd, n);
            for (int i = 0; i < n; i++) Assert.Equal(BitConverter.SingleToUInt32Bits(src[i]), BitConverter.SingleToUInt32Bits(dst[i]));
            Assert.Equal(5f, dst[n]);
        }
    }
}
