using Xunit;
using System.Numerics.Tensors;
using Attend.Cuda;

namespace Attend.Tests.Cuda;

/// <summary>The GPU path against the float64 reference (skipped, with the reason, where there is no GPU).</summary>
public class CudaForwardTests
{
    [CudaFact]
    public void DeviceBuffersAreCountedAndFreed()
    {
        long before = DeviceBuffer.LiveAllocations;
        var ctx = CudaContext.Default;
        using (var a = new DeviceBuffer(ctx, 1 << 20))
        using (var b = DeviceBuffer.From<int>(ctx, [1, 2, 3]))
        {
            Assert.Equal(before + 2, DeviceBuffer.LiveAllocations);
            var back = new int[3];
            b.CopyTo<int>(back);
            Assert.Equal([1, 2, 3], back);
        }
        Assert.Equal(before, DeviceBuffer.LiveAllocations);
    }

    [CudaFact]
    public void SameForwardCallRunsOnTheGpu()
    {
        CudaBackend.Register();
        long before = DeviceBuffer.LiveAllocations;
        Random rng = TestData.Rng(301);
        const int b = 2, tq = 77, tk = 131, h = 8, hkv = 2, d = 128;
        BFloat16[] q = TestData.Gaussian<BFloat16>(rng, b * tq * h * d), k = TestData.Gaussian<BFloat16>(rng, b * tk * hkv * d), v = TestData.Gaussian<BFloat16>(rng, b * tk * hkv * d);
        BFloat16[] o = TestData.Poisoned<BFloat16>(q.Length);
        float[] lse = TestData.Poisoned<float>(b * h * tq);
        var options = new AttentionOptions { Mask = new SlidingWindowMask(20, 0), Backend = "cuda" };
        AttentionKernel ran = Attention.Forward<BFloat16>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d),
            options, TestData.Bthd(o, b, tq, h, d), AttentionLayout.Lse(lse, b, h, tq));
        Assert.Equal("CudaFlashMma", ran.Name);
        ReferenceForwardResult exact = ReferenceAttention.Forward<BFloat16>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d), options);
        double err = RelativeL2(o, exact.Output, out int nan);
        Assert.True(nan == 0 && err <= 1e-2, $"seed {TestData.RunSeed}: rel {err}, {nan} NaN");
        Assert.True(TestData.LseError(lse, exact.Lse) < 1e-3, $"seed {TestData.RunSeed}");
        Assert.Equal(before, DeviceBuffer.LiveAllocations);
    }

    private static double RelativeL2(BFloat16[] actual, double[] expected, out int nan)
    {
        double diff = 0, norm = 0;
        nan = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double a = actual[i];
            if (double.IsNaN(a)) nan++;
            else diff += (a - expected[i]) * (a - expected[i]);
            norm += expected[i] * expected[i];
        }
        return Math.Sqrt(diff / Math.Max(norm, double.Epsilon));
    }

    [CudaFact]
    public void BackwardOnTheGpuMatchesTheReferenceAndRepeatsBitwise()
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(302);
        const int b = 1, t = 150, h = 4, hkv = 2, d = 64;
        BFloat16[] q = TestData.Gaussian<BFloat16>(rng, b * t * h * d), k = TestData.Gaussian<BFloat16>(rng, b * t * hkv * d),
            v = TestData.Gaussian<BFloat16>(rng, b * t * hkv * d), dO = TestData.Gaussian<BFloat16>(rng, b * t * h * d);
        var options = new AttentionOptions { Mask = new CausalMask(), Backend = "cuda", Deterministic = true };
        var o = new BFloat16[q.Length];
        var lse = new float[b * h * t];
        Attention.Forward<BFloat16>(TestData.Bthd(q, b, t, h, d), TestData.Bthd(k, b, t, hkv, d), TestData.Bthd(v, b, t, hkv, d), options,
            TestData.Bthd(o, b, t, h, d), AttentionLayout.Lse(lse, b, h, t));
        BFloat16[] Run(out BFloat16[] dk, out BFloat16[] dv)
        {
            BFloat16[] dq = TestData.Poisoned<BFloat16>(q.Length);
            dk = TestData.Poisoned<BFloat16>(k.Length);
            dv = TestData.Poisoned<BFloat16>(v.Length);
            Attention.Backward<BFloat16>(TestData.Bthd(q, b, t, h, d), TestData.Bthd(k, b, t, hkv, d), TestData.Bthd(v, b, t, hkv, d),
                TestData.Bthd(o, b, t, h, d), TestData.Bthd(dO, b, t, h, d), AttentionLayout.Lse(lse, b, h, t), options,
                TestData.Bthd(dq, b, t, h, d), TestData.Bthd(dk, b, t, hkv, d), TestData.Bthd(dv, b, t, hkv, d));
            return dq;
        }
        BFloat16[] dq1 = Run(out BFloat16[] dk1, out BFloat16[] dv1);
        BFloat16[] dq2 = Run(out BFloat16[] dk2, out BFloat16[] dv2);
        Assert.Equal(dq1, dq2);
        Assert.Equal(dk1, dk2);
        Assert.Equal(dv1, dv2);
        ReferenceBackwardResult exact = ReferenceAttention.Backward<BFloat16>(TestData.Bthd(q, b, t, h, d), TestData.Bthd(k, b, t, hkv, d),
            TestData.Bthd(v, b, t, hkv, d), TestData.Bthd(dO, b, t, h, d), options);
        foreach ((BFloat16[] got, double[] want, string name) in new[] { (dq1, exact.DQ, "dQ"), (dk1, exact.DK, "dK"), (dv1, exact.DV, "dV") })
        {
            double err = RelativeL2(got, want, out int nan);
            Assert.True(nan == 0 && err <= 2e-2, $"seed {TestData.RunSeed}: {name} rel {err}, {nan} NaN");
        }
    }

    [CudaFact]
    public void UnsupportedHeadDimRaisesTheReason()
    {
        CudaBackend.Register();
        var q = new BFloat16[4 * 2 * 96];
        var e = Assert.Throws<NotSupportedException>(() => Attention.Forward<BFloat16>(TestData.Bthd(q, 1, 4, 2, 96), TestData.Bthd(q, 1, 4, 2, 96),
            TestData.Bthd(q, 1, 4, 2, 96), new AttentionOptions { Backend = "cuda" }, TestData.Bthd(new BFloat16[q.Length], 1, 4, 2, 96)));
        Assert.Contains("head dim 96", e.Message);
    }
}
