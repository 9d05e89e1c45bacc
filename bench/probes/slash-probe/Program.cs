// Slash probe: where the token-level vertical-slash plan's time goes at T = 16384 (H = 4 over 1 KV head, D = 128, float32,
// causal, the shape of `attend bench sparse`). Each round times, interleaved, the exact causal kernel and each plan
// (process CPU time and wall), and prints time ÷ (density × exact).
using System.Diagnostics;
using System.Numerics.Tensors;
using Attend;
using Attend.Methods.Sparse;
using Attend.Methods.Sparse.Dynamic;
using Attend.Workloads;

int t = args.Length > 0 ? int.Parse(args[0]) : 16384;
int rounds = args.Length > 1 ? int.Parse(args[1]) : 3;
string only = args.Length > 2 ? args[2] : "";
const int H = 4, Hkv = 1, D = 128;

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

    // MInference's default vertical-slash plan of the bench (budget max(128, T/16): 146 verticals + 878 slash lines at 16k).
    int budget = Math.Max(128, t / 16), nv = Math.Max(1, budget / 7), ns = budget - nv;
    var mopts = new MInferenceOptions { Heads = Enumerable.Repeat(new MInferenceHeadPattern(MInferencePattern.VerticalSlash, nv, ns), H).ToArray() };
    HybridSparsePlan vs = MInference.BuildPlan(Q(), K(), V(), mopts);
    HybridSparsePlan vsBlocks = MInference.BuildPlan(Q(), K(), V(), mopts with { Coverage = SlashCoverage.Blocks });

    // The same number of slash lines per head, adjacent (one band 0 … ns − 1, the range-tile path), and the plan's own
    // scattered diagonals alone (no verticals), and 200 diagonals spaced 17 apart (each its own cluster: the diagonal
    // path, over a 3.4k-key window) against 200 spread over the whole sequence (the same work, a 16k-key window).
    VerticalSlashPlan band = Custom(h => Enumerable.Range(0, ns).ToArray(), null);
    VerticalSlashPlan scattered = Custom(h => vs.Tokens.Slash(0, h).ToArray(), null);
    VerticalSlashPlan near200 = Custom(h => Enumerable.Range(0, 200).Select(i => i * 17).ToArray(), null);
    VerticalSlashPlan far200 = Custom(h => Enumerable.Range(0, 200).Select(i => i * (t / 200 - 1)).ToArray(), null);
    VerticalSlashPlan empty = Custom(h => [], null);
    VerticalSlashPlan near64 = Custom(h => Enumerable.Range(1, 64).Select(i => i * 17).ToArray(), null);
    VerticalSlashPlan far64 = Custom(h => Enumerable.Range(1, 64).Select(i => i * (t / 66)).ToArray(), null);
    VerticalSlashPlan Custom(Func<int, int[]> slash, Func<int, int[]>? vertical)
    {
        var p = new VerticalSlashPlan(1, H, t, t);
        for (int h = 0; h < H; h++)
        {
            p.SetSlash(0, h, slash(h));
            if (vertical is not null) p.SetVertical(0, h, vertical(h));
        }
        return p;
    }

    var cases = new (string Name, double Density, Action Run)[]
    {
        ("exact causal", 1.0, () => Attention.Forward(Q(), K(), V(), new AttentionOptions { Mask = Masks.Causal }, O(), L())),
        ("minference VS, diagonals", vs.Density, () => vs.Forward(Q(), K(), V(), new AttentionOptions(), O(), L())),
        ("minference VS, blocks", vsBlocks.Density, () => vsBlocks.Forward(Q(), K(), V(), new AttentionOptions(), O(), L())),
        ($"band of {ns} adjacent", band.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), band, null, O(), L())),
        ($"its {ns} scattered alone", scattered.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), scattered, null, O(), L())),
        ("200 diagonals 17 apart", near200.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), near200, null, O(), L())),
        ("200 diagonals spread", far200.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), far200, null, O(), L())),
        ("empty plan (fixed cost)", empty.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), empty, null, O(), L())),
        ("64 diagonals 17 apart", near64.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), near64, null, O(), L())),
        ("64 diagonals spread", far64.Density, () => VerticalSlashAttention.Forward(Q(), K(), V(), far64, null, O(), L())),
    };
    var cpu = new double[cases.Length][];
    var wall = new double[cases.Length][];
    for (int c = 0; c < cases.Length; c++) { cpu[c] = new double[rounds]; wall[c] = new double[rounds]; }
    cases[0].Run(); // warm-up
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
    Console.WriteLine($"== {workload}, T = {t}, H = {H} over {Hkv}, D = {D}, {rounds} interleaved rounds, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
    Console.WriteLine($"{"case",-28} {"density",8} {"CPU ms (median)",16} {"CPU ÷ d·exact",14} {"wall ms",9} {"wall ÷ d·exact",15}");
    double exactCpu = Median(cpu[0]), exactWall = Median(wall[0]);
    for (int c = 0; c < cases.Length; c++)
    {
        double mc = Median(cpu[c]), mw = Median(wall[c]), d = cases[c].Density;
        Console.WriteLine($"{cases[c].Name,-28} {d,8:F4} {mc,16:F0} {mc / (d * exactCpu),14:F2} {mw,9:F0} {mw / (d * exactWall),15:F2}   CPU runs: {string.Join(" / ", cpu[c].Select(x => x.ToString("F0")))}");
    }
    // The cost of a pair on the diagonal path beyond the plan's fixed cost (the empty plan), in exact-kernel pairs.
    int emptyAt = Array.FindIndex(cases, x => x.Name.StartsWith("empty"));
    double fixedCpu = Median(cpu[emptyAt]);
    for (int c = emptyAt + 1; c < cases.Length; c++)
        Console.WriteLine($"  {cases[c].Name}: (CPU − empty plan) ÷ (d × exact CPU) = {(Median(cpu[c]) - fixedCpu) / (cases[c].Density * exactCpu):F2}");
    foreach (int c in new[] { 4, 5, 6 })
        Console.WriteLine($"  {cases[c].Name}: (CPU − empty plan) ÷ (d × exact CPU) = {(Median(cpu[c]) - fixedCpu) / (cases[c].Density * exactCpu):F2}");
}

static double Median(double[] a)
{
    double[] s = (double[])a.Clone();
    Array.Sort(s);
    return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
}
