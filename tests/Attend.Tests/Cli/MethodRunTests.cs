using Xunit;
using Attend.IO;
using Attend.Methods;
using Attend.Cli;

namespace Attend.Tests.Cli;

public class MethodRunTests
{
    [Fact]
    public void ExactMethodEqualsPlainRun()
    {
        using var dir = new TempDir();
        const int b = 1, t = 29, h = 4, hkv = 2, d = 32;
        Random rng = TestData.Rng(21);
        NpyFile.Write(dir.File("q.npy"), [b, t, h, d], TestData.Gaussian<float>(rng, b * t * h * d));
        NpyFile.Write(dir.File("k.npy"), [b, t, hkv, d], TestData.Gaussian<float>(rng, b * t * hkv * d));
        NpyFile.Write(dir.File("v.npy"), [b, t, hkv, d], TestData.Gaussian<float>(rng, b * t * hkv * d));
        string[] io = ["--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy")];

        var (code1, _, err1) = CliHarness.Run(["run", .. io, "--out", dir.File("a.npy"), "--mask", "window:5,0", "--scale", "0.2"]);
        Assert.True(code1 == 0, err1);
        var (code2, out2, err2) = CliHarness.Run(["run", .. io, "--out", dir.File("b.npy"), "--lse", dir.File("lse.npy"),
            "--method", "exact", "--param", "mask=window:5,0", "--param", "scale=0.2"]);
        Assert.True(code2 == 0, err2);
        Assert.Contains("kernel:", out2);
        Assert.Equal(NpyFile.Read(dir.File("a.npy")).AsSingle(), NpyFile.Read(dir.File("b.npy")).AsSingle());
        Assert.Equal([b, h, t], NpyFile.Read(dir.File("lse.npy")).Shape);
    }

    [Theory]
    [InlineData("--method|nosuch", "unknown method 'nosuch'")]
    [InlineData("--method|exact|--param|windw=3", "no parameter 'windw'")]
    [InlineData("--method|exact|--param|scale", "name=value")]
    [InlineData("--method|exact|--param|scale=abc", "scale")]
    [InlineData("--method|exact|--param|mask=window:x,0", "mask")]
    [InlineData("--param|scale=1", "need --method")]
    [InlineData("--method|exact|--mask|causal", "--param")]
    [InlineData("--method|exact|--state-out|s.npy", "no 'state' output")]
    public void BadMethodArgumentsAreUserErrors(string extra, string expected)
    {
        using var dir = new TempDir();
        Random rng = TestData.Rng(22);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, 5, 2, 8], TestData.Gaussian<float>(rng, 80));
        string[] args = ["run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), "--out", dir.File("o.npy"),
            .. extra.Split('|').Select(a => a == "s.npy" ? dir.File(a) : a)];
        var (code, _, err) = CliHarness.Run(args);
        Assert.Equal(AttendApp.UsageError, code);
        Assert.Contains(expected, err);
    }

    [Fact]
    public void EveryRunnableMethodIsListedWithItsParameters()
    {
        foreach (IAttentionMethod m in MethodCatalog.Runnable)
        {
            Assert.Same(m, MethodCatalog.FindRunnable(m.Info.Name.ToUpperInvariant()));
            Assert.Contains(MethodCatalog.All, info => info.Name == m.Info.Name);
        }
        var (code, json, _) = CliHarness.Run("methods", "--json");
        Assert.Equal(0, code);
        Assert.Contains("\"parameters\"", json);
        Assert.Contains("\"mask\"", json);
    }

    [Fact]
    public void ArgumentsNameTheParameterAndCheckRanges()
    {
        var args = MethodArguments.Parse(["k=0", "ratio=1.5", "on=yes", "form=Chunked"]);
        var e = Assert.Throws<ArgumentException>(() => args.GetInt("k", 4, min: 1));
        Assert.Equal("k", e.ParamName);
        Assert.Equal(1.5, args.GetDouble("ratio", 0, 0, 2));
        Assert.True(args.GetBool("on", false));
        Assert.Equal("chunked", args.GetChoice("form", "naive", "naive", "chunked", "recurrent"));
        args.ThrowIfUnused("m");
        Assert.Equal(7, args.GetInt("absent", 7));
        Assert.Throws<ArgumentException>(() => MethodArguments.Parse(["a=1", "A=2"]));
        var unused = MethodArguments.Parse(["typo=1"]);
        Assert.Equal("typo", Assert.Throws<ArgumentException>(() => unused.ThrowIfUnused("m")).ParamName);
    }
}
