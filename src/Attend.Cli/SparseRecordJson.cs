using System.Text.Json;
using static Attend.Cli.JsonNumbers;

namespace Attend.Cli;

/// <summary>
/// The fields every <c>attend bench sparse --json</c> record carries, whatever the backend, written by one function so
/// they mean the same in the CPU and the CUDA bench: method, workload, backend, T, density (pairs computed / pairs
/// visible to the base mask), recall, rel_err (against exact attention), selector_ms, ms_median (the kernel), exact_ms.
/// </summary>
internal static class SparseRecordJson
{
    /// <summary>Writes the common fields into the open record object.</summary>
    public static void WriteCommon(Utf8JsonWriter w, string method, string workload, string backend, int tokens, double? density,
        double recall, double relErr, double selectorMs, double kernelMs, double exactMs)
    {
        w.WriteString("method", method);
        w.WriteString("workload", workload);
        w.WriteString("backend", backend);
        w.WriteNumber("T", tokens);
        Number(w, "density", density);
        Number(w, "recall", recall);
        Number(w, "rel_err", relErr);
        Number(w, "selector_ms", selectorMs);
        Number(w, "ms_median", kernelMs);
        Number(w, "exact_ms", exactMs);
    }
}
