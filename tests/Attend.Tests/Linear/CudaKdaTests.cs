using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;
using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// Kimi Delta Attention on the GPU (<see cref="CudaDeltaRulePlan"/> with <see cref="LinearDecay.ChannelGate"/>): which
/// configurations it takes and why it refuses the others, its kernel source and shared memory (no GPU needed), the route
/// of the <c>kda</c> method to the cuda backend, and on a GPU the chunked and recurrent forms against the float64 naive
/// form (skipped, with the reason, where there is no GPU).
/// </summary>
public class CudaKdaTests
{
    private static LinearAttentionOptions Kda(LinearForm form) =>
        new() { Update = LinearUpdate.GatedDelta, Decay = LinearDecay.ChannelGate, Form = form };

    [Theory]
    [InlineData(LinearForm.Chunked, 128, 128)]
    [InlineData(LinearForm.Chunked, 64, 64)]
    [InlineData(LinearForm.Chunked, 64, 256)]
    [InlineData(LinearForm.Chunked, 128, 192)]
    [InlineData(LinearForm.Recurrent, 96, 40)]
    [InlineData(LinearForm.Recurrent, 256, 128)]
    public void KdaRunsInBothElementTypes(LinearForm form, int dk, int dv)
    {
        // Every factor the KDA kernels put on an fp16 operand is at most 1 (the diagonal blocks are float32), so fp16 is
        // taken as bf16 is (GLA's channel gate, which scales operands by up to e^80, refuses it).
        var shape = new LinearShape(1, 100, 4, 2, dk, dv);
        foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            Assert.True(CudaDeltaRulePlan.IsSupported(shape, type, Kda(form), out string reason), reason);
    }

    [Theory]
    [InlineData(LinearForm.Chunked, 96, 128, "key dims 64 and 128")]
    [InlineData(LinearForm.Chunked, 256, 128, "key dims 64 and 128")]
    [InlineData(LinearForm.Chunked, 128, 96, "multiples of 64")]
    [InlineData(LinearForm.Recurrent, 12, 128, "multiples of 8 up to 256")]
    [InlineData(LinearForm.Naive, 128, 128, "float64")]
    public void KdaShapesTheKernelsDoNotTakeAreRefusedByName(LinearForm form, int dk, int dv, string expected)
    {
        Assert.False(CudaDeltaRulePlan.IsSupported(new LinearShape(1, 100, 4, 2, dk, dv), ElementType.BFloat16, Kda(form), out string reason));
        Assert.Contains(expected, reason);
    }

    [Fact]
    public void TheChannelGateNeedsTheGatedDeltaUpdateAndFloat32IsRefused()
    {
        var shape = new LinearShape(1, 100, 4, 2, 128, 128);
        var delta = new LinearAttentionOptions { Update = LinearUpdate.Delta, Decay = LinearDecay.ChannelGate };
        Assert.False(CudaDeltaRulePlan.IsSupported(shape, ElementType.BFloat16, delta, out string reason));
        Assert.Contains("GatedDelta", reason);
        Assert.False(CudaDeltaRulePlan.IsSupported(shape, ElementType.Float32, Kda(LinearForm.Chunked), out reason));
        Assert.Contains("f32", reason);
    }

    [Fact]
    public void TheKdaBackwardTakesTheChunkedFormAndRefusesTheRestByName()
    {
        // The chunked KDA backward (attend_kda_bwd_chunk and the GATE 2 reverse chain): Dk and Dv 64/128, bf16 and fp16.
        foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            foreach ((int dk, int dv) in ((int, int)[])[(128, 128), (64, 64), (64, 128), (128, 64)])
                Assert.True(CudaDeltaRulePlan.IsBackwardSupported(new LinearShape(1, 100, 4, 2, dk, dv), type, Kda(LinearForm.Chunked), out string why), why);
        Assert.False(CudaDeltaRulePlan.IsBackwardSupported(new LinearShape(1, 100, 4, 2, 128, 128), ElementType.BFloat16, Kda(LinearForm.Recurrent), out string reason));
        Assert.Contains("chunked", reason);
        Assert.False(CudaDeltaRulePlan.IsBackwardSupported(new LinearShape(1, 100, 4, 2, 128, 256), ElementType.BFloat16, Kda(LinearForm.Chunked), out reason));
        Assert.Contains("value dims 64 and 128", reason);
    }

    [Fact]
    public void KernelSourceHasTheKdaPrepareEntryAndItFitsTwoBlocksPerSm()
    {
        string source = KernelCompiler.Source(CudaDeltaRulePlan.Source);
        Assert.DoesNotContain("#include \"", source);
        Assert.Contains(CudaDeltaRulePlan.KdaPrepareEntry + "(", source);
        Assert.Contains(CudaDeltaRulePlan.ChunkEntry + "(", source);
        Assert.Contains("#if GATE != 2", source);   // the scalar-gate prepare kernel is not compiled into the KDA image
        // sm_90: 228 KB of shared memory per SM, 1 KB of it reserved per block: two blocks need at most 113 KB each.
        foreach (int dk in (int[])[64, 128])
        {
            int bytes = CudaDeltaRulePlan.KdaPrepareSharedBytes(dk);
            Assert.InRange(bytes, CudaDeltaRulePlan.PrepareSharedBytes(dk) / 2, 113 * 1024);
        }
        Assert.True(CudaDeltaRulePlan.KdaPrepareSharedBytes(128) > CudaDeltaRulePlan.KdaPrepareSharedBytes(64));
    }

    [Fact]
    public void TheKdaMethodNamesTheCudaBackendAndTheNaiveFormStaysOnTheCpu()
    {
        var method = new KimiDeltaAttentionMethod();
        Assert.Contains("cuda", method.Info.Backends);
        LinearAttentionOptions chunked = LinearMethod.WithBackend(Kda(LinearForm.Chunked), "cuda");
        Assert.Equal("cuda", chunked.Backend);
        NotSupportedException e = Assert.Throws<NotSupportedException>(() => LinearMethod.WithBackend(Kda(LinearForm.Naive), "cuda"));
        Assert.Contains("naive", e.Message);
    }

    [Attend.Tests.Cuda.NoGpuFact]
    public void TheCudaBackendSaysWhyItCannotRunKdaHere()
    {
        Assert.False(CudaBackend.IsAvailable(out string why));
        CudaBackend.Register();
        LinearCase c = LinearCase.Create(TestData.Rng(975), new LinearShape(1, 9, 2, 2, 64, 64),
            Kda(LinearForm.Chunked) with { FeatureMap = FeatureMaps.L2Norm, Backend = "cuda" });
        var o = TestData.Poisoned<float>(c.OutputLength);
        NotSupportedException e = Assert.Throws<NotSupportedException>(() => LinearAttention.Forward(c.Inputs, c.Options, o, []));
        Assert.Contains(why, e.Message);
    }

    [Fact]
    public void AKdaShapeTheGpuRefusesIsRefusedBeforeTheGpuIsLookedFor()
    {
        // Dk 96 chunked: the reason names the key dims on any machine, with or without a GPU.
        CudaBackend.Register();
        LinearCase c = LinearCase.Create(TestData.Rng(976), new LinearShape(1, 9, 2, 2, 96, 64),
            Kda(LinearForm.Chunked) with { FeatureMap = FeatureMaps.L2Norm, Backend = "cuda" });
        var o = TestData.Poisoned<float>(c.OutputLength);
        NotSupportedException e = Assert.Throws<NotSupportedException>(() => LinearAttention.Forward(c.Inputs, c.Options, o, []));
        Assert.Contains("key dims 64 and 128", e.Message);
    }

    [CudaLinearTheory]
    [InlineData(LinearForm.Chunked, 0, 128)]
    [InlineData(LinearForm.Chunked, 1, 64)]
    [InlineData(LinearForm.Recurrent, 1, 128)]
    public void GpuKdaMatchesTheFloat64NaiveForm(LinearForm form, int varlen, int dk)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(985 + (int)form * 3 + varlen);
        int[]? lengths = varlen == 1 ? [1, rng.Next(2, 90), 0, rng.Next(130, 300)] : null;
        var shape = new LinearShape(2, rng.Next(65, 260) | 1, 4, 2, dk, 128);
        var options = Kda(form) with { FeatureMap = FeatureMaps.L2Norm, Backend = "cuda", Scale = 0.125f };
        LinearCase c = LinearCase.Create(rng, shape, options, lengths, qkScale: 1.0);
        c.AssertMatchesNaive(1e-2);
    }

    [CudaLinearTheory]
    [InlineData(0)]
    public void CheckCommandKdaCasesPassOnTheGpu(int unused)
    {
        _ = unused;
        var output = new StringWriter();
        var error = new StringWriter();
        (int passed, int failed) = Attend.Cli.CudaKdaCheck.Run(TestData.RunSeed, output, error);
        Assert.True(failed == 0 && passed > 0, $"seed {TestData.RunSeed}: {error}");
    }

    [CudaLinearTheory]
    [InlineData(0)]
    public void CheckCommandKdaBackwardCasesPassOnTheGpu(int unused)
    {
        _ = unused;
        var output = new StringWriter();
        var error = new StringWriter();
        (int passed, int failed) = Attend.Cli.CudaDeltaCheck.RunKdaBackward(TestData.RunSeed, output, error);
        Assert.True(failed == 0 && passed > 0, $"seed {TestData.RunSeed}: {error}");
    }
}
