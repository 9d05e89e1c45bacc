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
    public void BackwardOnAnotherBackendSaysItIsMissing()
    {
        LinearCase c = LinearCase.Create(TestData.Rng(903), LinearShape.Mha(1, 5, 1, 8), new LinearAttentionOptions { Backend = "cuda" });
        var dO = new float[c.Q.Length];
        NotSupportedException e = Assert.Throws<NotSupportedException>(() =>
            LinearAttention.Backward(c.Inputs, c.Options, dO, [], new LinearGradients { Q = new float[c.Q.Length] }));
        Assert.Contains("backward", e.Message);
    }

    [Theory]
    [InlineData(LinearNormalization.Denominator, "normalisation")]
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
        RoundToBf16(c.Q);
        RoundToBf16(c.K);
        RoundToBf16(c.V);
        long stateLength = c.Config.StateLength;
        float[] o = TestData.Poisoned<float>((long)c.Shape.Batch * c.Shape.Tokens * c.Shape.Heads * c.Shape.ValueDim);
        float[] s = TestData.Poisoned<float>(stateLength);
        LinearAttention.Forward(c.Inputs, c.Options, o, s);
        var refO = new float[o.Length];
        var refS = new float[s.Length];
        LinearAttention.Forward(c.Inputs, c.Options with { Form = LinearForm.Naive, Backend = null }, refO, refS);
        double eo = Relative(o, refO), es = Relative(s, refS);
        Assert.True(eo <= 1e-2 && es <= 1e-2, $"seed {TestData.RunSeed}: output rel {eo:E2}, state rel {es:E2} (NaN counts as unwritten)");
    }

    private static void RoundToBf16(float[] x)
    {
        for (int i = 0; i < x.Length; i++) x[i] = (float)(BFloat16)x[i];
    }

    private static double Relative(float[] actual, float[] expected)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (!float.IsFinite(actual[i])) return double.PositiveInfinity;
            diff += (actual[i] - (double)expected[i]) * (actual[i] - (double)expected[i]);
            norm += (double)expected[i] * expected[i];
        }
        return Math.Sqrt(diff / Math.Max(norm, double.Epsilon));
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
