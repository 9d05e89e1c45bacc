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
    string? Error);
