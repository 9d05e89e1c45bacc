using Attend.Cli;

namespace Attend.Tests.Cli;

/// <summary>Runs the <c>attend</c> command in-process and captures its exit code, stdout and stderr.</summary>
internal static class CliHarness
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = AttendApp.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }
}

/// <summary>A temporary directory deleted at dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("attend-cli-test-").FullName;

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
