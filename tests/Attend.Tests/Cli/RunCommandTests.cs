using Xunit;
using Attend.IO;

namespace Attend.Tests.Cli;

public class RunCommandTests
{
    private static (float[] Q, float[] K, float[] V) WriteInputs(TempDir dir, int b, int tq, int tk, int h, int hkv, int d, int salt)
    {
        Random rng = TestData.Rng(salt);
        float[] q = TestData.Gaussian<float>(rng, b * tq * h * d);
        float[] k = TestData.Gaussian<float>(rng, b * tk * hkv * d);
        float[] v = TestData.Gaussian<float>(rng, b * tk * hkv * d);
        NpyFile.Write(dir.File("q.npy"), [b, tq, h, d], q);
        NpyFile.Write(dir.File("k.npy"), [b, tk, hkv, d], k);
        NpyFile.Write(dir.File("v.npy"), [b, tk, hkv, d], v);
        return (q, k, v);
    }

    [Fact]
    public void OutputEqualsAttentionForward()
    {
        using var dir = new TempDir();
        const int b = 2, tq = 37, tk = 45, h = 4, hkv = 2, d = 32;
        (float[] q, float[] k, float[] v) = WriteInputs(dir, b, tq, tk, h, hkv, d, salt: 11);
        var (code, _, err) = CliHarness.Run("run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--out", dir.File("o.npy"), "--lse", dir.File("lse.npy"), "--mask", "causal+doc:0,20,45", "--scale", "0.3", "--softcap", "5");
        Assert.True(code == 0, $"exit {code}: {err} (seed {TestData.RunSeed})");

        var options = new AttentionOptions
        {
            Mask = Masks.And(Masks.Causal, Masks.Document(new SeqOffsets([0, 20, 45]))),
            Scale = 0.3f, Softcap = 5f, ReturnLse = true,
        };
        var expected = Attention.Forward(
            System.Numerics.Tensors.Tensor.Create(q, [b, tq, h, d]),
            System.Numerics.Tensors.Tensor.Create(k, [b, tk, hkv, d]),
            System.Numerics.Tensors.Tensor.Create(v, [b, tk, hkv, d]), options);
        NpyArray o = NpyFile.Read(dir.File("o.npy"));
        NpyArray lse = NpyFile.Read(dir.File("lse.npy"));
        Assert.Equal([b, tq, h, d], o.Shape);
        Assert.Equal([b, h, tq], lse.Shape);
        Assert.Equal(expected.Output.ToArray(), o.AsSingle());
        Assert.Equal(expected.Lse!.ToArray(), lse.AsSingle());
        // And it is attention, not just self-consistent: the float64 reference agrees.
        var reference = ReferenceAttention.Forward<float>(
            AttentionLayout.Bthd<float>(q, b, tq, h, d), AttentionLayout.Bthd<float>(k, b, tk, hkv, d), AttentionLayout.Bthd<float>(v, b, tk, hkv, d), options);
        Assert.True(TestData.RelativeError<float>(o.AsSingle(), reference.Output) < 1e-5, $"seed {TestData.RunSeed}");
    }

    [Fact]
    public void Float16InputsGiveFloat16OutputOfRank3()
    {
        using var dir = new TempDir();
        const int t = 19, h = 2, d = 16;
        Random rng = TestData.Rng(12);
        Half[] q = TestData.Gaussian<Half>(rng, t * h * d), k = TestData.Gaussian<Half>(rng, t * h * d), v = TestData.Gaussian<Half>(rng, t * h * d);
        NpyFile.Write(dir.File("q.npy"), [t, h, d], q);
        NpyFile.Write(dir.File("k.npy"), [t, h, d], k);
        NpyFile.Write(dir.File("v.npy"), [t, h, d], v);
        var (code, _, err) = CliHarness.Run("run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--out", dir.File("o.npy"), "--mask", "window:4,0");
        Assert.True(code == 0, err);
        NpyArray o = NpyFile.Read(dir.File("o.npy"));
        Assert.Equal(ElementType.Float16, o.ElementType);
        Assert.Equal([t, h, d], o.Shape);
        var reference = ReferenceAttention.Forward<Half>(
            AttentionLayout.Bthd<Half>(q, 1, t, h, d), AttentionLayout.Bthd<Half>(k, 1, t, h, d), AttentionLayout.Bthd<Half>(v, 1, t, h, d),
            new AttentionOptions { Mask = Masks.SlidingWindow(4, 0) });
        Assert.True(TestData.RelativeError<Half>(o.AsHalf(), reference.Output) < 2e-3, $"seed {TestData.RunSeed}");
    }

    [Fact]
    public void WrongDtypeFileExitsTwoNamingTheFile()
    {
        using var dir = new TempDir();
        WriteInputs(dir, 1, 8, 8, 2, 2, 8, salt: 13);
        // A float64 file, as numpy writes by default.
        byte[] header = System.Text.Encoding.ASCII.GetBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 8, 2, 8), }".PadRight(117) + "\n");
        var bytes = new List<byte>([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0, (byte)header.Length, 0]);
        bytes.AddRange(header);
        bytes.AddRange(new byte[8 * 128]);
        File.WriteAllBytes(dir.File("k.npy"), bytes.ToArray());
        var (code, _, err) = CliHarness.Run("run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), "--out", dir.File("o.npy"));
        Assert.Equal(2, code);
        Assert.Contains(dir.File("k.npy"), err);
        Assert.Contains("'<f8'", err);
        Assert.DoesNotContain("   at ", err);
        Assert.False(File.Exists(dir.File("o.npy")));
    }

    [Fact]
    public void MismatchedHeadsExitTwoNamingTheFile()
    {
        using var dir = new TempDir();
        WriteInputs(dir, 1, 8, 8, 4, 3, 8, salt: 14);
        var (code, _, err) = CliHarness.Run("run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), "--out", dir.File("o.npy"));
        Assert.Equal(2, code);
        Assert.Contains(dir.File("k.npy"), err);
        Assert.Contains("heads", err);
        Assert.DoesNotContain("   at ", err);
    }

    [Theory]
    [InlineData("sideways", "unknown mask")]
    [InlineData("doc:0,5", "offsets end at 5")]
    [InlineData("window:3", "window:LEFT,RIGHT")]
    public void BadMaskExitsTwoNamingTheOption(string mask, string problem)
    {
        using var dir = new TempDir();
        WriteInputs(dir, 1, 8, 8, 2, 2, 8, salt: 15);
        var (code, _, err) = CliHarness.Run("run", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--out", dir.File("o.npy"), "--mask", mask);
        Assert.Equal(2, code);
        Assert.Contains("--mask", err);
        Assert.Contains(problem, err);
    }

    [Fact]
    public void MissingFileAndMissingOptionExitTwo()
    {
        using var dir = new TempDir();
        var (code, _, err) = CliHarness.Run("run", "--q", dir.File("nope.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), "--out", dir.File("o.npy"));
        Assert.Equal(2, code);
        Assert.Contains(dir.File("nope.npy"), err);
        (code, _, err) = CliHarness.Run("run", "--q", dir.File("q.npy"));
        Assert.Equal(2, code);
        Assert.Contains("--k", err);
    }
}
