using Xunit;
using Attend.Cuda;
using Attend.Methods;
using Attend.Methods.Sparse;
using Attend.Tests.Cuda;

namespace Attend.Tests.CudaSparse;

/// <summary>Sparse plans on the GPU against float64 (skipped, with the reason, where there is no GPU).</summary>
public class CudaSparseForwardTests
{
    [CudaFact]
    public void VerticalSlashPlanRunsOnTheColumnSparseKernel()
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(901);
        const int b = 2, tq = 201, tk = 333, h = 4, hkv = 2, d = 128;
        VerticalSlashPlan plan = ColumnSparsePlanTests.RandomPlan(rng, new VerticalSlashPlan(b, h, tq, tk));
        float[] q = TestData.Gaussian<float>(rng, b * tq * h * d), k = TestData.Gaussian<float>(rng, b * tk * hkv * d), v = TestData.Gaussian<float>(rng, b * tk * hkv * d);
        float[] o = TestData.Poisoned<float>(q.Length), lse = TestData.Poisoned<float>(b * h * tq);
        VerticalSlashAttention.Forward<float>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d), plan,
            new AttentionOptions { Backend = "cuda" }, TestData.Bthd(o, b, tq, h, d), AttentionLayout.Lse(lse, b, h, tq));
        ReferenceForwardResult exact = VerticalSlashAttention.Reference<float>(TestData.Bthd(q, b, tq, h, d), TestData.Bthd(k, b, tk, hkv, d), TestData.Bthd(v, b, tk, hkv, d), plan);
        double err = TestData.RelativeError<float>(o, exact.Output);
        Assert.True(err <= 1e-2, $"seed {TestData.RunSeed}: rel {err}");
        Assert.True(TestData.LseError(lse, exact.Lse) < 1e-2, $"seed {TestData.RunSeed}");
    }

    [CudaFact]
    public void StaticPatternMethodRunsOnTheGpuThroughTheBackendScope()
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(902);
        const int b = 1, t = 390, h = 4, hkv = 1, d = 64;
        var inputs = new MethodInputs(new MethodTensor(TestData.Gaussian<float>(rng, b * t * h * d), b, t, h, d),
            new MethodTensor(TestData.Gaussian<float>(rng, b * t * hkv * d), b, t, hkv, d), new MethodTensor(TestData.Gaussian<float>(rng, b * t * hkv * d), b, t, hkv, d));
        IAttentionMethod method = MethodCatalog.FindRunnable("streaming-llm")!;
        MethodResult gpu = method.Run(inputs, MethodArguments.Parse(["window=70", "sinks=3"]), "cuda");
        MethodResult cpu = method.Run(inputs, MethodArguments.Parse(["window=70", "sinks=3"]), null);
        Assert.Contains(gpu.Report, r => r.Key == "kernel" && r.Value == "CudaFlashMmaFromFloat32");
        var reference = Array.ConvertAll(cpu.Output.Data, x => (double)x);
        double err = TestData.RelativeError<float>(gpu.Output.Data, reference);
        Assert.True(err <= 1e-2, $"seed {TestData.RunSeed}: rel {err}");
    }
}
