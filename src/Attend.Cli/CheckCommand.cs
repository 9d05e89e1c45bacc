using System.CommandLine;
using System.Globalization;
using System.Numerics.Tensors;
using Attend.Cuda;

namespace Attend.Cli;

/// <summary>
/// <c>attend check [--backend cpu|cuda|all] [--seed N] [--cases N]</c>: a self-test any user can run. Every registered
/// variant of the chosen backends runs the forward on random problems (fresh inputs each run unless <c>--seed</c> fixes
/// them; odd lengths, T = 1, grouped-query heads, head dims 64/128/256, every mask kind, varlen, soft cap, ALiBi, fully
/// masked rows, large logits) in float32, float16 and bfloat16, into NaN-poisoned outputs, and is compared with the
/// float64 reference: relative L2 error of the output, LSE (−∞ exactly on fully masked rows), no NaN, every element
/// written. Exits 1 when any comparison fails, 2 when a chosen backend cannot run here (with the reason).
/// </summary>
internal static class CheckCommand
{
    /// <summary>Largest accepted ‖o − ref‖ / ‖ref‖ per input type (bf16: the issue's bar; inputs are rounded to the type before the reference sees them).</summary>
    public static double Tolerance(ElementType type) => type switch
    {
        ElementType.Float32 => 1e-4,
        ElementType.Float16 => 5e-3,
        _ => 1e-2,
    };

    /// <summary>Largest accepted relative L2 error of dQ, dK and dV per input type (the output and LSE the gradients start from are rounded to the type too).</summary>
    public static double GradientTolerance(ElementType type) => type switch
    {
        ElementType.Float32 => 1e-3,
        ElementType.Float16 => 1e-2,
        _ => 2e-2,
    };

    /// <summary>Largest accepted |lse − ref| / max(1, |ref|).</summary>
    public const double LseTolerance = 1e-3;

    /// <summary>LSE bound when float32 inputs are rounded to bf16 before the kernel (the float64 reference sees the unrounded ones).</summary>
    public const double RoundedInputLseTolerance = 1e-2;

    public static Command Create(TextWriter output, TextWriter error)
    {
        var backend = new Option<string>("--backend") { Description = "cpu, cuda (or another registered backend) or all (default: all backends present).", DefaultValueFactory = _ => "all" };
        var seed = new Option<int?>("--seed") { Description = "Fix the random problems (default: fresh each run; the seed is printed)." };
        var cases = new Option<int?>("--cases") { Description = "Run only the first N problems of the list." };
        var command = new Command("check", "Compare every kernel variant of a backend against the float64 reference on random problems; exit 1 on any failure.")
        {
            backend, seed, cases,
        };
        command.SetAction(parse => Execute(parse.GetValue(backend)!, parse.GetValue(seed), parse.GetValue(cases), output, error));
        return command;
    }

    internal sealed record CheckCase(string Name, int B, int Tq, int Tk, int H, int Hkv, int D, AttentionOptions Options, double InputScale = 1.0)
    {
        /// <summary>Pass the mask as a prebuilt <see cref="BlockMask"/> of the variant's block size (block-sparse attention).</summary>
        public bool PrebuiltBlocks { get; init; }
    }

    internal static int Execute(string backend, int? seedOption, int? maxCases, TextWriter output, TextWriter error,
        IReadOnlyList<AttentionKernel>? variants = null)
    {
        CudaBackend.Register();
        bool registered = variants is null; // the decode check belongs to the registered cuda backend, not to a given list
        variants ??= KernelRegistry.Softmax;
        string[] known = variants.Select(k => k.Backend.ToLowerInvariant()).Distinct().ToArray();
        string[] backends = backend.Equals("all", StringComparison.OrdinalIgnoreCase) ? known
            : known.Contains(backend.ToLowerInvariant()) ? [backend.ToLowerInvariant()]
            : throw new UserError($"--backend: unknown backend '{backend}' ({string.Join(", ", known)} or all).");
        if (backend.Equals("cuda", StringComparison.OrdinalIgnoreCase) && !CudaBackend.IsAvailable(out string why))
        {
            error.WriteLine($"attend check: the cuda backend cannot run on this machine: {why}.");
            return AttendApp.UsageError;
        }
        int seed = seedOption ?? Random.Shared.Next();
        IReadOnlyList<CheckCase> all = Cases(seed);
        IReadOnlyList<CheckCase> list = maxCases is int n ? all.Take(Math.Max(n, 0)).ToList() : all;
        output.WriteLine($"attend check: seed {seed}, {list.Count} problems, backends {string.Join("+", backends)}");
        if (backends.Contains("cuda")) output.WriteLine($"  cuda: {CudaBackend.Describe()}");
        int failures = 0, passed = 0;
        // ATTEND_CHECK_PART=forward: only the exact forward problems (no backward, decode, linear, delta or sparse checks),
        // for forward-kernel work on a device-time budget; the full check stays the default.
        bool forwardOnly = Environment.GetEnvironmentVariable("ATTEND_CHECK_PART") == "forward";
        if (forwardOnly) output.WriteLine("  ATTEND_CHECK_PART=forward: exact forward problems only");
        var skipped = new SortedDictionary<string, (int Count, string First)>(StringComparer.Ordinal);
        foreach (AttentionKernel kernel in variants)
        {
            if (!backends.Contains(kernel.Backend, StringComparer.OrdinalIgnoreCase)) continue;
            if (kernel.Backend == "cuda" && !CudaBackend.IsAvailable(out string reason))
            {
                output.WriteLine($"  {kernel.Name}: not run: {reason}");
                continue;
            }
            int index = 0;
            foreach (CheckCase c in list)
            {
                foreach (ElementType type in (ElementType[])[ElementType.Float32, ElementType.Float16, ElementType.BFloat16])
                {
                    var rng = new Random(unchecked(seed * 131 + index++));
                    Outcome r = type switch
                    {
                        ElementType.Float32 => Run<float>(kernel, c, type, rng),
                        ElementType.Float16 => Run<Half>(kernel, c, type, rng),
                        _ => Run<BFloat16>(kernel, c, type, rng),
                    };
                    if (r.Skipped is { } s)
                    {
                        string key = $"{kernel.Name} {type.ShortName()}";
                        skipped[key] = skipped.TryGetValue(key, out var seen) ? (seen.Count + 1, seen.First) : (1, s);
                        continue;
                    }
                    string line = string.Create(CultureInfo.InvariantCulture,
                        $"  {(r.Ok ? "ok  " : "FAIL")} {kernel.Name,-18} {type.ShortName(),-4} {c.Name,-34} B={c.B} Tq={c.Tq} Tk={c.Tk} H={c.H}/{c.Hkv} D={c.D}  rel={r.Error:E2} (tol {Tolerance(kernel is Attend.Cuda.Sparse.CudaFlashFloat32Kernel ? ElementType.BFloat16 : type):G2})  lse={r.LseError:E1}{(r.Problem is null ? "" : "  " + r.Problem)}");
                    if (r.Ok) passed++;
                    else failures++;
                    (r.Ok ? output : error).WriteLine(line);
                    if (forwardOnly) continue;
                    Outcome g = type switch
                    {
                        ElementType.Float32 => RunBackward<float>(kernel, c, type, rng),
                        ElementType.Float16 => RunBackward<Half>(kernel, c, type, rng),
                        _ => RunBackward<BFloat16>(kernel, c, type, rng),
                    };
                    if (g.Skipped is not null) continue;
                    string gline = string.Create(CultureInfo.InvariantCulture,
                        $"  {(g.Ok ? "ok  " : "FAIL")} {kernel.Name,-18} {type.ShortName(),-4} {"backward: " + c.Name,-34} B={c.B} Tq={c.Tq} Tk={c.Tk} H={c.H}/{c.Hkv} D={c.D}  rel={g.Error:E2} (tol {GradientTolerance(type):G2}){(g.Problem is null ? "" : "  " + g.Problem)}");
                    if (g.Ok) passed++;
                    else failures++;
                    (g.Ok ? output : error).WriteLine(gline);
                    if (kernel.Backend != "cuda" || Environment.GetEnvironmentVariable("ATTEND_CUDA_BWD_ATOMIC_DQ") != "1") continue;
                    // With the development switch on, the CUDA backward has two dQ paths (float32 atomics when not
                    // deterministic, a separate kernel when deterministic): check both.
                    Outcome gd = type switch
                    {
                        ElementType.Float16 => RunBackward<Half>(kernel, c, type, rng, deterministic: true),
                        _ => RunBackward<BFloat16>(kernel, c, type, rng, deterministic: true),
                    };
                    string dline = string.Create(CultureInfo.InvariantCulture,
                        $"  {(gd.Ok ? "ok  " : "FAIL")} {kernel.Name,-18} {type.ShortName(),-4} {"backward det: " + c.Name,-34} B={c.B} Tq={c.Tq} Tk={c.Tk} H={c.H}/{c.Hkv} D={c.D}  rel={gd.Error:E2} (tol {GradientTolerance(type):G2}){(gd.Problem is null ? "" : "  " + gd.Problem)}");
                    if (gd.Ok) passed++;
                    else failures++;
                    (gd.Ok ? output : error).WriteLine(dline);
                }
            }
        }
        if (registered && !forwardOnly && backends.Contains("cuda") && CudaBackend.IsAvailable(out _))
        {
            // ATTEND_CHECK_CUDA_PARTS (a development switch: a comma list of decode, linear, delta, delta-bwd, delta-bwd-wide, kda, kda-bwd, sparse) runs only those parts.
            string[] parts = (Environment.GetEnvironmentVariable("ATTEND_CHECK_CUDA_PARTS") ?? "decode,linear,delta,kda,kda-bwd,sparse").Split(',', StringSplitOptions.TrimEntries);
            int p = 0, f = 0;
            if (parts.Contains("decode")) (p, f) = CudaDecodeCheck.Run(seed, output, error);
            passed += p;
            failures += f;
            int lp = 0, lf = 0;
            if (parts.Contains("linear")) (lp, lf) = CudaLinearCheck.Run(seed, output, error);
            passed += lp;
            failures += lf;
            (lp, lf) = parts.Contains("delta") ? CudaDeltaCheck.Run(seed, output, error)
                : parts.Contains("delta-bwd") ? CudaDeltaCheck.RunBackwardOnly(seed, output, error)
                : parts.Contains("delta-bwd-wide") ? CudaDeltaCheck.RunBackwardOnly(seed, output, error, wideOnly: true) : (0, 0);
            passed += lp;
            failures += lf;
            (p, f) = parts.Contains("kda") ? CudaKdaCheck.Run(seed, output, error) : (0, 0);
            passed += p;
            failures += f;
            (p, f) = parts.Contains("kda-bwd") ? CudaDeltaCheck.RunKdaBackward(seed, output, error) : (0, 0);
            passed += p;
            failures += f;
            (p, f) = parts.Contains("sparse") ? CudaSparseCheck.Run(seed, output, error) : (0, 0);
            passed += p;
            failures += f;
        }
        foreach (var (key, (count, first)) in skipped) output.WriteLine($"  skipped {count} problem(s) on {key}, not supported by the variant (e.g. {first})");
        if (backends.Contains("cuda") && CudaBackend.IsAvailable(out _))
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  NVRTC: {KernelCompiler.Compiled} specialisation(s) compiled in {KernelCompiler.TotalCompileSeconds:F2} s, {KernelCompiler.CacheHits} from the disk cache ({KernelCompiler.CacheDirectory})"));
        output.WriteLine($"attend check: {passed} passed, {failures} failed (seed {seed})");
        if (passed == 0 && failures == 0)
        {
            error.WriteLine("attend check: no variant of the chosen backend ran.");
            return AttendApp.UsageError;
        }
        return failures == 0 ? 0 : AttendApp.CheckFailed;
    }

    /// <summary>The problem list of a seed: lengths, heads and parameters drawn from it.</summary>
    internal static IReadOnlyList<CheckCase> Cases(int seed)
    {
        var rng = new Random(seed);
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;
        int t = Odd(65, 300), t2 = Odd(129, 400), tk = Odd(150, 700);
        var docs = SeqOffsets.FromLengths([rng.Next(1, 60), rng.Next(60, 140), rng.Next(1, 100)]);
        var varlen = SeqOffsets.FromLengths([1, rng.Next(2, 150), rng.Next(130, 260)]);
        string docSpec = "causal+doc:" + string.Join(",", docs.Offsets.ToArray());
        return
        [
            new("causal, GQA 4:1", 2, t, t, 8, 2, 128, new AttentionOptions { Mask = new CausalMask() }),
            new("full, Tq != Tk, MQA", 1, Odd(20, 60), tk, 8, 1, 128, new AttentionOptions()),
            new("decode T=1 against a cache, causal", 3, 1, tk, 8, 2, 128, new AttentionOptions { Mask = new CausalMask() }),
            new("sliding window 32, fully masked rows", 1, t2, t2 / 3, 4, 2, 128, new AttentionOptions { Mask = new SlidingWindowMask(32, 0) }),
            new("prefix LM", 1, t, t, 4, 4, 64, new AttentionOptions { Mask = new PrefixLmMask(rng.Next(1, t)) }),
            new("block-causal", 1, t2, t2, 6, 3, 64, new AttentionOptions { Mask = new BlockCausalMask(rng.Next(8, 100)) }),
            new("causal + documents", 1, docs.TotalTokens, docs.TotalTokens, 4, 2, 128, new AttentionOptions { Mask = MaskSpec.Parse(docSpec, docs.TotalTokens) }),
            new("varlen causal (a 1-token sequence)", 1, varlen.TotalTokens, varlen.TotalTokens, 4, 1, 128, new AttentionOptions { Mask = new CausalMask(), QueryOffsets = varlen }),
            new("soft cap 20, causal", 1, t, t, 4, 2, 128, new AttentionOptions { Mask = new CausalMask(), Softcap = 20f }),
            new("ALiBi, causal", 1, t, t, 8, 2, 128, new AttentionOptions { Mask = new CausalMask(), ScoreMod = AlibiScoreMod.Standard(8) }),
            new("large logits (inputs x8), causal", 1, t, t, 4, 4, 64, new AttentionOptions { Mask = new CausalMask() }, InputScale: 8.0),
            new("head dim 256, causal", 1, Odd(65, 200), Odd(65, 200), 2, 1, 256, new AttentionOptions { Mask = new CausalMask() }),
            new("head dim 32 (CPU only)", 1, t, t, 2, 2, 32, new AttentionOptions { Mask = new CausalMask() }),
            new("prebuilt BlockMask: sink + local", 2, t2, t2, 4, 2, 128,
                new AttentionOptions { Mask = Masks.And(new CausalMask(), Masks.Or(new SlidingWindowMask(50, 0), new PrefixLmMask(20))) }) { PrebuiltBlocks = true },
        ];
    }

    private readonly record struct Outcome(bool Ok, double Error, double LseError, string? Problem, string? Skipped);

    private static Outcome Run<T>(AttentionKernel kernel, CheckCase c, ElementType type, Random rng) where T : unmanaged
    {
        var problem = new KernelProblem(AttentionPass.Forward, type, c.Options.QueryOffsets?.Count ?? c.B, c.H, c.Hkv, c.D,
            c.Options.QueryOffsets?.MaxLength ?? c.Tq, (c.Options.KeyOffsets ?? c.Options.QueryOffsets)?.MaxLength ?? c.Tk);
        if (!kernel.IsSupported(problem, out string reason)) return new Outcome(true, 0, 0, null, reason);
        T[] q = Gaussian<T>(rng, (long)c.B * c.Tq * c.H * c.D, c.InputScale);
        T[] k = Gaussian<T>(rng, (long)c.B * c.Tk * c.Hkv * c.D, c.InputScale);
        T[] v = Gaussian<T>(rng, (long)c.B * c.Tk * c.Hkv * c.D, 1.0);
        if (kernel is Attend.Cuda.Sparse.CudaFlashFloat32Kernel)
        {
            // The float32 CUDA variant rounds its inputs to bf16; give the reference the same (rounded) inputs, as the
            // bf16 problems do, so the check measures the kernel and not the rounding of large logits.
            RoundThroughBf16(q);
            RoundThroughBf16(k);
            RoundThroughBf16(v);
        }
        var o = new T[q.Length];
        Array.Fill(o, ElementConvert.FromSingle<T>(float.NaN));
        var lse = new float[c.B * c.H * c.Tq];
        Array.Fill(lse, float.NaN);
        AttentionOptions options = c.Options with { Variant = kernel.Name };
        if (c.PrebuiltBlocks)
            options = options with
            {
                Mask = null,
                BlockMask = BlockMask.Create(c.Options.Mask!, c.Tq, c.Tk, c.B, c.H, kernel.QueryBlockSize, kernel.KeyBlockSize),
            };
        TensorSpan<T> Q(T[] a) => AttentionLayout.Bthd<T>(a, c.B, c.Tq, c.H, c.D);
        TensorSpan<T> KV(T[] a) => AttentionLayout.Bthd<T>(a, c.B, c.Tk, c.Hkv, c.D);
        try
        {
            Attention.Forward<T>(Q(q), KV(k), KV(v), options, Q(o), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        }
        catch (NotSupportedException e)
        {
            return new Outcome(true, 0, 0, null, AttendApp.OneLine(e));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new Outcome(false, double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}", null);
        }
        ReferenceForwardResult exact = ReferenceAttention.Forward<T>(Q(q), KV(k), KV(v), c.Options);
        double err = RelativeL2(o, exact.Output, out int nan);
        double lseErr = LseError(lse, exact.Lse, out string? lseProblem);
        string? problemText = nan > 0 ? $"{nan} NaN/unwritten outputs" : lseProblem;
        // The float32 CUDA variant computes in bf16 (its inputs rounded on the way in, above): it is held to bf16's bound.
        bool viaBf16 = kernel is Attend.Cuda.Sparse.CudaFlashFloat32Kernel;
        bool ok = nan == 0 && err <= Tolerance(viaBf16 ? ElementType.BFloat16 : type) && lseErr <= LseTolerance && lseProblem is null;
        return new Outcome(ok, err, lseErr, problemText ?? (ok ? null : "error above tolerance"), null);
    }

    // The variant's own forward (output and LSE), then its backward into poisoned gradients, against the float64 backward.
    private static Outcome RunBackward<T>(AttentionKernel kernel, CheckCase c, ElementType type, Random rng, bool deterministic = false) where T : unmanaged
    {
        var problem = new KernelProblem(AttentionPass.Backward, type, c.Options.QueryOffsets?.Count ?? c.B, c.H, c.Hkv, c.D,
            c.Options.QueryOffsets?.MaxLength ?? c.Tq, (c.Options.KeyOffsets ?? c.Options.QueryOffsets)?.MaxLength ?? c.Tk);
        if (!kernel.IsSupported(problem, out string reason)) return new Outcome(true, 0, 0, null, reason);
        var forwardProblem = problem with { Pass = AttentionPass.Forward };
        string forward = kernel.IsSupported(forwardProblem, out _) ? kernel.Name : KernelRegistry.Select(forwardProblem, null, null).Name;
        T[] q = Gaussian<T>(rng, (long)c.B * c.Tq * c.H * c.D, c.InputScale);
        T[] k = Gaussian<T>(rng, (long)c.B * c.Tk * c.Hkv * c.D, c.InputScale);
        T[] v = Gaussian<T>(rng, (long)c.B * c.Tk * c.Hkv * c.D, 1.0);
        T[] dO = Gaussian<T>(rng, q.Length, 1.0);
        var o = new T[q.Length];
        var lse = new float[c.B * c.H * c.Tq];
        T[] dq = Poisoned<T>(q.Length), dk = Poisoned<T>(k.Length), dv = Poisoned<T>(v.Length);
        AttentionOptions options = c.Options with { Variant = kernel.Name, Deterministic = deterministic || c.Options.Deterministic };
        if (c.PrebuiltBlocks)
            options = options with { Mask = null, BlockMask = BlockMask.Create(c.Options.Mask!, c.Tq, c.Tk, c.B, c.H, kernel.QueryBlockSize, kernel.KeyBlockSize) };
        TensorSpan<T> Q(T[] a) => AttentionLayout.Bthd<T>(a, c.B, c.Tq, c.H, c.D);
        TensorSpan<T> KV(T[] a) => AttentionLayout.Bthd<T>(a, c.B, c.Tk, c.Hkv, c.D);
        try
        {
            AttentionOptions forwardOptions = forward == kernel.Name ? options : c.Options with { Variant = forward };
            Attention.Forward<T>(Q(q), KV(k), KV(v), forwardOptions, Q(o), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
            Attention.Backward<T>(Q(q), KV(k), KV(v), Q(o), Q(dO), AttentionLayout.Lse(lse, c.B, c.H, c.Tq), options, Q(dq), KV(dk), KV(dv));
        }
        catch (NotSupportedException e)
        {
            return new Outcome(true, 0, 0, null, AttendApp.OneLine(e));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new Outcome(false, double.PositiveInfinity, 0, $"{e.GetType().Name}: {AttendApp.OneLine(e)}", null);
        }
        ReferenceBackwardResult exact = ReferenceAttention.Backward<T>(Q(q), KV(k), KV(v), Q(dO), c.Options);
        double eq = RelativeL2<T>(dq, exact.DQ, out int n1), ek = RelativeL2<T>(dk, exact.DK, out int n2), ev = RelativeL2<T>(dv, exact.DV, out int n3);
        double worst = Math.Max(eq, Math.Max(ek, ev));
        int nan = n1 + n2 + n3;
        bool ok = nan == 0 && worst <= GradientTolerance(type);
        string detail = string.Create(CultureInfo.InvariantCulture, $"dQ {eq:E1} dK {ek:E1} dV {ev:E1}");
        return new Outcome(ok, worst, 0, nan > 0 ? $"{nan} NaN/unwritten gradients; {detail}" : ok ? null : detail, null);
    }

    private static void RoundThroughBf16<T>(T[] data) where T : unmanaged
    {
        for (int i = 0; i < data.Length; i++)
            data[i] = ElementConvert.FromSingle<T>(BFloat16.ToSingle(BFloat16.FromSingle(ElementConvert.ToSingle(data[i]))));
    }

    private static T[] Poisoned<T>(long count) where T : unmanaged
    {
        var data = new T[count];
        Array.Fill(data, ElementConvert.FromSingle<T>(float.NaN));
        return data;
    }

    private static T[] Gaussian<T>(Random rng, long count, double scale) where T : unmanaged
    {
        var data = new T[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            data[i] = ElementConvert.FromSingle<T>((float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }
        return data;
    }

    /// <summary>‖actual − expected‖₂ / ‖expected‖₂ (0 when both are zero); <paramref name="nan"/> counts NaN outputs (poison left unwritten).</summary>
    internal static double RelativeL2<T>(ReadOnlySpan<T> actual, ReadOnlySpan<double> expected, out int nan) where T : unmanaged
    {
        double diff = 0, norm = 0;
        nan = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double a = ElementConvert.ToSingle(actual[i]);
            if (double.IsNaN(a))
            {
                nan++;
                continue;
            }
            diff += (a - expected[i]) * (a - expected[i]);
            norm += expected[i] * expected[i];
        }
        return norm == 0 ? (diff == 0 ? 0 : double.PositiveInfinity) : Math.Sqrt(diff / norm);
    }

    private static double LseError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, out string? problem)
    {
        double worst = 0;
        problem = null;
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]))
            {
                if (!float.IsNegativeInfinity(actual[i])) problem = $"LSE[{i}] = {actual[i]} on a fully masked row (expected -inf)";
                continue;
            }
            if (!float.IsFinite(actual[i]))
            {
                problem = $"LSE[{i}] = {actual[i]} (expected {expected[i]:G6})";
                continue;
            }
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / Math.Max(1, Math.Abs(expected[i])));
        }
        return worst;
    }
}
