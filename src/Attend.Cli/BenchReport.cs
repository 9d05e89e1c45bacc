using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Spectre.Console;
using static Attend.Cli.JsonNumbers;

namespace Attend.Cli;

/// <summary>Prints bench results as a Spectre.Console table and writes them as JSON.</summary>
internal static class BenchReport
{
    private static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);

    public static void WriteTable(IAnsiConsole console, Ceilings ceilings, IReadOnlyList<BenchResult> results, TimeSpan wall)
    {
        console.WriteLine($"ceilings: FMA peak {F(ceilings.FmaGflops, "F1")} GFLOP/s ({ceilings.FmaIsa}, {ceilings.Threads} threads), " +
            $"copy {F(ceilings.CopyGbps, "F1")} GB/s (read+write, {ceilings.CopyBytes >> 20} MB), read {F(ceilings.ReadGbps, "F1")} GB/s");
        var table = new Table()
            .AddColumn(new TableColumn("case").NoWrap())
            .AddColumns("shape B,H/Hkv,Tq,Tk,D", "mask", "pass", "variant", "ms median ± spread", "GFLOP/s | GB/s", "% peak", "max rel err");
        foreach (BenchResult r in results)
        {
            BenchCase c = r.Case;
            string shape = $"{c.B},{c.H}/{c.Hkv},{c.Tq},{c.Tk},{c.D}";
            string time = r.MsMedian is double m ? $"{F(m, "F2")} ± {F(r.MsSpread ?? 0, "F2")}" : "[red]FAILED[/]";
            string speed = r.Gbps is double gb ? $"{F(gb, "F1")} GB/s" : r.Gflops is double gf ? $"{F(gf, "F1")} GFLOP/s" : "-";
            string peak = r.PeakFraction is double p ? F(100 * p, "F1") + "%" : "-";
            string err = double.IsNaN(r.MaxRelErr) ? "-" : F(r.MaxRelErr, "0.0E+0");
            table.AddRow(Markup.Escape(c.Name), shape, Markup.Escape(c.Mask), c.PassName, Markup.Escape(r.Variant), time, speed, peak,
                r.Passed ? err : $"[red]{Markup.Escape(err)}[/]");
        }
        console.Write(table);
        console.WriteLine($"{results.Count(r => r.Passed)}/{results.Count} passed (forward/decode checked on sampled rows, tolerance " +
            $"{F(BenchRunner.ForwardTolerance, "G2")}; backward on T={BenchRunner.BackwardCheckLength}, tolerance {F(BenchRunner.BackwardTolerance, "G2")}); " +
            $"spread = max - min; total {F(wall.TotalSeconds, "F1")} s.");
    }

    public static void WriteJson(string path, Ceilings ceilings, IReadOnlyList<BenchResult> results)
    {
        using FileStream stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        w.WriteStartObject();
        w.WriteStartObject("machine");
        w.WriteNumber("cores", Environment.ProcessorCount);
        w.WriteString("os", RuntimeInformation.OSDescription);
        w.WriteString("cpu", CpuModel() ?? RuntimeInformation.ProcessArchitecture.ToString());
        w.WriteString("runtime", RuntimeInformation.FrameworkDescription);
        w.WriteString("date", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
        w.WriteEndObject();
        w.WriteStartObject("ceilings");
        w.WriteNumber("fma_gflops", ceilings.FmaGflops);
        w.WriteNumber("copy_gbps", ceilings.CopyGbps);
        w.WriteString("fma_isa", ceilings.FmaIsa);
        w.WriteNumber("threads", ceilings.Threads);
        w.WriteNumber("copy_bytes", ceilings.CopyBytes);
        w.WriteNumber("read_gbps", ceilings.ReadGbps);
        w.WriteString("copy_counts", "bytes read + bytes written (STREAM convention)");
        w.WriteEndObject();
        w.WriteStartArray("results");
        foreach (BenchResult r in results)
        {
            BenchCase c = r.Case;
            w.WriteStartObject();
            w.WriteString("case", c.Name);
            w.WriteString("backend", "cpu");
            w.WriteString("variant", r.Variant);
            w.WriteString("mask", c.Mask);
            w.WriteNumber("B", c.B);
            w.WriteNumber("H", c.H);
            w.WriteNumber("Hkv", c.Hkv);
            w.WriteNumber("Tq", c.Tq);
            w.WriteNumber("Tk", c.Tk);
            w.WriteNumber("D", c.D);
            w.WriteString("dtype", "f32");
            w.WriteString("pass", c.PassName);
            w.WriteString("status", r.Passed ? "ok" : "FAILED");
            Number(w, "ms_median", r.MsMedian);
            Number(w, "ms_spread", r.MsSpread);
            w.WriteString("spread_kind", "max-min");
            w.WriteNumber("runs", r.Runs);
            Number(w, "gflops", r.Gflops);
            Number(w, "gbps", r.Gbps);
            Number(w, "peak_fraction", r.PeakFraction);
            Number(w, "max_rel_err", r.MaxRelErr);
            w.WriteNumber("tolerance", r.Tolerance);
            if (r.Error is not null) w.WriteString("error", r.Error);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static string? CpuModel()
    {
        try
        {
            if (!File.Exists("/proc/cpuinfo")) return null;
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is int i and > 0)
                    return line[(i + 1)..].Trim();
        }
        catch (IOException) { }
        return null;
    }
}
