using System.Runtime.Intrinsics;
using Attend.Kernels.Cpu;
using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>The kernels' vector exp (every width) against Math.Exp.</summary>
public class FastExpTests(ITestOutputHelper output)
{
    private static float[] Exp512(float[] x)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i += 16) Isa512.Exp(Vector512.Create(x.AsSpan(i, 16))).CopyTo(r.AsSpan(i, 16));
        return r;
    }

    private static float[] Exp256(float[] x)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i += 8) Isa256.Exp(Vector256.Create(x.AsSpan(i, 8))).CopyTo(r.AsSpan(i, 8));
        return r;
    }

    private static float[] Exp128(float[] x)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i += 4) Isa128.Exp(Vector128.Create(x.AsSpan(i, 4))).CopyTo(r.AsSpan(i, 4));
        return r;
    }

    public static TheoryData<int> Widths() => new() { 512, 256, 128 };

    private bool Run(int width, float[] x, out float[] y)
    {
        bool accelerated = width switch { 512 => Isa512.IsSupported, 256 => Isa256.IsSupported, _ => Isa128.IsSupported };
        if (!accelerated) output.WriteLine($"Vector{width} not accelerated here; the software fallback is still checked");
        y = width switch { 512 => Exp512(x), 256 => Exp256(x), _ => Exp128(x) };
        return true;
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void RelativeErrorWithinFourTenthsOfAMillionthOnTheRange(int width)
    {
        const int n = 1 << 21; // multiple of 16
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = -87f + 175f * i / (n - 1);
        // Also every float near 0 and near integers multiples of ln 2 (range-reduction boundaries).
        for (int i = 0; i < 4096; i++) x[i] = (i - 2048) * 1e-6f;
        for (int i = 0; i < 4096; i++) x[4096 + i] = MathF.Round((i - 2048) * 0.04f) * 0.6931472f + ((i & 1) == 0 ? 1e-5f : -1e-5f);
        Run(width, x, out float[] y);
        double worst = 0;
        float at = 0;
        for (int i = 0; i < n; i++)
        {
            if (x[i] < -87f || x[i] > 88f) continue;
            double e = Math.Exp(x[i]);
            double rel = Math.Abs(y[i] - e) / e;
            if (!(rel <= worst)) { worst = rel; at = x[i]; }
        }
        output.WriteLine($"Vector{width}: worst relative error {worst:E3} at x = {at:R}");
        Assert.True(worst <= 4e-7, $"Vector{width}: relative error {worst:E3} at x = {at:R}");
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void UnderflowGivesExactZeroAndOverflowInfinity(int width)
    {
        float[] x = [float.NegativeInfinity, -1e30f, -1000f, -104f, -100f, -88f, -87.5f, -float.MaxValue, -87.4f, -90f, -95.5f, -200f, -1e10f, -3e38f, -88.5f, -120f,
            88.8f, 88.9f, 89f, 100f, 1000f, 1e10f, float.MaxValue, float.PositiveInfinity, 88.75f, 90f, 95f, 120f, 1e30f, 3e38f, 500f, 200f];
        Run(width, x, out float[] y);
        for (int i = 0; i < x.Length; i++)
        {
            if (x[i] < 0 && x[i] > -104f)
            {
                // Between −104 and −87.3, e^x is a subnormal float: either it (within one subnormal step) or 0 is right.
                double exact = Math.Exp(x[i]);
                Assert.True(y[i] == 0f || Math.Abs(y[i] - exact) <= 1.5e-45 + 1e-6 * exact, $"Vector{width}: exp({x[i]:R}) = {y[i]:R}, want {exact:R} or 0");
                continue;
            }
            float want = x[i] < 0 ? 0f : float.PositiveInfinity;
            Assert.True(BitConverter.SingleToUInt32Bits(y[i]) == BitConverter.SingleToUInt32Bits(want), $"Vector{width}: exp({x[i]:R}) = {y[i]:R}, want {want}");
        }
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void ExactAtZero(int width)
    {
        var x = new float[16];
        Run(width, x, out float[] y);
        Assert.All(y, v => Assert.Equal(1f, v));
    }
}
