using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// The backend hook of <see cref="LinearAttention"/> and the CUDA linear kernels through it (the GPU facts skip, with
/// the reason, where there is no GPU): chunked and recurrent forms against the float64 naive form on bf16-rounded
/// inputs, NaN-poisoned outputs and states.
/// </summary>
public class CudaLinearTests
{
    [Fact]
    public void UnknownBackendIsRefusedByName()
    {
        LinearCase c = LinearCase.Create(TestData.Rng(901), LinearShape.Mha(1, 9, 2, 8), new LinearAttentionOptions { Backend = "no-such-gpu" });
        var o = new float[c.Q.Length];
        ArgumentException e = Assert.Throws<ArgumentException>(() => LinearAttention.Forward(c.Inputs, c.Options, o, []));
        Assert.Contains("no-such-gpu", e.Message);
    }

    [Fact]
    public void CpuBackendNameIsTheCpuEngine()
    {
        LinearCase c = LinearCase.Create(TestData.Rng(902), LinearShape.Mha(1, 37, 2, 16), new LinearAttentionOptions { HeadDecay = [0.9f, 0.5f] });
        float[] plain = TestData.Poisoned<float>(c.Q.Length), named = TestData.Poisoned<float>(c.Q.Length);
        LinearAttention.Forward(c.Inputs, c.Options, plain, []);
        LinearAttention.Forward(c.Inputs, c.Options with { Backend = "CPU" }, named, []);
        Assert.Equal(plain, named);
    }

    [Fact]
    public void BackwardOnABackendWithoutOneSaysItIsMissing()
    {
        LinearBackends.Register(new ForwardOnlyBackend());
        LinearCase c = LinearCase.Create(TestData.Rng(903), LinearShape.Mha(1, 5, 1, 8), new LinearAttentionOptions { Backend = "forward-only-test" });
        var dO = new float[c.Q.Length];
        NotSupportedException e = Assert.Throws<NotSupportedException>(() =>
            LinearAttention.Backward(c.Inputs, c.Options, dO, [], new LinearGradients { Q = new float[c.Q.Length] }));
        Assert.Contains("backward", e.Message);
        Assert.Contains("forward-only-test", e.Message);
    }

    [Theory]
    [InlineData(LinearDecay.ChannelGate, LinearForm.Chunked, 128, "fp16", "bf16 only")]
    [InlineData(LinearDecay.None, LinearForm.Recurrent, 128, "bf16", "chunked")]
    [InlineData(LinearDecay.None, LinearForm.Chunked, 256, "bf16", "value dims 64 and 128")]
    [InlineData(LinearDecay.ScalarGate, LinearForm.Chunked, 256, "fp16", "value dims 64 and 128")]
    public void BackwardUnsupportedConfigurationsSayWhy(LinearDecay decay, LinearForm form, int dv, string type, string expected)
    {
        var shape = new LinearShape(1, 10, 2, 2, 64, dv);
        ElementType element = type == "fp16" ? ElementType.Float16 : ElementType.BFloat16;
        var options = new LinearAttentionOptions { Decay = decay, Form = form };
        Assert.True(CudaLinearPlan.IsSupported(shape, element, options, out _));
        Assert.False(CudaLinearPlan.IsBackwardSupported(shape, element, options, out string reason));
        Assert.Contains(expected, reason);
        Assert.True(CudaLinearPlan.IsBackwardSupported(shape with { ValueDim = 128 }, ElementType.Float16,
            new LinearAttentionOptions { HeadDecay = [0.9f, 0.5f] }, out reason), reason);
    }

    private sealed class ForwardOnlyBackend : ILinearAttentionBackend
    {
        public string Name => "forward-only-test";

        public void Forward(in LinearInputs inputs, LinearAttentionOptions options, Span<float> output, Span<float> finalState) => output.Clear();
    }

    [Theory]
    [InlineData(LinearNormalization.RmsNorm, "RmsNorm")]
    [InlineData(LinearNormalization.None, "key dims 64 and 128")]
    public void UnsupportedConfigurationsSayWhy(LinearNormalization norm, string expected)
    {
        var shape = new LinearShape(1, 10, 2, 2, norm == LinearNormalization.None ? 48 : 64, 64);
        bool ok = CudaLinearPlan.IsSupported(shape, ElementType.BFloat16, new LinearAttentionOptions { Normalization = norm }, out string reason);
        Assert.False(ok);
        Assert.Contains(expected, reason);
        Assert.False(CudaLinearPlan.IsSupported(LinearShape.Mha(1, 10, 2, 64), ElementType.Float32, null, out reason));
        Assert.Contains("bf16", reason);
    }

    [Theory]
    [InlineData(264, 32, new[] { 16384 })]
    [InlineData(264, 32, new[] { 65536 })]
    [InlineData(132, 16, new[] { 1, 0, 70, 4097, 64, 20000 })]
    [InlineData(264, 2, new[] { 1000000 })]
    [InlineData(8, 64, new[] { 63 })]
    public void SegmentsCoverEveryTokenOnceInWholeChunks(int slots, int heads, int[] lengths)
    {
        var shape = new LinearShape(1, lengths.Sum(), heads, heads, 128, 128);
        int[] starts = new int[lengths.Length];
        for (int n = 1; n < lengths.Length; n++) starts[n] = starts[n - 1] + lengths[n - 1];
        (int[] all, int[] parts, int segments, int partCount) = CudaLinearPlan.BuildSegments(slots, 64, shape, starts, lengths);
        var covered = new int[shape.Tokens];
        var perSequence = new int[lengths.Length];
        int seenParts = 0;
        for (int i = 0; i < segments; i++)
        {
            int seq = all[8 * i], start = all[8 * i + 1], len = all[8 * i + 2], part = all[8 * i + 3];
            int firstPart = all[8 * i + 4], index = all[8 * i + 5], last = all[8 * i + 6];
            Assert.Equal(perSequence[seq]++, index);
            if (last == 0)
            {
                Assert.Equal(0, len % 64);                       // a segment before the last is whole chunks
                Assert.Equal(firstPart + index, part);           // the local states of a sequence are consecutive
                Assert.Equal(part, parts[8 * seenParts + 3]);    // and pass 0 runs exactly these
                seenParts++;
            }
            else Assert.Equal(-1, part);
            for (int x = start; x < start + len; x++) covered[x]++;
            Assert.InRange(start, starts[seq], starts[seq] + lengths[seq]);
        }
        Assert.Equal(partCount, seenParts);
        Assert.All(covered, c => Assert.Equal(1, c));
        for (int n = 0; n < lengths.Length; n++) Assert.InRange(perSequence[n], 1, 32);
        // A long single sequence fills the slots once: segments × heads × value blocks ≤ slots.
        if (lengths.Length == 1 && lengths[0] >= 64 * 4 * slots) Assert.True(segments * heads * 2 <= slots);
    }

    [Attend.Tests.Cuda.NoGpuFact]
    public void BenchLinearOnCudaWithoutAGpuSaysWhy()
    {
        Assert.False(CudaBackend.IsAvailable(out string why));
        (int code, _, string error) = Attend.Tests.Cli.CliHarness.Run("bench", "linear", "--backend", "cuda");
        Assert.Equal(2, code);
        Assert.Contains(why, error);
    }

    [Fact]
    public void BenchLinearOnAnUnknownBackendNamesIt()
    {
        (int code, _, string error) = Attend.Tests.Cli.CliHarness.Run("bench", "linear", "--backend", "tpu");
        Assert.Equal(2, code);
        Assert.Contains("tpu", error);
    }

    [CudaLinearTheory]
    [InlineData(0)]
    public void CheckCommandLinearCasesPassOnTheGpu(int unused)
    {
        _ = unused;
        var output = new StringWriter();
        var error = new StringWriter();
        (int passed, int failed) = Attend.Cli.CudaLinearCheck.Run(TestData.RunSeed, output, error);
        Assert.True(failed == 0 && passed > 0, $"seed {TestData.RunSeed}: {error}");
    }

    [CudaLinearTheory]
    [InlineData(LinearDecay.None, LinearForm.Chunked, 0)]
    [InlineData(LinearDecay.FixedPerHead, LinearForm.Chunked, 0)]
    [InlineData(LinearDecay.ScalarGate, LinearForm.Chunked, 1)]
    [InlineData(LinearDecay.ChannelGate, LinearForm.Chunked, 1)]
    [InlineData(LinearDecay.ChannelGate, LinearForm.Recurrent, 0)]
    [InlineData(LinearDecay.ScalarGate, LinearForm.Recurrent, 1)]
    public void GpuFormsMatchTheFloat64NaiveForm(LinearDecay decay, LinearForm form, int varlen)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(910 + (int)decay * 10 + (int)form);
        int[]? lengths = varlen == 1 ? [1, rng.Next(2, 90), rng.Next(130, 300)] : null;
        var shape = new LinearShape(2, rng.Next(65, 260) | 1, 4, 2, 64, 128);
        var options = new LinearAttentionOptions
        {
            Form = form, Decay = decay, Backend = "cuda", Scale = 0.125f,
            HeadDecay = decay == LinearDecay.FixedPerHead ? [0.99f, 0.9f, 0.7f, 1f] : null,
        };
        LinearCase c = LinearCase.Create(rng, shape, options, lengths, qkScale: 1.0);
        TestData.RoundToBf16(c.Q);
        TestData.RoundToBf16(c.K);
        TestData.RoundToBf16(c.V);
        c.AssertMatchesNaive(1e-2);
    }

    [CudaLinearTheory]
    [InlineData(LinearDecay.None, 0)]
    [InlineData(LinearDecay.FixedPerHead, 0)]
    [InlineData(LinearDecay.FixedPerHead, 1)]
    public void GpuBackwardMatchesTheFloat64Gradients(LinearDecay decay, int varlen)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(930 + (int)decay * 10 + varlen);
        int[]? lengths = varlen == 1 ? [1, rng.Next(2, 90), rng.Next(130, 300)] : null;
        var shape = new LinearShape(2, rng.Next(65, 260) | 1, 4, 2, 64, 128);
        var options = new LinearAttentionOptions
        {
            Decay = decay, Backend = "cuda", Scale = 0.125f,
            HeadDecay = decay == LinearDecay.FixedPerHead ? [0.99f, 0.9f, 0.7f, 1f] : null,
        };
        LinearCase c = LinearCase.Create(rng, shape, options, lengths, qkScale: 1.0);
        TestData.RoundToBf16(c.Q);
        TestData.RoundToBf16(c.K);
        TestData.RoundToBf16(c.V);
        long outLength = (long)c.Shape.Batch * c.Shape.Tokens * c.Shape.Heads * c.Shape.ValueDim;
        float[] dO = new float[outLength];
        for (int i = 0; i < dO.Length; i++) dO[i] = (float)(BFloat16)(float)(rng.NextDouble() * 2 - 1);
        float[] dST = new float[c.Config.StateLength];
        for (int i = 0; i < dST.Length; i++) dST[i] = (float)(rng.NextDouble() * 2 - 1);
        float[] gq = TestData.Poisoned<float>(c.Q.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
        float[] gs = TestData.Poisoned<float>(c.Config.StateLength);
        LinearAttention.Backward(c.Inputs, c.Options, dO, dST, new LinearGradients { Q = gq, K = gk, V = gv, InitialState = gs });
        float[] rq = new float[gq.Length], rk = new float[gk.Length], rv = new float[gv.Length], rs = new float[gs.Length];
        LinearAttention.Backward(c.Inputs, c.Options with { Form = LinearForm.Naive, Backend = null }, dO, dST,
            new LinearGradients { Q = rq, K = rk, V = rv, InitialState = rs });
        double eq = TestData.RelativeL2(gq, rq), ek = TestData.RelativeL2(gk, rk), ev = TestData.RelativeL2(gv, rv), es = TestData.RelativeL2(gs, rs);
        Assert.True(eq <= 2e-2 && ek <= 2e-2 && ev <= 2e-2 && es <= 2e-2,
            $"seed {TestData.RunSeed}: dq {eq:E2}, dk {ek:E2}, dv {ev:E2}, dS0 {es:E2} (NaN counts as unwritten)");
    }

}

/// <summary>A theory that needs an NVIDIA GPU: skipped, with the reason, on machines without a usable CUDA driver (CI).</summary>
public sealed class CudaLinearTheoryAttribute : TheoryAttribute
{
    /// <summary>Sets <see cref="FactAttribute.Skip"/> when <see cref="CudaBackend.IsAvailable"/> says no.</summary>
    public CudaLinearTheoryAttribute()
    {
        if (!CudaBackend.IsAvailable(out string why)) Skip = "needs a CUDA GPU: " + why;
    }
}
