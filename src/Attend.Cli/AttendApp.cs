using System.CommandLine;

namespace Attend.Cli;

/// <summary>
/// The <c>attend</c> command line: <c>run</c>, <c>methods</c> and <c>bench</c>. Callable in-process (the tests do) with
/// its own output and error writers.
/// </summary>
public static class AttendApp
{
    /// <summary>Exit code of a user error (bad option, bad input file).</summary>
    public const int UsageError = 2;

    /// <summary>Exit code when a benchmark result failed its check against the reference.</summary>
    public const int CheckFailed = 1;

    /// <summary>Parses <paramref name="args"/>, runs the command and returns its exit code.</summary>
    /// <param name="args">The arguments after the program name.</param>
    /// <param name="output">Where results and help go.</param>
    /// <param name="error">Where error messages go (one line each).</param>
    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(error);
        Attend.Cuda.CudaBackend.Register(); // lists the CUDA variants (with the reason when they cannot run here)
        var root = new RootCommand("attend: exact attention on the CPU (run on .npy files, list methods, benchmark).")
        {
            RunCommand.Create(output),
            MethodsCommand.Create(output),
            BenchCommand.Create(output, error),
            CheckCommand.Create(output, error),
        };
        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            foreach (var e in parsed.Errors) error.WriteLine($"attend: {e.Message}");
            return UsageError;
        }
        try
        {
            return parsed.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (IsUserError(e))
        {
            error.WriteLine($"attend: {OneLine(e)}");
            return UsageError;
        }
    }

    private static bool IsUserError(Exception e) =>
        e is UserError or InvalidDataException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
            or ArgumentException or NotSupportedException;

    /// <summary>The message of <paramref name="e"/> on one line, without .NET's "(Parameter 'x')" suffix.</summary>
    internal static string OneLine(Exception e)
    {
        string message = e is ArgumentException a && a.ParamName is { } p
            ? a.Message.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal)
            : e.Message;
        return message.ReplaceLineEndings(" ");
    }
}
