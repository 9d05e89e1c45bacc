using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Attend.Methods;

namespace Attend.Cli;

/// <summary>
/// <c>attend bench linear --crossover [--lengths 1024,...] [--methods a,b] [--runs N] [--json FILE]</c>: only the prefill
/// crossover against exact causal softmax attention — each linear method's chunked prefill tokens/s and the exact causal
/// kernel's at every swept length (H = 8 = Hkv, D = 64, float32: the shape of the default sweep), and the first length at
/// which the method is faster. Lengths run in ascending order; at each one the exact kernel is timed first, then every
/// method, so the ratios at one length come from the same minutes of a shared machine. Wall and process CPU time are
/// both recorded per call (medians). The exact kernel is timed fewer times at long lengths (2 calls from 32k: one 64k
/// causal call takes about a minute on two cores) and without a warm-up call there (the shorter lengths warmed it up).
/// Every method's chunked form is first checked against its float64 naive form on a small shape; a failed check
/// prints no speed.
/// </summary>
internal static class BenchLinearCrossover
{
    private const double Tolerance = 1e-3;
    private const int Heads = 8, HeadDim = 64;

    /// <summary>One timed length of one method (or of <c>exact</c>).</summary>
    private sealed record Row(string Method, int T, int D, int Calls, double WallMsMedian, double CpuMsMedian, double WallSpread, double? MaxRelErr, bool Passed)
    {
        public double TokensPerS => T / (WallMsMedian / 1e3);
        public double TokensPerCpuS => T / (CpuMsMedian / 1e3);
    }

    public static int Execute(string? jsonPath, string? lengthsText, string? methodsText, int runs, TextWriter output, TextWriter error)
    {
        if (runs < 1) throw new UserError("--runs must be at least 1.");
        if (jsonPath is not null)
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(jsonPath));
            if (dir is not null && !Directory.Exists(dir)) throw new UserError($"--json: directory of '{jsonPath}' does not exist.");
        }
        int[] lengths = lengthsText is null ? [1024, 2048, 4096, 8192, 16384, 32768, 65536] : ParseLengths(lengthsText);
        IAttentionMethod[] all = MethodCatalog.Runnable.Where(m => m.Info.Family == "linear").ToArray();
        IAttentionMethod[] methods = methodsText is null ? all : methodsText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(n => all.FirstOrDefault(m => m.Info.Name == n) ?? throw new UserError($"--methods: unknown linear method '{n}' (known: {string.Join(", ", all.Select(m => m.Info.Name))}).")).ToArray();
        string started = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
        string loadStart = LoadAverage();
        output.WriteLine($"bench linear --crossover: H = {Heads} = Hkv, D = {HeadDim}, float32, causal; lengths {string.Join(",", lengths)}; {runs} timed calls per method and length " +
                         $"(exact: {runs} up to 16k, 2 from 32k); {Environment.ProcessorCount} cores; started {started} UTC, load {loadStart}");

        // Check each method once (chunked against its float64 naive form, small shape).
        var checks = new Dictionary<string, double>();
        foreach (IAttentionMethod m in methods)
        {
            if (!BenchLinearCommand.FormsOf(m).Contains("chunked")) { checks[m.Info.Name] = double.NaN; continue; }
            checks[m.Info.Name] = Check(m);
        }

        var rows = new List<Row>();
        foreach (int t in lengths)
        {
            IAttentionMethod exact = MethodCatalog.FindRunnable("exact")!;
            MethodInputs exactInputs = BenchLinearCommand.Inputs("exact", 1, t, Heads, HeadDim, 21);
            bool longExact = t >= 32768;
            Row e = Time("exact", t, HeadDim, () => exact.Run(exactInputs, MethodArguments.Parse(["mask=causal"])), warmUp: !longExact, calls: longExact ? Math.Min(runs, 2) : runs, null, true);
            rows.Add(e);
            Print(output, e, null);
            foreach (IAttentionMethod m in methods)
            {
                string name = m.Info.Name;
                double err = checks[name];
                if (double.IsNaN(err) || t > BenchLinearCommand.MaxLength(name)) continue;
                int d = name == "based" ? 16 : HeadDim;
                MethodInputs inputs = BenchLinearCommand.Inputs(name, 1, t, Heads, d, 31);
                bool passed = err <= Tolerance;
                Row r = passed
                    ? Time(name, t, d, () => m.Run(inputs, MethodArguments.Parse(["form=chunked"])), warmUp: true, calls: runs, err, true)
                    : new Row(name, t, d, 0, double.NaN, double.NaN, double.NaN, err, false);
                rows.Add(r);
                Print(output, r, e);
            }
        }
        string finished = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
        string loadEnd = LoadAverage();
        output.WriteLine($"finished {finished} UTC, load {loadEnd}");
        WriteTable(output, rows, lengths);
        if (jsonPath is not null)
        {
            WriteJson(jsonPath, rows, runs, started, finished, loadStart, loadEnd);
            output.WriteLine($"wrote {jsonPath}");
        }
        foreach (Row r in rows.Where(r => !r.Passed))
            error.WriteLine($"attend bench linear --crossover: {r.Method} T={r.T} FAILED: error {r.MaxRelErr:E2} > {Tolerance}");
        return rows.Any(r => !r.Passed) ? AttendApp.CheckFailed : 0;
    }

    private static int[] ParseLengths(string text)
    {
        var r = new List<int>();
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            if (!int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int t) || t < 1)
                throw new UserError($"--lengths: '{part}' is not a positive integer.");
            else r.Add(t);
        if (r.Count == 0) throw new UserError("--lengths: no length given.");
        r.Sort();
        return r.Distinct().ToArray();
    }

    /// <summary>The chunked form's largest relative error against the naive form (float64 definition) on B = 2, T = 67, H = 2, D = 16.</summary>
    private static double Check(IAttentionMethod method)
    {
        bool hasChunk = method.Info.Parameters.Any(p => p.Name == "chunk");
        string[] Args(string form) => hasChunk ? [$"form={form}", "chunk=16"] : [$"form={form}"];
        MethodInputs small = BenchLinearCommand.Inputs(method.Info.Name, 2, 67, 2, 16, 5);
        MethodResult naive = method.Run(small, MethodArguments.Parse(Args("naive")));
        MethodResult chunked = method.Run(small, MethodArguments.Parse(Args("chunked")));
        return Fidelity.MaxRelativeError<float>(chunked.Output.Data, Array.ConvertAll(naive.Output.Data, x => (double)x));
    }

    private static Row Time(string name, int t, int d, Action action, bool warmUp, int calls, double? err, bool passed)
    {
        if (warmUp) action();
        var wall = new double[calls];
        var cpu = new double[calls];
        using var process = Process.GetCurrentProcess();
        for (int i = 0; i < calls; i++)
        {
            process.Refresh();
            TimeSpan c0 = process.TotalProcessorTime;
            long start = Stopwatch.GetTimestamp();
            action();
            wall[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            process.Refresh();
            cpu[i] = (process.TotalProcessorTime - c0).TotalMilliseconds;
        }
        double mw = Median(wall);
        return new Row(name, t, d, calls, mw, Median(cpu), (wall.Max() - wall.Min()) / mw, err, passed);
    }

    private static double Median(double[] values)
    {
        double[] s = (double[])values.Clone();
        Array.Sort(s);
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    private static string LoadAverage()
    {
        try { return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "n/a"; }
        catch (UnauthorizedAccessException) { return "n/a"; }
    }

    private static string F(double v, string format) => double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);

    private static void Print(TextWriter output, Row r, Row? exact)
    {
        string ratio = exact is null || !r.Passed || r.D != exact.D ? "" :
            $"  × exact: wall {F(r.TokensPerS / exact.TokensPerS, "F2")}, cpu {F(r.TokensPerCpuS / exact.TokensPerCpuS, "F2")}";
        output.WriteLine($"{DateTime.UtcNow:HH:mm:ss} {r.Method,-24} T={r.T,6} D={r.D,3} calls={r.Calls} wall {F(r.WallMsMedian, "F1"),9} ms  cpu {F(r.CpuMsMedian, "F1"),9} ms  " +
                         $"{F(r.TokensPerS, "N0"),10} tok/s  spread {F(100 * r.WallSpread, "F0")}%{ratio}{(r.Passed ? "" : "  FAILED")}  load {LoadAverage()}");
    }

    private static void WriteTable(TextWriter output, List<Row> rows, int[] lengths)
    {
        var exact = rows.Where(r => r.Method == "exact").ToDictionary(r => r.T);
        output.WriteLine();
        output.WriteLine("| method | " + string.Join(" | ", lengths.Select(Label)) + " | crossover (wall) | crossover (CPU time) |");
        output.WriteLine("|---|" + string.Concat(Enumerable.Repeat("---|", lengths.Length + 2)));
        output.WriteLine("| exact causal | " + string.Join(" | ", lengths.Select(t => exact.TryGetValue(t, out Row? e) ? Kilo(e.TokensPerS) : "-")) + " | | |");
        foreach (var g in rows.Where(r => r.Method != "exact").GroupBy(r => r.Method))
        {
            var byT = g.ToDictionary(r => r.T);
            string cells = string.Join(" | ", lengths.Select(t => byT.TryGetValue(t, out Row? r) ? (r.Passed ? Kilo(r.TokensPerS) : "FAILED") : "not run"));
            bool sameD = g.First().D == HeadDim;
            output.WriteLine($"| {g.Key} | {cells} | {(sameD ? Crossover(g, exact, r => r.TokensPerS) : $"— (D = {g.First().D})")} | " +
                             $"{(sameD ? Crossover(g, exact, r => r.TokensPerCpuS) : "—")} |");
        }
    }

    private static string Label(int t) => t % 1024 == 0 ? $"{t / 1024}k" : t.ToString(CultureInfo.InvariantCulture);

    private static string Kilo(double tokensPerS) => tokensPerS >= 100e3 ? $"{tokensPerS / 1e3:F0} k" : $"{tokensPerS / 1e3:F1} k";

    private static string Crossover(IEnumerable<Row> rows, Dictionary<int, Row> exact, Func<Row, double> speed)
    {
        var timed = rows.Where(r => r.Passed).OrderBy(r => r.T).ToList();
        if (timed.Count == 0) return "-";
        foreach (Row r in timed)
            if (exact.TryGetValue(r.T, out Row? e) && speed(r) >= speed(e))
                return r.T == timed[0].T ? $"≤ {Label(r.T)}" : Label(r.T);
        return $"> {Label(timed[^1].T)}";
    }

    private static void WriteJson(string path, List<Row> rows, int runs, string started, string finished, string loadStart, string loadEnd)
    {
        using FileStream stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        w.WriteStartObject();
        w.WriteString("kind", "linear prefill crossover against exact causal attention");
        w.WriteString("started", started);
        w.WriteString("finished", finished);
        w.WriteString("load_start", loadStart);
        w.WriteString("load_end", loadEnd);
        w.WriteNumber("cores", Environment.ProcessorCount);
        w.WriteString("shape", $"B=1 H={Heads} Hkv={Heads} D={HeadDim} (based: D=16) float32 causal");
        w.WriteNumber("runs", runs);
        w.WriteStartArray("results");
        foreach (Row r in rows)
        {
            w.WriteStartObject();
            w.WriteString("method", r.Method);
            w.WriteString("form", r.Method == "exact" ? "exact" : "chunked");
            w.WriteString("backend", "cpu");
            w.WriteNumber("T", r.T);
            w.WriteNumber("D", r.D);
            w.WriteNumber("H", Heads);
            w.WriteNumber("calls", r.Calls);
            JsonNumbers.Number(w, "wall_ms_median", double.IsNaN(r.WallMsMedian) ? null : r.WallMsMedian);
            JsonNumbers.Number(w, "cpu_ms_median", double.IsNaN(r.CpuMsMedian) ? null : r.CpuMsMedian);
            JsonNumbers.Number(w, "tokens_per_s", r.Passed ? r.TokensPerS : null);
            JsonNumbers.Number(w, "tokens_per_cpu_s", r.Passed ? r.TokensPerCpuS : null);
            JsonNumbers.Number(w, "spread", double.IsNaN(r.WallSpread) ? null : r.WallSpread);
            JsonNumbers.Number(w, "max_rel_err", r.MaxRelErr);
            w.WriteString("status", r.Passed ? "ok" : "FAILED");
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
