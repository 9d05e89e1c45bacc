using Attend.Cli;
using Attend.Methods;
using Attend.Methods.Sparse;
using Attend.Methods.Sparse.Dynamic;
using Xunit;

namespace Attend.Tests.Sparse;

/// <summary><c>attend bench sparse --methods name[key=value;…]</c>: a method run with fixed parameters, under that label.</summary>
public class BenchMethodSpecTests
{
    [Fact]
    public void ASpecRunsTheMethodWithItsParameters()
    {
        List<IAttentionMethod> methods = BenchSparseCommand.SelectMethods("streaming-llm, minference[coverage=blocks;budget=96]");
        Assert.Equal(["streaming-llm", "minference[coverage=blocks;budget=96]"], methods.Select(m => m.Info.Name));
        var c = new AttnCase { Tq = 200, Tk = 200, H = 2, Hkv = 1, D = 32 };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, TestData.Rng(4500));
        var inputs = new MethodInputs(new MethodTensor(x.Q, 1, 200, 2, 32), new MethodTensor(x.K, 1, 200, 1, 32), new MethodTensor(x.V, 1, 200, 1, 32));
        MethodResult r = methods[1].Run(inputs, new MethodArguments());
        Assert.Equal(SlashCoverage.Blocks, ((HybridSparsePlan)r.Coverage!).Tokens.Coverage);
        Assert.Equal("VS(13,83)", r.Report.First(p => p.Key == "patterns").Value.Split(' ')[0]);
    }

    [Theory]
    [InlineData("minference[coverage=blocks")]
    [InlineData("minference[]")]
    [InlineData("minference[blocks]")]
    [InlineData("nosuch[coverage=blocks]")]
    [InlineData("minference[coverag=blocks]")]
    public void MalformedSpecsAreRefused(string spec) =>
        Assert.Contains("--methods", Assert.Throws<UserError>(() => BenchSparseCommand.SelectMethods(spec)).Message);
}
