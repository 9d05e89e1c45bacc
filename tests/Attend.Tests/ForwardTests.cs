using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>
/// Every registered variant against the float64 reference on random shapes (seeded; the seed is printed on failure):
/// float32 relative error ≤ 1e-5, LSE ≤ 1e-5, fully masked rows exactly 0 with LSE −∞, no NaN.
/// </summary>
public class ForwardTests(ITestOutputHelper output)
{
    private const double Float32Tolerance = 1e-5;

    private static IEnumerable<AttentionKernel> Runnable(AttnCase c, ElementType type)
    {
        var problem = new KernelProblem(AttentionPass.Forward, type, c.Sequences, c.H, c.Hkv, c.D,
            c.QLens?.Max() ?? c.Tq, c.KLens?.Max() ?? c.Tk);
        foreach (AttentionKernel k in KernelRegistry.Softmax)
            if (k.IsSupported(problem, out _)) yield return k;
    }

    /// <summary>Runs every supported variant on one float32 case; adds failures to <paramref name="failures"/>.</summary>
    private void CheckFloat32(AttnCase c, AttnInputs<float> x, List<string> failures, string tag, double tolerance = Float32Tolerance, string? skip = null)
    {
        ReferenceForwardResult r = Harness.Reference(c, x);
        foreach (AttentionKernel kernel in Runnable(c, ElementType.Float32))
        {
            if (kernel.Name == skip) continue;
            string what = $"seed {TestData.RunSeed} {tag} {kernel.Name} {c}";
            try
            {
                var (o, lse, _, ran) = Harness.Forward(c, x, kernel.Name);
                Assert.Equal(kernel.Name, ran);
                double err = TestData.RelativeError(o, r.Output), lseErr = TestData.LseError(lse, r.Lse);
                string? masked = Harness.MaskedRowsAreZero(c, o, r.Lse);
                if (!(err <= tolerance) || !(lseErr <= 1e-5) || masked is not null)
                    failures.Add($"{what}: err {err:E2} lse {lseErr:E2} {masked}");
                else
                    output.WriteLine($"ok {what}: err {err:E2} lse {lseErr:E2}");
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                failures.Add($"{what}: threw {e.GetType().Name}: {e.Message}");
            }
        }
    }

    private void Report(List<string> failures)
    {
        foreach (string f in failures) output.WriteLine("FAIL " + f);
        Assert.True(failures.Count == 0, $"{failures.Count} failing cases:\n" + string.Join("\n", failures.Take(30)));
    }

    [Fact]
    public void RandomShapesEveryVariant()
    {
        var rng = TestData.Rng(400);
        var failures = new List<string>();
        for (int n = 0; n < 36; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 12_000_000, varlen: false);
            CheckFloat32(c, AttnInputs<float>.Gaussian(c, rng), failures, $"case {n}");
        }
        Report(failures);
    }

    [Fact]
    public void RaggedVarlenBatchesEveryVariant()
    {
        var rng = TestData.Rng(401);
        var failures = new List<string>();
        for (int n = 0; n < 20; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 12_000_000, varlen: true);
            if (n < 4 && c.QLens!.Length < 3)
            {
                // Make sure a length-0 and a length-1 sequence appear next to a longer one.
                c.SetVarlen([0, 1, 70, 1], [0, 1, 70, 33]);
            }
            CheckFloat32(c, AttnInputs<float>.Gaussian(c, rng), failures, $"varlen case {n}");
        }
        Report(failures);
    }

    [Fact]
    public void DecodeShapesEveryVariant()
    {
        // ≤ 16 queries per sequence so that CpuSplitKvDecode takes part, with long and odd caches.
        var rng = TestData.Rng(402);
        var failures = new List<string>();
        for (int n = 0; n < 24; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 12_000_000, varlen: n % 3 == 2, maxQueries: 16);
            if (n % 4 == 0 && c.QLens is null) c.Tk = rng.Next(300, 3000);
            CheckFloat32(c, AttnInputs<float>.Gaussian(c, rng), failures, $"decode case {n}");
        }
        Report(failures);
    }

    [Fact]
    public void EveryMaskEveryVariant()
    {
        var rng = TestData.Rng(403);
        var failures = new List<string>();
        for (int kind = 0; kind < MaskCatalog.Kinds; kind++)
        {
            foreach ((int tq, int tk) in new[] { (rng.Next(17, 200), rng.Next(17, 200)), (rng.Next(1, 17), rng.Next(1, 400)) })
            {
                var c = new AttnCase { B = 2, Tq = tq, Tk = tk, H = 4, Hkv = 2, D = 64 };
                c.Mask = MaskCatalog.Make(kind, rng, Math.Max(tq, tk));
                CheckFloat32(c, AttnInputs<float>.Gaussian(c, rng), failures, $"mask kind {kind}");
            }
        }
        Report(failures);
    }

    [Fact]
    public void FullyMaskedRowsGiveZeroAndNegativeInfinity()
    {
        var rng = TestData.Rng(404);
        var failures = new List<string>();
        AttnCase[] cases =
        [
            new() { Tq = 150, Tk = 70, H = 2, Hkv = 1, D = 64, Mask = Masks.Causal },                          // first 80 rows see nothing
            new() { Tq = 9, Tk = 3, H = 2, Hkv = 2, D = 32, Mask = Masks.Causal },                            // decode-sized, rows 0..5 empty
            new() { Tq = 100, Tk = 100, H = 1, Hkv = 1, D = 32, Mask = Masks.Not(Masks.Full) },               // nothing visible at all
            new() { Tq = 5, Tk = 5, H = 2, Hkv = 1, D = 32, Mask = Masks.Not(Masks.Full) },
            new() { Tq = 130, Tk = 130, H = 2, Hkv = 1, D = 96, Mask = Masks.And(Masks.SlidingWindow(0, 0), Masks.Not(Masks.SlidingWindow(0, 0))) },
            new() { Tq = 120, Tk = 60, H = 2, Hkv = 1, D = 64, Mask = Masks.SlidingWindow(3, 0) },             // a window that sees nothing for early rows
            new() { Tq = 200, Tk = 100, H = 3, Hkv = 1, D = 80, Mask = Masks.And(Masks.PrefixLm(0), Masks.Causal), ScoreMod = AlibiScoreMod.Standard(3), Softcap = 10 },
            new() { Tq = 70, Tk = 70, H = 2, Hkv = 2, D = 64, Mask = Masks.Document(SeqOffsets.FromLengths([20, 30])) }, // rows past the documents
        ];
        var varlen = new AttnCase { H = 2, Hkv = 1, D = 64, Mask = Masks.Causal };
        varlen.SetVarlen([90, 5, 0, 40], [10, 0, 0, 40]); // sequence 1 has queries but no keys
        var noKeys = new AttnCase { H = 2, Hkv = 1, D = 32 };
        noKeys.SetVarlen([3, 2], [0, 0]); // no keys at all (Tk = 0): every row is empty
        var noQueries = new AttnCase { H = 2, Hkv = 2, D = 32, Mask = Masks.Causal };
        noQueries.SetVarlen([0, 0], [5, 3]); // nothing to compute (Tq = 0)
        cases = [.. cases, varlen, noKeys, noQueries];
        for (int i = 0; i < cases.Length; i++)
        {
            if (i % 2 == 1) cases[i].Bhtd = true;
            CheckFloat32(cases[i], AttnInputs<float>.Gaussian(cases[i], rng), failures, $"masked case {i}");
        }
        Report(failures);
    }

    [Fact]
    public void LogitsScaledToTenThousand()
    {
        // Integer inputs times 4 and scale 1: every logit is an exact float32 integer of magnitude up to ~1e4, so the
        // dot products are exact in float32 and the 1e-5 bound measures only the softmax (no input-rounding excuse).
        var rng = TestData.Rng(405);
        var failures = new List<string>();
        for (int n = 0; n < 10; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 8_000_000, varlen: n % 4 == 3, maxQueries: n % 2 == 0 ? 16 : int.MaxValue);
            c.ScoreMod = null;
            c.Softcap = null;
            c.Scale = 1f;
            long nq = (long)c.B * c.Tq * c.H * c.D, nk = (long)c.B * c.Tk * c.Hkv * c.D;
            float[] Ints(long count, int range, int times = 4)
            {
                var a = new float[count];
                for (long i = 0; i < count; i++) a[i] = times * rng.Next(-range, range + 1);
                return a;
            }
            int range = Math.Max(2, (int)Math.Round(25 / Math.Pow(c.D / 32.0, 0.25)));
            var x = new AttnInputs<float> { Q = Ints(nq, range), K = Ints(nk, range), V = TestData.Gaussian<float>(rng, nk), DO = new float[nq] };
            if (n % 2 == 0)
            {
                // Logits ±1e4 with near ties: dimension 0 holds ±100 in q and 100 in k (±1e4 for every pair), the other
                // dimensions small integers, so each row's softmax spreads over several keys at a large offset.
                x.Q = Ints(nq, 1, 1);
                x.K = Ints(nk, 1, 1);
                for (long i = 0; i < nq; i += c.D) x.Q[i] = rng.Next(2) == 0 ? 100 : -100;
                for (long i = 0; i < nk; i += c.D) x.K[i] = 100;
            }
            ReferenceForwardResult r = Harness.Reference(c, x);
            double maxLse = r.Lse.Where(double.IsFinite).Select(Math.Abs).DefaultIfEmpty(0).Max();
            output.WriteLine($"case {n}: max |LSE| {maxLse:F0}");
            CheckFloat32(c, x, failures, $"large-logit case {n} (max |lse| {maxLse:F0})");
        }
        Report(failures);
    }

    // Half and BFloat16: the kernel's error against float64 must be at most twice the error of the same attention
    // computed naively in that type (scores, probabilities and output each rounded to the type, sums in double),
    // plus 1e-3 absolute slack (relative to max |reference|) for cases where the naive error happens to be tiny.
    private void CheckLowPrecision<T>(Func<double, double> round, int salt) where T : unmanaged
    {
        var rng = TestData.Rng(salt);
        ElementType type = ElementTypes.Of<T>();
        var failures = new List<string>();
        for (int n = 0; n < 14; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 6_000_000, varlen: n % 4 == 3, maxQueries: n % 3 == 0 ? 16 : int.MaxValue);
            var x = AttnInputs<T>.Gaussian(c, rng);
            ReferenceForwardResult r = Harness.Reference(c, x);
            double naiveErr = TestData.RelativeError(Harness.Naive(c, x, round), r.Output);
            double bound = 2 * naiveErr + 1e-3;
            foreach (AttentionKernel kernel in Runnable(c, type))
            {
                string what = $"seed {TestData.RunSeed} {typeof(T).Name} case {n} {kernel.Name} {c}";
                try
                {
                    var (o, lse, _, _) = Harness.Forward(c, x, kernel.Name);
                    double err = TestData.RelativeError(o, r.Output), lseErr = TestData.LseError(lse, r.Lse);
                    string? masked = Harness.MaskedRowsAreZero(c, o, r.Lse);
                    if (!(err <= bound) || !(lseErr <= 1e-5) || masked is not null)
                        failures.Add($"{what}: err {err:E2} (naive {naiveErr:E2}, bound {bound:E2}) lse {lseErr:E2} {masked}");
                    else
                        output.WriteLine($"ok {what}: err {err:E2} naive {naiveErr:E2} lse {lseErr:E2}");
                }
                catch (Exception e) when (e is not Xunit.Sdk.XunitException)
                {
                    failures.Add($"{what}: threw {e.GetType().Name}: {e.Message}");
                }
            }
        }
        Report(failures);
    }

    [Fact]
    public void HalfWithinNaiveHalfError() => CheckLowPrecision<Half>(v => (double)(Half)v, 406);

    [Fact]
    public void BFloat16WithinNaiveBFloat16Error() => CheckLowPrecision<BFloat16>(v => BFloat16.ToSingle(BFloat16.FromSingle((float)v)), 407);

    [Fact]
    public void DecodeEqualsFullAttentionOnTheSameCache()
    {
        var rng = TestData.Rng(408);
        var failures = new List<string>();
        string flash = KernelRegistry.Softmax.First(k => k.Name.StartsWith("CpuFlash", StringComparison.Ordinal) &&
            k.IsSupported(new KernelProblem(AttentionPass.Forward, ElementType.Float32, 1, 1, 1, 64, 1, 1), out _)).Name;
        int[] queries = [1, 2, 5, 16];
        int[] caches = [1, 63, 64, 65, 1000, 4097];
        for (int n = 0; n < 12; n++)
        {
            var c = new AttnCase { B = rng.Next(1, 3), Tq = queries[n % 4], Tk = caches[rng.Next(caches.Length)], D = Harness.HeadDims[rng.Next(6)] };
            c.Hkv = rng.Next(1, 3);
            c.H = c.Hkv * Harness.GroupRatios[rng.Next(5)];
            c.Mask = rng.Next(3) switch { 0 => Masks.Causal, 1 => Masks.SlidingWindow(rng.Next(0, 500), 0), _ => null };
            if (n % 5 == 4) c.ScoreMod = AlibiScoreMod.Standard(c.H);
            var x = AttnInputs<float>.Gaussian(c, rng);
            ReferenceForwardResult r = Harness.Reference(c, x);
            string what = $"seed {TestData.RunSeed} decode-vs-{flash} case {n} {c}";
            try
            {
                var (od, ld, _, ran) = Harness.Forward(c, x, "CpuSplitKvDecode");
                var (of, lf, _, _) = Harness.Forward(c, x, flash);
                double errRef = TestData.RelativeError(od, r.Output), lseRef = TestData.LseError(ld, r.Lse);
                double errFlash = TestData.RelativeError(od, of), lseFlash = TestData.LseError(ld, Array.ConvertAll(lf, v => (double)v));
                if (!(errRef <= Float32Tolerance && lseRef <= 1e-5 && errFlash <= Float32Tolerance && lseFlash <= 1e-5))
                    failures.Add($"{what}: vs reference {errRef:E2} (lse {lseRef:E2}), vs flash {errFlash:E2} (lse {lseFlash:E2})");
                else
                    output.WriteLine($"ok {what}: vs reference {errRef:E2}, vs flash {errFlash:E2}");
                // Unmasked default is also what runs when nothing is forced.
                if (c.Mask is null && Harness.Forward(c, x, null).Ran != "CpuSplitKvDecode") failures.Add($"{what}: default selection is not the decode variant");
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                failures.Add($"{what}: threw {e.GetType().Name}: {e.Message}");
            }
        }
        Report(failures);
    }

    /// <summary>
    /// Split-KV decode joins its key ranges through their LSEs; at logits of 1e4 a float32 LSE is only good to about
    /// 1e-3, which once shifted the merge weights by ~5e-4 (relative error 2e-4). The ranges are now merged relative
    /// to their largest max; decode must match the reference as tightly as the flash kernel does.
    /// </summary>
    [Theory]
    [InlineData(1, 4096, 64)]
    [InlineData(16, 281, 128)]
    public void DecodeMergeKeepsPrecisionAtLargeLogits(int tq, int tk, int d)
    {
        var rng = new Random(7);
        var c = new AttnCase { Tq = tq, Tk = tk, H = 4, Hkv = 1, D = d, Scale = 1f };
        var x = AttnInputs<float>.Gaussian(c, rng);
        // Integer inputs with one large component: float32 computes the logits (about 1e4) exactly, with near ties.
        for (int i = 0; i < x.Q.Length; i++) x.Q[i] = i % d == 0 ? 100 : rng.Next(-1, 2);
        for (int i = 0; i < x.K.Length; i++) x.K[i] = i % d == 0 ? 100 : rng.Next(-1, 2);
        ReferenceForwardResult r = Harness.Reference(c, x);
        var (decode, _, _, _) = Harness.Forward(c, x, "CpuSplitKvDecode");
        double err = TestData.RelativeError(decode, r.Output);
        output.WriteLine($"Tq {tq} Tk {tk} D {d}: decode {err:E2}");
        Assert.True(err <= 1e-5, $"Tq {tq} Tk {tk} D {d}: decode {err:E2}");
    }
}
