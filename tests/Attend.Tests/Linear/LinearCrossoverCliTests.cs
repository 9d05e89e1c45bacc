using System.Text.Json;
using Attend.Tests.Cli;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary><c>attend bench linear --crossover</c>: the exact kernel and each chosen method at every length, checked, timed, in the JSON.</summary>
public class LinearCrossoverCliTests
{
    [Fact]
    public void CrossoverTimesExactAndEveryChosenMethodAtEveryLength()
    {
        using var dir = new TempDir();
        string path = dir.File("crossover.json");
        string[] methods = ["linear-attention", "retnet", "based", "local-linear-attention"];
        var (code, output, err) = CliHarness.Run("bench", "linear", "--crossover", "--lengths", "96,48", "--methods", string.Join(',', methods), "--runs", "1", "--json", path);
        Assert.True(code == 0, err + output);
        Assert.Contains("crossover (wall)", output);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement[] results = [.. doc.RootElement.GetProperty("results").EnumerateArray()];
        // Lengths run in ascending order, the exact kernel first at each.
        Assert.Equal(48, results[0].GetProperty("T").GetInt32());
        Assert.Equal("exact", results[0].GetProperty("method").GetString());
        foreach (int t in (int[])[48, 96])
            foreach (string name in methods.Prepend("exact"))
            {
                JsonElement r = Assert.Single(results, x => x.GetProperty("method").GetString() == name && x.GetProperty("T").GetInt32() == t);
                Assert.Equal("ok", r.GetProperty("status").GetString());
                Assert.Equal(name == "based" ? 16 : 64, r.GetProperty("D").GetInt32());
                Assert.True(r.GetProperty("tokens_per_s").GetDouble() > 0, name);
                Assert.True(r.GetProperty("tokens_per_cpu_s").GetDouble() > 0, name);
                Assert.Equal(1, r.GetProperty("calls").GetInt32());
                if (name != "exact") Assert.True(r.GetProperty("max_rel_err").GetDouble() <= 1e-3, name);
            }
        Assert.Equal(10, results.Length);
    }

    [Fact]
    public void CrossoverRejectsUnknownMethodsAndStrayOptions()
    {
        var (code1, _, err1) = CliHarness.Run("bench", "linear", "--crossover", "--methods", "exact-ish", "--lengths", "32");
        Assert.NotEqual(0, code1);
        Assert.Contains("--methods", err1);
        var (code2, _, err2) = CliHarness.Run("bench", "linear", "--crossover", "--lengths", "32,x");
        Assert.NotEqual(0, code2);
        Assert.Contains("--lengths", err2);
        var (code3, _, err3) = CliHarness.Run("bench", "linear", "--lengths", "32");
        Assert.NotEqual(0, code3);
        Assert.Contains("--crossover", err3);
    }
}
