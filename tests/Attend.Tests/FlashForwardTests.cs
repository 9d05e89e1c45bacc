using System.Numerics.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

public class FlashForwardTests(ITestOutputHelper output)
{
    public static TheoryData<string> Variants()
    {
        var data = new TheoryData<string>();
        foreach (AttentionKernel k in KernelRegistry.Softmax)
            if (k.IsSupported(new KernelProblem(AttentionPass.Forward, ElementType.Float32, 1, 8, 2, 64, 100, 100), out _) || k.Name.StartsWith("CpuFlash", StringComparison.Ordinal))
                data.Add(k.Name);
        return data;
    }

    private void Check(string variant, int b, int tq, int tk, int h, int hkv, int d, AttentionOptions options, int salt, double tol = 1e-5)
    {
        AttentionKernel kernel = KernelRegistry.Find(variant)!;
        var problem = new KernelProblem(AttentionPass.Forward, ElementType.Float32, b, h, hkv, d, tq, tk);
        if (!kernel.IsSupported(problem, out string why))
        {
            output.WriteLine($"skip {variant}: {why}");
            return;
        }
        var rng = TestData.Rng(salt);
        float[] q = TestData.Gaussian<float>(rng, (long)b * tq * h * d);
        float[] k = TestData.Gaussian<float>(rng, (long)b * tk * hkv * d);
        float[] v = TestData.Gaussian<float>(rng, (long)b * tk * hkv * d);
        float[] o = TestData.Poisoned<float>((long)b * tq * h * d);
        float[] lse = TestData.Poisoned<float>((long)b * h * tq);
        options = options with { Variant = variant };
        Attention.Forward<float>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d), options,
            TestData.Bthd(o, b, tq, h, d), AttentionLayout.Lse(lse, b, h, tq));
        ReferenceForwardResult r = ReferenceAttention.Forward<float>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d), options);
        double err = TestData.RelativeError<float>(o, r.Output);
        double lseErr = TestData.LseError(lse, r.Lse);
        string what = $"seed {TestData.RunSeed} salt {salt} {variant} b{b} tq{tq} tk{tk} h{h}/{hkv} d{d} mask {options.Mask}: err {err:E2} lse {lseErr:E2}";
        output.WriteLine(what);
        Assert.True(err <= tol, what);
        Assert.True(lseErr <= 1e-5, what);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void MatchesReferenceOnBasicShapes(string variant)
    {
        Check(variant, 1, 1, 1, 1, 1, 32, AttentionOptions.Default, 1);
        Check(variant, 1, 7, 7, 2, 1, 64, AttentionOptions.Default, 2);
        Check(variant, 2, 70, 70, 4, 2, 64, new AttentionOptions { Mask = new CausalMask() }, 3);
        Check(variant, 1, 130, 200, 8, 2, 128, new AttentionOptions { Mask = new CausalMask() }, 4);
        Check(variant, 1, 200, 130, 5, 1, 80, new AttentionOptions { Mask = new CausalMask() }, 5);
        Check(variant, 1, 3, 300, 8, 2, 96, new AttentionOptions { Mask = new CausalMask() }, 6);
        Check(variant, 1, 150, 150, 2, 2, 256, new AttentionOptions { Mask = new SlidingWindowMask(17, 5) }, 7);
    }
}
