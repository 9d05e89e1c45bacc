// Selector probe: the plan-building (selector) time of the three dynamic sparse prefill methods of issue 4 — MInference
// (default vertical-slash, budget max(128, T/16)), FlexPrefill (γ 0.9, τ 0.1), AnchorAttention (θ 0.5), the defaults of
// `attend bench sparse` — as a share of the exact causal kernel's time on the same inputs (target: ≤ 10% at 16k).
// Shape of `attend bench sparse`: B = 1, H = 4 over 1 KV head, D = 128, float32, causal; workloads random and llm with the
// bench's seed (1234 + T). Each round times, interleaved, the exact causal kernel and each selector's BuildPlan (process
// CPU time and wall); medians over the rounds, every round's value printed. The process CPU time follows the work done
// more closely than wall time on a shared machine (other tenants' turns on a core do not count; their cache use does).
using System.Diagnostics;
using System.Numerics.Tensors;
using Attend;
using Attend.Methods.Sparse;
using Attend.Methods.Sparse.Dynamic;
using Attend.Workloads;

int t = args.Length > 0 ? int.Parse(args[0]) : 16384;
int rounds = args.Length > 1 ? int.Parse(args[1]) : 5;
string only = args.Length > 2 ? args[2] : "";
const int H = 4, Hkv = 1, D = 128;
Console.WriteLine($"selector-probe T = {t}, H = {H} over {Hkv}, D = {D}, float32, causal; {rounds} interleaved rounds; {Environment.ProcessorCount} cores; " +
                  $"started {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC, load {string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3))}");

foreach (string workload in new[] { WorkloadPresets.Random, WorkloadPresets.Llm })
{
    if (only != "" && only != workload) continue;
    Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(workload, t, H, Hkv, D), seed: 1234 + t);
    var o = new float[(long)t * H * D];
    var lse = new float[(long)H * t];
    ReadOnlyTensorSpan<float> Q() => AttentionLayout.Bthd<float>(w.Q, 1, t, H, D);
    ReadOnlyTensorSpan<float> K() => AttentionLayout.Bthd<float>(w.K, 1, t, Hkv, D);
    ReadOnlyTensorSpan<float> V() => AttentionLayout.Bthd<float>(w.V, 1, t, Hkv, D);
    TensorSpan<float> O() => AttentionLayout.Bthd<float>(o, 1, t, H, D);
    TensorSpan<float> L() => AttentionLayout.Lse(lse, 1, H, t);

    // The bench adapters' defaults (DynamicSparseMethods.cs).
    int budget = Math.Max(128, t / 16), nv = Math.Max(1, budget / 7), ns = Math.Max(1, budget - nv);
    var minference = new MInferenceOptions { Heads = Enumerable.Repeat(new MInferenceHeadPattern(MInferencePattern.VerticalSlash, nv, ns), H).ToArray() };
    var flex = new FlexPrefillOptions { Gamma = 0.9, Tau = 0.1 };
    var anchor = new AnchorAttentionOptions { Theta = 0.5 };
    // The plans of the last round; their density is computed after the timing (HybridSparsePlan.Density counts pairs on
    // each access, which is not part of the selection, as in `attend bench sparse`'s selector time).
    var plans = new HybridSparsePlan?[4];

    bool[][] queryAware = [];
    var cases = new (string Name, Action Run)[]
    {
        ("exact causal kernel", () => Attention.Forward(Q(), K(), V(), new AttentionOptions { Mask = Masks.Causal }, O(), L())),
        ("MInference BuildPlan", () => plans[1] = MInference.BuildPlan(Q(), K(), V(), minference)),
        ("FlexPrefill BuildPlan", () => plans[2] = FlexPrefill.BuildPlan(Q(), K(), V(), flex, out queryAware)),
        ("AnchorAttention BuildPlan", () => plans[3] = AnchorAttention.BuildPlan(Q(), K(), V(), anchor)),
    };
    var cpu = new double[cases.Length][];
    var wall = new double[cases.Length][];
    for (int c = 0; c < cases.Length; c++) { cpu[c] = new double[rounds]; wall[c] = new double[rounds]; }
    foreach (var c in cases) c.Run(); // warm-up (JIT, pools, page faults)
    var proc = Process.GetCurrentProcess();
    for (int r = 0; r < rounds; r++)
        for (int c = 0; c < cases.Length; c++)
        {
            proc.Refresh();
            TimeSpan c0 = proc.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            cases[c].Run();
            wall[c][r] = sw.Elapsed.TotalMilliseconds;
            proc.Refresh();
            cpu[c][r] = (proc.TotalProcessorTime - c0).TotalMilliseconds;
        }
    Console.WriteLine($"FlexPrefill heads: {string.Join(" ", queryAware[0].Select(a => a ? "query-aware" : "vertical-slash"))}");
    Console.WriteLine($"== {workload}, finished {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC, load {string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3))}");
    Console.WriteLine($"{"case",-26} {"density",8} {"CPU ms (median)",16} {"CPU % of exact",15} {"wall ms (median)",17} {"wall % of exact",16}   per round: CPU ms | wall ms | CPU % of that round's exact");
    double exactCpu = Median(cpu[0]), exactWall = Median(wall[0]);
    for (int c = 0; c < cases.Length; c++)
    {
        double mc = Median(cpu[c]), mw = Median(wall[c]);
        string d = c == 0 ? "1" : plans[c]!.Density.ToString("F4");
        string perRound = string.Join(" / ", cpu[c].Select(x => x.ToString("F0"))) + " | " + string.Join(" / ", wall[c].Select(x => x.ToString("F0"))) +
                          " | " + string.Join(" / ", Enumerable.Range(0, rounds).Select(r => (100 * cpu[c][r] / cpu[0][r]).ToString("F1")));
        Console.WriteLine($"{cases[c].Name,-26} {d,8} {mc,16:F1} {100 * mc / exactCpu,14:F1}% {mw,17:F1} {100 * mw / exactWall,15:F1}%   {perRound}");
    }
}

static double Median(double[] a)
{
    double[] s = (double[])a.Clone();
    Array.Sort(s);
    return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
}
