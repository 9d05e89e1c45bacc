using Xunit;
using System.Numerics.Tensors;
using Attend.Cuda;

namespace Attend.Tests.Cuda;

/// <summary>How the CUDA variant joins the registry: CPU calls never see it; CUDA calls say why when it cannot run.</summary>
public class CudaRegistryTests
{
    private static KernelProblem Problem(ElementType type = ElementType.BFloat16, int d = 128, AttentionPass pass = AttentionPass.Forward) =>
        new(pass, type, 1, 8, 2, d, 100, 100);

    [Fact]
    public void RegisteringTwiceIsHarmlessAndListsTheVariantOnce()
    {
        CudaBackend.Register();
        CudaBackend.Register();
        Assert.Single(KernelRegistry.Softmax, k => k.Name == "CudaFlashMma");
        Assert.Equal("cuda", KernelRegistry.Find("cudaflashmma")!.Backend);
    }

    [Fact]
    public void ANameTakenByAnotherVariantIsRefused()
    {
        CudaBackend.Register();
        Assert.Throws<ArgumentException>(() => KernelRegistry.Register(new Impostor()));
    }

    [Fact]
    public void CpuCallsNeverPickTheCudaVariant()
    {
        CudaBackend.Register();
        foreach (ElementType type in (ElementType[])[ElementType.Float32, ElementType.Float16, ElementType.BFloat16])
            Assert.Equal("cpu", KernelRegistry.Select(Problem(type), forced: null, backend: null).Backend);
    }

    [Fact]
    public void UnknownBackendIsAnArgumentError()
    {
        var e = Assert.Throws<ArgumentException>(() => KernelRegistry.Select(Problem(), null, "tpu"));
        Assert.Contains("tpu", e.Message);
    }

    [Fact]
    public void UnsupportedProblemsSayWhy()
    {
        var kernel = new CudaFlashKernel();
        Assert.False(kernel.IsSupported(Problem(ElementType.Float32), out string why));
        Assert.Contains("bf16 or fp16", why);
        Assert.False(kernel.IsSupported(Problem(d: 80), out why));
        Assert.Contains("head dim 80", why);
        bool gpu = CudaBackend.IsAvailable(out string noGpu);
        Assert.Equal(gpu, kernel.IsSupported(Problem(), out why));
        if (!gpu) Assert.Equal(noGpu, why);
        Assert.Equal(gpu, kernel.IsSupported(Problem(pass: AttentionPass.Backward), out why));
    }

    [NoGpuFact] // on a GPU machine CudaForwardTests cover the backend itself
    public void CudaBackendWithoutAGpuThrowsWithTheReason()
    {
        Assert.False(CudaBackend.IsAvailable(out string reason));
        CudaBackend.Register();
        var q = new BFloat16[2 * 8 * 64];
        var k = new BFloat16[2 * 2 * 64];
        var o = new BFloat16[q.Length];
        var e = Assert.Throws<NotSupportedException>(() => Attention.Forward<BFloat16>(
            AttentionLayout.Bthd<BFloat16>(q, 1, 2, 8, 64), AttentionLayout.Bthd<BFloat16>(k, 1, 2, 2, 64), AttentionLayout.Bthd<BFloat16>(k, 1, 2, 2, 64),
            new AttentionOptions { Backend = "cuda" }, AttentionLayout.Bthd<BFloat16>(o, 1, 2, 8, 64)));
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void ScoreModsTranslateOrAreRefused()
    {
        Assert.Equal(default, CudaScoreForm.Of(null, null));
        CudaScoreForm both = CudaScoreForm.Of(new ComposedScoreMod<SoftcapScoreMod, AlibiScoreMod>(new SoftcapScoreMod(30), AlibiScoreMod.Standard(4)));
        Assert.Equal(30f, both.Softcap);
        Assert.Equal(AlibiScoreMod.Standard(4).Slopes.ToArray(), both.AlibiSlopes);
        CudaScoreForm options = CudaScoreForm.Of(12f, AlibiScoreMod.Standard(2));
        Assert.Equal(12f, options.Softcap);
        Assert.NotNull(options.AlibiSlopes);
        var e = Assert.Throws<NotSupportedException>(() => CudaScoreForm.Of(new ComposedScoreMod<AlibiScoreMod, SoftcapScoreMod>(AlibiScoreMod.Standard(2), new SoftcapScoreMod(5))));
        Assert.Contains("soft caps and ALiBi", e.Message);
    }

    private sealed class Impostor : AttentionKernel
    {
        public override string Name => "CudaFlashMma";
        public override string Backend => "elsewhere";
        public override string Summary => "a different variant with a taken name";
        public override bool IsSupported(in KernelProblem problem, out string reason)
        {
            reason = "never";
            return false;
        }

        internal override void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score) => throw new InvalidOperationException();
    }
}
