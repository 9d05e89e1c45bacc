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
    public void UnsupportedHeadDimRaisesTheReason()
    {
        CudaBackend.Register();
        var q = new BFloat16[4 * 2 * 96];
        var e = Assert.Throws<NotSupportedException>(() => Attention.Forward<BFloat16>(TestData.Bthd(q, 1, 4, 2, 96), TestData.Bthd(q, 1, 4, 2, 96),
            TestData.Bthd(q, 1, 4, 2, 96), new AttentionOptions { Backend = "cuda" }, TestData.Bthd(new BFloat16[q.Length], 1, 4, 2, 96)));
        Assert.Contains("head dim 96", e.Message);
    }
}
