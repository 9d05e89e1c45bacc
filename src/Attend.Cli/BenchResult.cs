namespace Attend.Cli;

/// <summary>
/// One row of the bench: a case, the variant that ran, its timing and speed, and its check against the reference.
/// Speed fields are null when the check failed (a wrong result gets no speed).
/// </summary>
internal sealed record BenchResult(
    BenchCase Case,
    string Variant,
    bool Passed,
    double? MsMedian,
    double? MsSpread,
    int Runs,
    double? Gflops,
    double? Gbps,
    double? PeakFraction,
    double MaxRelErr,
    double Tolerance,
    string? Error)
{
    /// <summary>The same result with its peak fraction taken against <paramref name="ceilings"/>.</summary>
    public BenchResult Against(Ceilings ceilings) => this with
    {
        PeakFraction = Gbps is double gbps ? gbps / ceilings.CopyGbps : Gflops is double gflops ? gflops / ceilings.FmaGflops : null,
    };
}
