using System.Text.Json;
using Attend.Tests.Cli;
using Xunit;

namespace Attend.Tests.Sparse;

/// <summary><c>attend bench sparse</c>: runs, reports random beside the structured workloads, writes the JSON records.</summary>
public sealed class BenchSparseCommandTests
{
    [Fact]
    public void SmallRunWritesEveryRecordWithTheRequiredFields()
    {
        using var dir = new TempDir();
        string path = dir.File("sparse.json");
        var (code, output, err) = CliHarness.Run("bench", "sparse", "--methods", "streaming-llm,combiner", "--workloads", "needle",
            "--lengths", "256", "--runs", "1", "--json", path);
        Assert.True(code == 0, $"exit {code}: {err}\n{output}");
        Assert.Contains("density sweep", output, StringComparison.Ordinal);
        using JsonDocument json = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement[] records = [.. json.RootElement.GetProperty("results").EnumerateArray()];
        // 2 methods × (random, needle) + the sweep's 4 windows.
        Assert.Equal(8, records.Length);
        Assert.Contains(records, r => r.GetProperty("workload").GetString() == "random");
        Assert.Contains(records, r => r.GetProperty("workload").GetString() == "needle");
        foreach (JsonElement r in records)
        {
            foreach (string field in (string[])["method", "workload", "backend", "T", "density", "recall", "rel_err", "selector_ms", "ms_median", "speedup"])
                Assert.True(r.TryGetProperty(field, out _), $"record lacks {field}: {r}");
            double density = r.GetProperty("density").GetDouble(), recall = r.GetProperty("recall").GetDouble(), relErr = r.GetProperty("rel_err").GetDouble();
            Assert.InRange(density, 0, 1.0 + 1e-9);
            Assert.InRange(recall, 0, 1.0 + 1e-9);
            Assert.True(relErr >= 0 && double.IsFinite(relErr));
            Assert.Equal("cpu", r.GetProperty("backend").GetString());
        }
    }

    [Fact]
    public void UnknownMethodOrWorkloadIsAUserError()
    {
        var (code, _, err) = CliHarness.Run("bench", "sparse", "--methods", "nope", "--quick");
        Assert.NotEqual(0, code);
        Assert.Contains("nope", err, StringComparison.Ordinal);
        (code, _, err) = CliHarness.Run("bench", "sparse", "--workloads", "nothing", "--quick");
        Assert.NotEqual(0, code);
        Assert.Contains("nothing", err, StringComparison.Ordinal);
    }
}
