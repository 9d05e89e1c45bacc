using Spectre.Console;

namespace Attend.Cli;

/// <summary>Spectre.Console consoles bound to a given writer (the real terminal, or a test's StringWriter).</summary>
internal static class Terminal
{
    /// <summary>A console writing to <paramref name="writer"/>; colours and live progress only on a real terminal.</summary>
    public static IAnsiConsole For(TextWriter writer)
    {
        bool tty = ReferenceEquals(writer, Console.Out) && !Console.IsOutputRedirected;
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = tty ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = tty ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = tty ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!tty) console.Profile.Width = 160;
        return console;
    }
}
