using System.CommandLine;

namespace Attend.Cli;

internal static class BenchCommand
{
    public static Command Create(TextWriter output, TextWriter error)
    {
        var command = new Command("bench", "Benchmark (not yet).");
        command.SetAction(_ => 0);
        return command;
    }
}
