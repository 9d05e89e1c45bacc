using Attend.Cli;
using Attend.IO;
using Attend.Tests.Cli;
using Xunit;

namespace Attend.Tests.SparseDynamic;

public class DynamicCliTests
{
    [Theory]
    [InlineData("minference", "pattern=search")]
    [InlineData("flexprefill", "gamma=0.8")]
    [InlineData("anchor-attention", "theta=0.3")]
    [InlineData("hyperattention", "min_seq_len=64")]
    [InlineData("scatterbrain", "block=64")]
    public void AttendRunReachesTheMethodAndReportsItsDensity(string method, string param)
    {
        using var dir = new TempDir();
        const int b = 1, t = 150, h = 4, hkv = 2, d = 32;
        Random rng = TestData.Rng(4400);
        NpyFile.Write(dir.File("q.npy"), [b, t, h, d], TestData.Gaussian<float>(rng, b * t * h * d));
        NpyFile.Write(dir.File("k.npy"), [b, t, hkv, d], TestData.Gaussian<float>(rng, b * t * hkv * d));
        NpyFile.Write(dir.File("v.npy"), [b, t, hkv, d], TestData.Gaussian<float>(rng, b * t * hkv * d));
        var (code, output, err) = CliHarness.Run(["run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--out", dir.File("o.npy"), "--lse", dir.File("lse.npy"), "--method", method, "--param", param]);
        Assert.True(code == 0, err);
        Assert.Contains("density", output);
        float[] o = NpyFile.Read(dir.File("o.npy")).AsSingle();
        Assert.Equal(b * t * h * d, o.Length);
        Assert.DoesNotContain(o, v => !float.IsFinite(v));
        Assert.Equal([b, h, t], NpyFile.Read(dir.File("lse.npy")).Shape);
    }
}
