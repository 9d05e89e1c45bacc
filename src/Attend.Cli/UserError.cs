namespace Attend.Cli;

/// <summary>
/// A mistake in what the user asked for (a missing or malformed file, a bad option value): printed as one line on
/// stderr, exit code 2, never a stack trace.
/// </summary>
internal sealed class UserError(string message) : Exception(message);
