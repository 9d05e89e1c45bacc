using Xunit;
using Attend.Tests.Cli;

namespace Attend.Tests.Cuda;

/// <summary><c>attend check</c> on the CPU (which every machine has), and its failure and no-GPU paths.</summary>
public class CheckCommandTests
{
    [Fact]
    public void CpuCheckPassesAndNamesEveryCpuVariant()
    {
        (int code, string output, string error) = CliHarness.Run("check", "--backend", "cpu", "--cases", "3", "--seed", TestData.RunSeed.ToString());
        Assert.True(code == 0, $"seed {TestData.RunSeed}: {error}\n{output}");
        foreach (AttentionKernel k in KernelRegistry.Softmax.Where(k => k.Backend == "cpu"))
            Assert.Contains(k.Name, output);
        Assert.Contains("0 failed", output);
    }

    [Fact]
    public void WrongVariantFailsTheCheck()
    {
        // Not registered globally (other tests enumerate the registry): handed to the check directly.
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Attend.Cli.CheckCommand.Execute("test-wrong", 11, 2, output, error, [new OffByOneKernel()]);
        Assert.Equal(1, code);
        Assert.Contains("FAIL", error.ToString());
        Assert.Contains("TestOffByOne", error.ToString());
    }

    [NoGpuFact]
    public void CudaCheckWithoutAGpuSaysWhy()
    {
        Assert.False(Attend.Cuda.CudaBackend.IsAvailable(out string why));
        (int code, _, string error) = CliHarness.Run("check", "--backend", "cuda");
        Assert.Equal(2, code);
        Assert.Contains(why, error);
    }

    [Fact]
    public void UnknownBackendIsAUsageError()
    {
        (int code, _, string error) = CliHarness.Run("check", "--backend", "quantum");
        Assert.Equal(2, code);
        Assert.Contains("quantum", error);
    }

    /// <summary>Runs the reference, then nudges one output value: the check must notice.</summary>
    private sealed class OffByOneKernel : AttentionKernel
    {
        private readonly ReferenceKernel _inner = new();
        public override string Name => "TestOffByOne";
        public override string Backend => "test-wrong";
        public override string Summary => "the reference with one output element changed";
        public override bool IsSupported(in KernelProblem problem, out string reason) => _inner.IsSupported(problem, out reason);

        internal override unsafe void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score)
        {
            _inner.Forward(call, mask, score);
            T* first = call.O.Row(0, call.O.Tokens - 1, 0);
            first[0] = ElementConvert.FromSingle<T>(ElementConvert.ToSingle(first[0]) + 50f);
        }
    }
}
