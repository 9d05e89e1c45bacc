using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.IO;
using Attend.Linear;
using Attend.Methods.Linear;
using Attend.Tests.Cli;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// The CUDA linear surface added for issue 5's gates: the backward of the scalar gate (simple GLA) and the channel gate
/// (GLA) with the gate's gradient, the element-wise feature maps and the denominator on the GPU, and
/// <c>attend run --method NAME --backend cuda</c> for the linear family. The refusals and the backend selection are
/// checked here; the GPU facts skip, with the reason, where there is no GPU.
/// </summary>
public class CudaLinearGatesTests
{
    [Theory]
    [InlineData(LinearDecay.ScalarGate, "bf16", 64)]
    [InlineData(LinearDecay.ScalarGate, "fp16", 128)]
    [InlineData(LinearDecay.ChannelGate, "bf16", 128)]
    public void GatedBackwardIsSupported(LinearDecay decay, string type, int dv)
    {
        ElementType element = type == "fp16" ? ElementType.Float16 : ElementType.BFloat16;
        var shape = new LinearShape(1, 100, 4, 2, 128, dv);
        Assert.True(CudaLinearPlan.IsBackwardSupported(shape, element, new LinearAttentionOptions { Decay = decay }, out string reason), reason);
    }

    [Theory]
    [InlineData("elu+1", LinearNormalization.None, "identity feature map")]
    [InlineData("relu", LinearNormalization.Denominator, "identity feature map")]
    [InlineData("identity", LinearNormalization.Denominator, "normalisation")]
    public void ElementwiseMapsAndTheDenominatorRunForwardOnly(string map, LinearNormalization norm, string backwardReason)
    {
        FeatureMap phi = map switch { "elu+1" => FeatureMaps.EluPlusOne, "relu" => FeatureMaps.Relu, _ => FeatureMaps.Identity };
        var options = new LinearAttentionOptions { FeatureMap = phi, Normalization = norm, Decay = LinearDecay.ScalarGate };
        var shape = new LinearShape(2, 77, 4, 4, 64, 64);
        Assert.True(CudaLinearPlan.IsSupported(shape, ElementType.BFloat16, options, out string reason), reason);
        bool fp16 = CudaLinearPlan.IsSupported(shape, ElementType.Float16, options with { Form = LinearForm.Recurrent }, out reason);
        Assert.True(fp16 == (norm != LinearNormalization.Denominator), reason);
        if (!fp16) Assert.Contains("bf16", reason);
        Assert.False(CudaLinearPlan.IsBackwardSupported(shape, ElementType.BFloat16, options, out reason));
        Assert.Contains(backwardReason, reason);
    }

    [Theory]
    [InlineData("taylor2")]
    [InlineData("l2norm")]
    public void OtherFeatureMapsAreRefusedByName(string map)
    {
        FeatureMap phi = map == "taylor2" ? FeatureMaps.Taylor2 : FeatureMaps.L2Norm;
        Assert.False(CudaLinearPlan.IsSupported(LinearShape.Mha(1, 10, 2, 64), ElementType.BFloat16, new LinearAttentionOptions { FeatureMap = phi }, out string reason));
        Assert.Contains(map, reason);
        Assert.Contains("element-wise", reason);
    }

    [Theory]
    [InlineData("linear_chunk.cu")]
    [InlineData("linear_chunk_bwd.cu")]
    public void LinearTileHelpersAreOneHeaderExpandedIntoBothAdditiveKernels(string file)
    {
        string source = KernelCompiler.Source(file);
        Assert.DoesNotContain("#include \"", source);
        foreach (string helper in (string[])["unsigned voff(", "void load_vtile(", "float exp_e(", "float elem_lo(", "float bget(", "void load_gtile(", "void mma16816("])
        {
            int first = source.IndexOf(helper, StringComparison.Ordinal);
            Assert.True(first >= 0, $"{file}: {helper} is missing");
            Assert.Equal(-1, source.IndexOf(helper, first + 1, StringComparison.Ordinal));
        }
    }

    [Fact]
    public void MethodsTakeTheBackendOfTheScope()
    {
        var options = new LinearAttentionOptions { Form = LinearForm.Chunked, Decay = LinearDecay.ChannelGate };
        Assert.Same(options, LinearMethod.WithBackend(options, null));
        Assert.Same(options, LinearMethod.WithBackend(options, "CPU"));
        Assert.Equal("cuda", LinearMethod.WithBackend(options, "cuda").Backend);
        Assert.Equal(LinearDecay.ChannelGate, LinearMethod.WithBackend(options, "cuda").Decay);
        LinearAttentionOptions own = options with { Backend = "cpu" };
        Assert.Same(own, LinearMethod.WithBackend(own, "cuda"));
        NotSupportedException e = Assert.Throws<NotSupportedException>(() => LinearMethod.WithBackend(options with { Form = LinearForm.Naive }, "cuda"));
        Assert.Contains("naive", e.Message);
        Assert.Contains("cuda", e.Message);
    }

    // q, k, v .npy files [1, t, h, d] in `dir`; returns the --q/--k/--v arguments.
    private static string[] WriteInputs(TempDir dir, int t, int h, int d, int salt)
    {
        Random rng = TestData.Rng(salt);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, t, h, d], TestData.Gaussian<float>(rng, t * h * d));
        return ["--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy")];
    }

    [Theory]
    [InlineData("based", 16, "", "taylor2")]
    [InlineData("linear-attention", 48, "", "key dims 64 and 128")]
    [InlineData("linear-attention", 64, "naive", "naive")]
    [InlineData("deltanet", 48, "", "key dims 64 and 128")]
    public void RunOnCudaRefusesWhatTheGpuDoesNotComputeOnAnyMachine(string method, int d, string form, string expected)
    {
        using var dir = new TempDir();
        string[] io = WriteInputs(dir, 21, 2, d, 960);
        string[] extra = form.Length > 0 ? ["--form", form] : [];
        var (code, _, error) = CliHarness.Run(["run", .. io, "--out", dir.File("o.npy"), "--method", method, "--backend", "cuda", .. extra]);
        Assert.Equal(2, code);
        Assert.Contains("--backend cuda", error);
        Assert.Contains(method, error);
        Assert.Contains(expected, error);
        Assert.False(File.Exists(dir.File("o.npy")));
    }

    [Theory]
    [InlineData("linear-attention", "")]
    [InlineData("linear-attention", "map=relu")]
    [InlineData("retnet", "")]
    [InlineData("deltanet", "")]
    public void RunOnCudaMatchesTheCpuOrSaysWhyNot(string method, string param)
    {
        using var dir = new TempDir();
        string[] io = WriteInputs(dir, 150, 4, 64, 961);
        string[] extra = param.Length > 0 ? ["--param", param] : [];
        var (code, output, error) = CliHarness.Run(["run", .. io, "--out", dir.File("g.npy"), "--method", method, "--backend", "cuda", .. extra]);
        if (!CudaBackend.IsAvailable(out string why))
        {
            Assert.Equal(2, code);
            Assert.Contains("--backend cuda", error);
            Assert.Contains(why, error);
            return;
        }
        Assert.True(code == 0, error);
        Assert.Contains("kernels on cuda", output);
        var (cpuCode, _, cpuError) = CliHarness.Run(["run", .. io, "--out", dir.File("c.npy"), "--method", method, .. extra]);
        Assert.True(cpuCode == 0, cpuError);
        float[] gpu = NpyFile.Read(dir.File("g.npy")).AsSingle(), cpu = NpyFile.Read(dir.File("c.npy")).AsSingle();
        double err = TestData.RelativeError<float>(gpu, Array.ConvertAll(cpu, x => (double)x));
        Assert.True(err <= 1e-2, $"seed {TestData.RunSeed}: rel {err}");
    }

    [CudaLinearTheory]
    [InlineData(LinearDecay.ScalarGate, 0)]
    [InlineData(LinearDecay.ScalarGate, 1)]
    [InlineData(LinearDecay.ChannelGate, 0)]
    [InlineData(LinearDecay.ChannelGate, 1)]
    public void GpuGatedBackwardMatchesTheFloat64GradientsWithTheGates(LinearDecay decay, int varlen)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(970 + (int)decay * 10 + varlen);
        int[]? lengths = varlen == 1 ? [1, rng.Next(2, 90), rng.Next(130, 300)] : null;
        var shape = new LinearShape(varlen == 1 ? 1 : 2, rng.Next(65, 260) | 1, 4, 2, 64, 128);
        var options = new LinearAttentionOptions { Decay = decay, Backend = "cuda", Scale = 0.125f };
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
        float[] gg = TestData.Poisoned<float>(c.Gate!.Length), gs = TestData.Poisoned<float>(c.Config.StateLength);
        LinearAttention.Backward(c.Inputs, c.Options, dO, dST, new LinearGradients { Q = gq, K = gk, V = gv, Gate = gg, InitialState = gs });
        float[] rq = new float[gq.Length], rk = new float[gk.Length], rv = new float[gv.Length], rg = new float[gg.Length], rs = new float[gs.Length];
        LinearAttention.Backward(c.Inputs, c.Options with { Form = LinearForm.Naive, Backend = null }, dO, dST,
            new LinearGradients { Q = rq, K = rk, V = rv, Gate = rg, InitialState = rs });
        double eq = TestData.RelativeL2(gq, rq), ek = TestData.RelativeL2(gk, rk), ev = TestData.RelativeL2(gv, rv), eg = TestData.RelativeL2(gg, rg), es = TestData.RelativeL2(gs, rs);
        Assert.True(eq <= 2e-2 && ek <= 2e-2 && ev <= 2e-2 && eg <= 2e-2 && es <= 2e-2,
            $"seed {TestData.RunSeed}: dq {eq:E2}, dk {ek:E2}, dv {ev:E2}, dg {eg:E2}, dS0 {es:E2} (NaN counts as unwritten)");
    }

    [CudaLinearTheory]
    [InlineData("elu+1", true, LinearForm.Chunked)]
    [InlineData("relu", true, LinearForm.Recurrent)]
    [InlineData("elu+1", false, LinearForm.Chunked)]
    public void GpuFeatureMapsAndDenominatorMatchTheFloat64NaiveForm(string map, bool denominator, LinearForm form)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(980 + (denominator ? 1 : 0) + (int)form * 2);
        var shape = new LinearShape(2, rng.Next(65, 200) | 1, 4, 2, 64, 64);
        var options = new LinearAttentionOptions
        {
            Form = form, Backend = "cuda", Scale = 0.125f, Decay = LinearDecay.FixedPerHead, HeadDecay = [0.99f, 0.9f, 0.7f, 1f],
            FeatureMap = map == "relu" ? FeatureMaps.Relu : FeatureMaps.EluPlusOne,
            Normalization = denominator ? LinearNormalization.Denominator : LinearNormalization.None,
        };
        LinearCase c = LinearCase.Create(rng, shape, options, null, qkScale: 1.0, initialState: false);
        TestData.RoundToBf16(c.Q);
        TestData.RoundToBf16(c.K);
        TestData.RoundToBf16(c.V);
        c.AssertMatchesNaive(1e-2);
    }

}
