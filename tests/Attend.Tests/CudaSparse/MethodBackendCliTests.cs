using Xunit;
using Attend.Cuda;
using Attend.IO;
using Attend.Tests.Cli;

namespace Attend.Tests.CudaSparse;

/// <summary><c>attend run --method NAME --backend cuda</c>: runs on a GPU, says why not elsewhere.</summary>
public class MethodBackendCliTests
{
    [Theory]
    [InlineData("streaming-llm")]
    [InlineData("minference")]
    public void MethodOnTheCudaBackendRunsOrSaysWhyNot(string method)
    {
        using var dir = new TempDir();
        const int b = 1, t = 150, h = 4, hkv = 2, d = 64;
        Random rng = TestData.Rng(950);
        NpyFile.Write(dir.File("q.npy"), [b, t, h, d], TestData.Gaussian<float>(rng, b * t * h * d));
        NpyFile.Write(dir.File("k.npy"), [b, t, hkv, d], TestData.Gaussian<float>(rng, b * t * hkv * d));
        NpyFile.Write(dir.File("v.npy"), [b, t, hkv, d], TestData.Gaussian<float>(rng, b * t * hkv * d));
        string[] io = ["--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy")];
        var (code, output, error) = CliHarness.Run(["run", .. io, "--out", dir.File("g.npy"), "--method", method, "--backend", "cuda"]);
        if (!CudaBackend.IsAvailable(out string why))
        {
            Assert.NotEqual(0, code);
            Assert.Contains("--backend cuda", error);
            Assert.Contains(why, error);
            return;
        }
        Assert.True(code == 0, error);
        Assert.Contains("kernels on cuda", output);
        var (cpuCode, _, cpuError) = CliHarness.Run(["run", .. io, "--out", dir.File("c.npy"), "--method", method]);
        Assert.True(cpuCode == 0, cpuError);
        float[] gpu = NpyFile.Read(dir.File("g.npy")).AsSingle(), cpu = NpyFile.Read(dir.File("c.npy")).AsSingle();
        double err = TestData.RelativeError<float>(gpu, Array.ConvertAll(cpu, x => (double)x));
        Assert.True(err <= 1e-2, $"seed {TestData.RunSeed}: rel {err}");
    }

    [Fact]
    public void UnknownBackendIsAUserError()
    {
        using var dir = new TempDir();
        Random rng = TestData.Rng(951);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, 9, 2, 64], TestData.Gaussian<float>(rng, 9 * 2 * 64));
        var (code, _, error) = CliHarness.Run(["run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--out", dir.File("o.npy"), "--method", "streaming-llm", "--backend", "tpu"]);
        Assert.NotEqual(0, code);
        Assert.Contains("unknown backend 'tpu'", error);
        Assert.False(File.Exists(dir.File("o.npy")));
    }
}
