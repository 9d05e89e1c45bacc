using System.CommandLine;
using System.Diagnostics;
using Spectre.Console;

namespace Attend.Cli;

/// <summary>
/// <c>attend bench [--json FILE] [--quick]</c>: measures the machine's ceilings, runs the embedded workload, checks every
/// result against the float64 reference in the same run, and prints a table (and optionally JSON). Exits 1 when a
/// result failed its check.
/// </summary>
internal static class BenchCommand
{
    public static Command Create(TextWriter output, TextWriter error)
    {
        var json = new Option<string?>("--json") { Description = "Also write the results as JSON to this file." };
        var quick = new Option<bool>("--quick") { Description = "A tiny workload that runs in seconds (for tests and smoke checks)." };
        var command = new Command("bench",
            "Measure the FMA peak and copy bandwidth, then time exact attention (forward, backward, decode) on the default workload, " +
            "checked against the float64 reference. Times: median and spread (max - min) of >= 3 runs after a warm-up.")
        { json, quick, BenchLinearCommand.Create(output, error) };
        command.SetAction(parse => Execute(parse.GetValue(json), parse.GetValue(quick), output, error));
        command.Subcommands.Add(BenchSparseCommand.Create(output, error));
        return command;
    }

    internal static int Execute(string? jsonPath, bool quick, TextWriter output, TextWriter error)
    {
        if (jsonPath is not null)
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(jsonPath));
            if (dir is not null && !Directory.Exists(dir)) throw new UserError($"--json: directory of '{jsonPath}' does not exist.");
        }
        IReadOnlyList<BenchCase> cases = quick ? BenchWorkload.Quick() : BenchWorkload.Default();
        IAnsiConsole console = Terminal.For(output);
        var results = new List<BenchResult>();
        Ceilings? ceilings = null;
        var wall = Stopwatch.StartNew();
        console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                ProgressTask task = ctx.AddTask("ceilings", maxValue: cases.Count + 2);
                Ceilings Measure() => quick ? Ceilings.Measure(0.05, 32L << 20) : Ceilings.Measure(0.3, 256L << 20);
                ceilings = Measure();
                task.Increment(1);
                var runner = new BenchRunner(ceilings, minSeconds: quick ? 0.02 : 1.0);
                foreach (BenchCase c in cases)
                {
                    task.Description = Markup.Escape(c.Name);
                    results.Add(runner.Run(c));
                    task.Increment(1);
                }
                // Measure the ceilings again at the end and keep the higher of each, then take fractions against that.
                task.Description = "ceilings (again)";
                ceilings = Ceilings.Max(ceilings, Measure());
                for (int i = 0; i < results.Count; i++) results[i] = results[i].Against(ceilings);
                task.Increment(1);
                task.Description = "done";
            });
        BenchReport.WriteTable(console, ceilings!, results, wall.Elapsed);
        if (jsonPath is not null)
        {
            BenchReport.WriteJson(jsonPath, ceilings!, results);
            output.WriteLine($"wrote {jsonPath}");
        }
        int failed = results.Count(r => !r.Passed);
        if (failed > 0)
        {
            foreach (BenchResult r in results.Where(r => !r.Passed))
                error.WriteLine($"attend bench: {r.Case.Name} FAILED: {r.Error}");
            return AttendApp.CheckFailed;
        }
        return 0;
    }
}
