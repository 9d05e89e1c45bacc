using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>
/// Backward with Half and BFloat16 inputs. The kernel works in float32 on the converted inputs, so against the float64
/// reference on the same (already rounded) inputs its error comes from two roundings to the element type: the forward
/// output O it is handed (through δ = Σ dO⊙O) and the gradients it writes. The bound is four units of that type's
/// rounding (2^-11 for Half, 2^-8 for BFloat16), measured like every gradient test (relative, floor 0.1).
/// </summary>
public class LowPrecisionBackwardTests(ITestOutputHelper output)
{
    public static TheoryData<string> Variants() => new() { "CpuFlashVector512", "CpuFlashVector256", "CpuFlashVector128" };

    [Theory]
    [MemberData(nameof(Variants))]
    public void HalfGradientsWithinFourRoundings(string variant) => Check<Half>(variant, 4 * Math.Pow(2, -11), 501);

    [Theory]
    [MemberData(nameof(Variants))]
    public void BFloat16GradientsWithinFourRoundings(string variant) => Check<BFloat16>(variant, 4 * Math.Pow(2, -8), 502);

    private void Check<T>(string variant, double tolerance, int salt) where T : unmanaged
    {
        if (!KernelRegistry.Find(variant)!.IsSupported(new KernelProblem(AttentionPass.Backward, ElementTypes.Of<T>(), 1, 1, 1, 64, 64, 64), out string why))
        {
            output.WriteLine($"skip: {why}");
            return;
        }
        var rng = TestData.Rng(salt);
        foreach ((int b, int tq, int tk, int h, int hkv, int d, IMaskMod? mask) in new (int, int, int, int, int, int, IMaskMod?)[]
        {
            (1, 70, 70, 4, 2, 64, new CausalMask()),
            (2, 33, 100, 6, 3, 80, new SlidingWindowMask(40, 0)),
            (1, 129, 129, 2, 1, 128, null),
        })
        {
            T[] q = TestData.Gaussian<T>(rng, (long)b * tq * h * d), dO = TestData.Gaussian<T>(rng, (long)b * tq * h * d);
            T[] k = TestData.Gaussian<T>(rng, (long)b * tk * hkv * d), v = TestData.Gaussian<T>(rng, (long)b * tk * hkv * d);
            T[] o = TestData.Poisoned<T>(q.Length), dq = TestData.Poisoned<T>(q.Length);
            T[] dk = TestData.Poisoned<T>(k.Length), dv = TestData.Poisoned<T>(v.Length);
            float[] lse = TestData.Poisoned<float>((long)b * h * tq);
            var options = new AttentionOptions { Mask = mask, Variant = variant };
            Attention.Forward<T>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d), options,
                TestData.Bthd(o, b, tq, h, d), AttentionLayout.Lse(lse, b, h, tq));
            Attention.Backward<T>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d),
                TestData.Bthd(o, b, tq, h, d), TestData.Bthd(dO, b, tq, h, d), AttentionLayout.Lse(lse, b, h, tq), options,
                TestData.Bthd(dq, b, tq, h, d), TestData.Bthd(dk, b, tk, hkv, d), TestData.Bthd(dv, b, tk, hkv, d));
            ReferenceBackwardResult r = ReferenceAttention.Backward<T>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d),
                TestData.Bthd(v, b, tk, hkv, d), TestData.Bthd(dO, b, tq, h, d), options with { Variant = null });
            double eq = Fidelity.MaxRelativeError<T>(dq, r.DQ, 0.1), ek = Fidelity.MaxRelativeError<T>(dk, r.DK, 0.1), ev = Fidelity.MaxRelativeError<T>(dv, r.DV, 0.1);
            string what = $"seed {TestData.RunSeed} {typeof(T).Name} {variant} b{b} tq{tq} tk{tk} h{h}/{hkv} d{d} {mask}: dQ {eq:E2} dK {ek:E2} dV {ev:E2} (bound {tolerance:E2})";
            output.WriteLine(what);
            Assert.True(eq <= tolerance && ek <= tolerance && ev <= tolerance, what);
        }
    }
}
