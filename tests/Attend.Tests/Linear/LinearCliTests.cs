using System.Text.Json;
using Attend.IO;
using Attend.Tests.Cli;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary><c>attend run --method</c> on the linear family (inputs by name, --form, --state-out) and <c>attend bench linear</c>.</summary>
public class LinearCliTests
{
    [Fact]
    public void RunWritesTheFinalStateAndDecodeContinuesFromIt()
    {
        using var dir = new TempDir();
        const int t = 21, h = 2, d = 16;
        Random rng = TestData.Rng(101);
        float[] q = TestData.Gaussian<float>(rng, t * h * d), k = TestData.Gaussian<float>(rng, t * h * d), v = TestData.Gaussian<float>(rng, t * h * d);
        float[] g = new float[t * h * d];
        for (int i = 0; i < g.Length; i++) g[i] = (float)Math.Log(0.7 + 0.3 * rng.NextDouble());
        void Write(string name, int tokens, int start, float[] data, int per) =>
            NpyFile.Write(dir.File(name), [1, tokens, h, per / h], data.AsSpan(start * per, tokens * per).ToArray());
        foreach ((string n, float[] x) in new[] { ("q", q), ("k", k), ("v", v), ("g", g) })
        {
            Write($"{n}.npy", t, 0, x, h * d);
            Write($"{n}20.npy", t - 1, 0, x, h * d);
            Write($"{n}1.npy", 1, t - 1, x, h * d);
        }
        string[] Io(string suffix) => ["--q", dir.File($"q{suffix}.npy"), "--k", dir.File($"k{suffix}.npy"), "--v", dir.File($"v{suffix}.npy"), "--input", $"g={dir.File($"g{suffix}.npy")}"];

        var (c1, _, e1) = CliHarness.Run(["run", "--method", "gla", .. Io(""), "--out", dir.File("o.npy"), "--state-out", dir.File("s.npy"), "--form", "chunked"]);
        Assert.True(c1 == 0, e1);
        var (c2, _, e2) = CliHarness.Run(["run", "--method", "gla", .. Io("20"), "--out", dir.File("o20.npy"), "--state-out", dir.File("s20.npy"), "--form", "chunked"]);
        Assert.True(c2 == 0, e2);
        var (c3, out3, e3) = CliHarness.Run(["run", "--method", "gla", .. Io("1"), "--input", $"state={dir.File("s20.npy")}", "--out", dir.File("o1.npy"), "--state-out", dir.File("s1.npy"), "--form", "recurrent"]);
        Assert.True(c3 == 0, e3);
        Assert.Contains("form: recurrent", out3);
        Assert.Equal([1, h, d, d], NpyFile.Read(dir.File("s.npy")).Shape);
        float[] whole = NpyFile.Read(dir.File("o.npy")).AsSingle(), last = NpyFile.Read(dir.File("o1.npy")).AsSingle();
        double e = TestData.RelativeError<float>(last, Array.ConvertAll(whole[^(h * d)..], x => (double)x));
        Assert.True(e < 1e-4, $"decode step vs whole run {e:E2}");
        double es = TestData.RelativeError<float>(NpyFile.Read(dir.File("s1.npy")).AsSingle(), Array.ConvertAll(NpyFile.Read(dir.File("s.npy")).AsSingle(), x => (double)x));
        Assert.True(es < 1e-4, $"state after decode vs whole run {es:E2}");
    }

    [Fact]
    public void MissingGateIsAUserError()
    {
        using var dir = new TempDir();
        Random rng = TestData.Rng(103);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, 5, 2, 8], TestData.Gaussian<float>(rng, 80));
        var (code, _, err) = CliHarness.Run(["run", "--method", "kda", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), "--out", dir.File("o.npy")]);
        Assert.Equal(Attend.Cli.AttendApp.UsageError, code);
        Assert.Contains("'g'", err);
    }

    [Fact]
    public void MisspelledInputIsAUserErrorAndNothingIsWritten()
    {
        // deltanet reads "beta"; "betas" used to be ignored, giving the β = 1 output without a word.
        using var dir = new TempDir();
        Random rng = TestData.Rng(104);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, 5, 2, 8], TestData.Gaussian<float>(rng, 80));
        NpyFile.Write(dir.File("b.npy"), [1, 5, 2], TestData.Gaussian<float>(rng, 10));
        var (code, _, err) = CliHarness.Run(["run", "--method", "deltanet", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--input", $"betas={dir.File("b.npy")}", "--out", dir.File("o.npy")]);
        Assert.Equal(Attend.Cli.AttendApp.UsageError, code);
        Assert.Contains("'betas'", err);
        Assert.Contains("beta", err);
        Assert.False(File.Exists(dir.File("o.npy")));
    }

    [Fact]
    public void BenchLinearQuickWritesRecordsForEveryLinearMethod()
    {
        using var dir = new TempDir();
        string path = dir.File("linear.json");
        var (code, output, err) = CliHarness.Run("bench", "linear", "--quick", "--json", path);
        Assert.True(code == 0, err + output);
        Assert.Contains("crossover", output);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement[] results = [.. doc.RootElement.GetProperty("results").EnumerateArray()];
        foreach (Attend.Methods.IAttentionMethod m in Attend.Methods.Linear.LinearMethods.All)
        {
            Assert.Contains(results, r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "chunked");
            Assert.Contains(results, r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "recurrent");
        }
        foreach (JsonElement r in results)
        {
            Assert.Equal("ok", r.GetProperty("status").GetString());
            foreach (string key in (string[])["method", "form", "backend", "T", "D", "tokens_per_s", "us_per_token", "peak_fraction", "max_rel_err"])
                Assert.True(r.TryGetProperty(key, out _), key);
        }
        Assert.Contains(results, r => r.GetProperty("method").GetString() == "core" && r.GetProperty("peak_fraction").ValueKind == JsonValueKind.Number);
    }

    [Fact]
    public void BenchGatedBackwardComparesBothBackwardsAndTheyAgree()
    {
        var (code, output, err) = CliHarness.Run("bench", "linear", "--gated-backward", "--quick");
        Assert.True(code == 0, err + output);
        foreach (string method in new[] { "gla", "gated-deltanet", "deltanet", "kda" })
        {
            string line = output.Split('\n').Single(l => l.StartsWith(method + " ", StringComparison.Ordinal));
            string diff = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^2];
            Assert.True(double.Parse(diff, System.Globalization.CultureInfo.InvariantCulture) < 1e-4, line);
        }
    }
}
