using Xunit;
using System.Text.Json;

namespace Attend.Tests.Cli;

public class MethodsAndBenchCommandTests
{
    [Fact]
    public void MethodsJsonListsTheKernelVariants()
    {
        var (code, output, err) = CliHarness.Run("methods", "--json");
        Assert.True(code == 0, err);
        using JsonDocument doc = JsonDocument.Parse(output);
        var methods = doc.RootElement.EnumerateArray().ToList();
        JsonElement flash = methods.Single(m => m.GetProperty("name").GetString() == "CpuFlashVector512");
        Assert.Equal("softmax", flash.GetProperty("family").GetString());
        Assert.Contains("FlashAttention-2", flash.GetProperty("paper").GetString());
        Assert.Contains("cpu", flash.GetProperty("backends").EnumerateArray().Select(b => b.GetString()));
        Assert.False(string.IsNullOrEmpty(flash.GetProperty("status").GetString()));
        foreach (AttentionKernel kernel in KernelRegistry.Softmax)
            Assert.Contains(methods, m => m.GetProperty("name").GetString() == kernel.Name);
    }

    [Fact]
    public void MethodsTablePrintsEveryVariant()
    {
        var (code, output, _) = CliHarness.Run("methods");
        Assert.Equal(0, code);
        foreach (AttentionKernel kernel in KernelRegistry.Softmax) Assert.Contains(kernel.Name, output);
    }

    [Fact]
    public void QuickBenchWritesJsonWithTheRequiredFields()
    {
        using var dir = new TempDir();
        string path = dir.File("bench.json");
        var (code, output, err) = CliHarness.Run("bench", "--quick", "--json", path);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement root = doc.RootElement;
        Assert.True(root.GetProperty("machine").GetProperty("cores").GetInt32() >= 1);
        Assert.True(root.GetProperty("ceilings").GetProperty("fma_gflops").GetDouble() > 0);
        Assert.True(root.GetProperty("ceilings").GetProperty("copy_gbps").GetDouble() > 0);
        var results = root.GetProperty("results").EnumerateArray().ToList();
        Assert.NotEmpty(results);
        string[] fields = ["case", "backend", "variant", "mask", "B", "H", "Hkv", "Tq", "Tk", "D", "dtype", "pass",
            "ms_median", "ms_spread", "gflops", "gbps", "peak_fraction", "max_rel_err"];
        foreach (JsonElement r in results)
            foreach (string f in fields) Assert.True(r.TryGetProperty(f, out _), $"result {r.GetProperty("case")} lacks '{f}'");
        Assert.Equal(new[] { "backward", "decode", "forward" }, results.Select(r => r.GetProperty("pass").GetString() ?? "").Distinct().Order().ToArray());
        foreach (JsonElement r in results)
        {
            bool ok = r.GetProperty("status").GetString() == "ok";
            // A wrong result never gets a speed; a right one always has one (and a decode row has GB/s).
            Assert.Equal(ok, r.GetProperty("ms_median").ValueKind == JsonValueKind.Number);
            Assert.Equal(ok, r.GetProperty("gflops").ValueKind == JsonValueKind.Number);
            Assert.Equal(ok && r.GetProperty("pass").GetString() == "decode", r.GetProperty("gbps").ValueKind == JsonValueKind.Number);
        }
        bool allOk = results.All(r => r.GetProperty("status").GetString() == "ok");
        Assert.Equal(allOk ? 0 : 1, code);
        Assert.Contains("ceilings:", output);
        if (!allOk) Assert.Contains("FAILED", err);
    }
}
