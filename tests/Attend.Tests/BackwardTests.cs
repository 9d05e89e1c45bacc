using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>
/// Backward (Attention.Backward through a forced variant, with the forward's own output and LSE) against the float64 analytic reference: relative error ≤ 1e-4 per gradient (max |g − ref| /
/// max |ref|). Looser than the forward's 1e-5 because dS = P ⊙ (dP − δ) subtracts two float32 sums of similar size,
/// and dK/dQ accumulate Tq (Tk) such products in float32.
/// </summary>
public class BackwardTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-4;

    /// <summary>
    /// Variants with a backward pass that are run here. CpuFlashVector512/256 belong here too but currently fail every
    /// case (dQ all zero, dK wrong, dV sometimes wrong on a process's first call): their runs are kept in
    /// PendingKernelBugs.cs.txt until src/Attend/Kernels is fixed; then add them back to this list.
    /// </summary>
    public static TheoryData<string> Variants() => new() { "CpuFlashVector512", "CpuFlashVector256", "CpuFlashVector128", "Reference" };

    private static bool Supported(string variant, out string why) =>
        KernelRegistry.Find(variant)!.IsSupported(new KernelProblem(AttentionPass.Backward, ElementType.Float32, 1, 1, 1, 64, 1, 1), out why);

    private string? Check(string variant, AttnCase c, AttnInputs<float> x, bool deterministic, string tag)
    {
        string what = $"seed {TestData.RunSeed} {tag} {variant}{(deterministic ? " deterministic" : "")} {c}";
        try
        {
            ReferenceBackwardResult r = Harness.ReferenceBackward(c, x);
            var (dq, dk, dv, _) = Harness.Backward(c, x, variant, deterministic);
            (double eq, double ek, double ev) = GradientErrors(c, (dq, dk, dv), r);
            string? masked = MaskedRowsHaveZeroGradient(c, x, dq);
            string line = $"{what}: dQ {eq:E2} dK {ek:E2} dV {ev:E2} {masked}";
            if (!(eq <= Tolerance && ek <= Tolerance && ev <= Tolerance) || masked is not null) return line;
            output.WriteLine("ok " + line);
            return null;
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            return $"{what}: threw {e.GetType().Name}: {e.Message}";
        }
    }

    /// <summary>
    /// max |a − e| / max(max |e|, floor), with floor = 0.1·√n for a gradient that sums n terms (dQ: keys; dK and dV:
    /// query rows times the query heads of a group). The floor matters only when the true gradient cancels to (nearly)
    /// zero: a row that sees one key has dS = P(dP − δ) = 0 exactly, yet float32 computes dP = dO·v and δ = Σ dO⊙O in
    /// different orders, leaving noise of about 1e-7·|dO|·|v|·√D per term, which a sum of n terms grows by about √n
    /// (seen: 1.4e-5 in dK summed over 129 rows × 8 heads, each row seeing one key). With the 1e-4 tolerance the
    /// floor allows 1e-5·√n absolute there. Inputs are O(1), so real gradients sit well above it and the measure is
    /// then the plain relative error.
    /// </summary>
    private static double GradientError(double[] actual, double[] expected, int terms) =>
        Fidelity.MaxRelativeError<double>(actual, expected, floor: 0.1 * Math.Sqrt(Math.Max(1, terms)));

    private static (double Q, double K, double V) GradientErrors(AttnCase c, (double[] DQ, double[] DK, double[] DV) actual, ReferenceBackwardResult expected)
    {
        int keyTerms = c.Tk, rowTerms = c.Tq * (c.H / c.Hkv);
        return (GradientError(actual.DQ, expected.DQ, keyTerms), GradientError(actual.DK, expected.DK, rowTerms), GradientError(actual.DV, expected.DV, rowTerms));
    }

    private static string? MaskedRowsHaveZeroGradient(AttnCase c, AttnInputs<float> x, double[] dq)
    {
        double[] lse = Harness.Reference(c, x).Lse;
        return Harness.MaskedRowsAreZero(c, dq, lse)?.Replace("fully masked row", "dQ of fully masked row");
    }

    private void Report(List<string> failures)
    {
        foreach (string f in failures) output.WriteLine("FAIL " + f);
        Assert.True(failures.Count == 0, $"{failures.Count} failing cases:\n" + string.Join("\n", failures.Take(30)));
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void NamedMasksAndGroupRatios(string variant)
    {
        if (!Supported(variant, out string why)) { output.WriteLine($"skip: {why}"); return; }
        var rng = TestData.Rng(600 + variant.Length);
        var failures = new List<string>();
        (string Name, Func<int, IMaskMod?> Mask)[] masks =
        [
            ("none", _ => null),
            ("causal", _ => Masks.Causal),
            ("window", t => Masks.SlidingWindow(rng.Next(0, t), rng.Next(0, 20))),
            ("prefix", t => Masks.PrefixLm(rng.Next(0, t))),
            ("document", t => Masks.Document(MaskCatalog.Documents(rng, t))),
            ("document&causal", t => Masks.And(Masks.Document(MaskCatalog.Documents(rng, t)), Masks.Causal)),
            ("block-causal", t => Masks.BlockCausal(rng.Next(1, 80))),
            ("head-band", _ => new HeadBandMask()),
        ];
        int[] ratios = Harness.GroupRatios;
        for (int i = 0; i < masks.Length; i++)
        {
            int hkv = rng.Next(1, 3), ratio = ratios[i % ratios.Length];
            var c = new AttnCase
            {
                B = rng.Next(1, 3), Tq = Harness.Length(rng), D = Harness.HeadDims[rng.Next(Harness.HeadDims.Length)], Hkv = hkv, H = hkv * ratio,
            };
            c.Tk = rng.Next(2) == 0 ? c.Tq : Harness.Length(rng);
            while (c.Work > 6_000_000) { c.Tq = Math.Max(1, c.Tq / 2) | 1; c.Tk = Math.Max(1, c.Tk / 2) | 1; }
            c.Mask = masks[i].Mask(Math.Max(c.Tq, c.Tk));
            c.ScoreMod = (i % 3) switch { 0 => AlibiScoreMod.Standard(c.H), 1 => Harness.RelativeBias(rng, c.H), _ => null };
            if (i % 4 == 1) c.Softcap = 8f;
            c.Bhtd = i % 2 == 1;
            string? f = Check(variant, c, AttnInputs<float>.Gaussian(c, rng), false, masks[i].Name);
            if (f is not null) failures.Add(f);
        }
        Report(failures);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void RandomShapesAndVarlen(string variant)
    {
        if (!Supported(variant, out string why)) { output.WriteLine($"skip: {why}"); return; }
        var rng = TestData.Rng(610 + variant.Length);
        var failures = new List<string>();
        for (int n = 0; n < 14; n++)
        {
            AttnCase c = Harness.RandomCase(rng, 4_000_000, varlen: n % 3 == 2);
            // Tq = 0 in total is left out: Attention.Backward then rejects the (empty) LSE as missing (see the report).
            if (c.Tq == 0) c.SetVarlen([.. c.QLens!.SkipLast(1), 1], c.KLens!);
            string? f = Check(variant, c, AttnInputs<float>.Gaussian(c, rng), n % 4 == 0, $"random case {n}");
            if (f is not null) failures.Add(f);
        }
        Report(failures);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void FullyMaskedRowsGiveZeroGradientsAndNoNaN(string variant)
    {
        if (!Supported(variant, out string why)) { output.WriteLine($"skip: {why}"); return; }
        var rng = TestData.Rng(620);
        var failures = new List<string>();
        AttnCase[] cases =
        [
            new() { Tq = 150, Tk = 70, H = 2, Hkv = 1, D = 64, Mask = Masks.Causal },
            new() { Tq = 90, Tk = 90, H = 2, Hkv = 2, D = 32, Mask = Masks.Not(Masks.Full) },
            new() { Tq = 120, Tk = 60, H = 4, Hkv = 1, D = 80, Mask = Masks.SlidingWindow(3, 0), ScoreMod = AlibiScoreMod.Standard(4), Softcap = 5 },
        ];
        var varlen = new AttnCase { H = 2, Hkv = 1, D = 64, Mask = Masks.Causal };
        varlen.SetVarlen([90, 5, 0, 40, 1], [10, 0, 0, 40, 1]);
        foreach (AttnCase c in cases.Append(varlen))
        {
            string? f = Check(variant, c, AttnInputs<float>.Gaussian(c, rng), false, "masked");
            if (f is not null) failures.Add(f);
        }
        Report(failures);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void DeterministicIsBitwiseRepeatableAndCorrect(string variant)
    {
        if (!Supported(variant, out string why)) { output.WriteLine($"skip: {why}"); return; }
        var rng = TestData.Rng(630);
        var failures = new List<string>();
        for (int n = 0; n < 4; n++)
        {
            // Long enough in Tq that dK/dV (and dQ) collect from several tiles and threads, GQA so heads add up.
            var c = new AttnCase { B = 1, Tq = 257 + 64 * n, Tk = 193 + 64 * n, H = 4, Hkv = n % 2 == 0 ? 1 : 2, D = 64,
                Mask = n % 2 == 0 ? Masks.Causal : null, ScoreMod = n == 3 ? AlibiScoreMod.Standard(4) : null };
            var x = AttnInputs<float>.Gaussian(c, rng);
            var first = Harness.Backward(c, x, variant, deterministic: true);
            var second = Harness.Backward(c, x, variant, deterministic: true);
            for (int i = 0; i < first.Raw.Length; i++)
            {
                if (BitConverter.SingleToUInt32Bits(first.Raw[i]) != BitConverter.SingleToUInt32Bits(second.Raw[i]))
                {
                    failures.Add($"seed {TestData.RunSeed} {variant} {c}: deterministic runs differ at flat index {i}: {first.Raw[i]:R} vs {second.Raw[i]:R}");
                    break;
                }
            }
            string? f = Check(variant, c, x, true, $"deterministic {n}");
            if (f is not null) failures.Add(f);
        }
        Report(failures);
    }

    /// <summary>Small fixed cases that once exposed an unpacked K/V panel in the flash backward (seed-independent).</summary>
    [Theory]
    [InlineData("CpuFlashVector512", 64, 64, 64)]
    [InlineData("CpuFlashVector256", 3, 4, 16)]
    [InlineData("CpuFlashVector512", 100, 100, 64)]
    public void FlashBackwardSmallFixedCases(string variant, int tq, int tk, int d)
    {
        if (!Supported(variant, out string why)) { output.WriteLine($"skip: {why}"); return; }
        var c = new AttnCase { Tq = tq, Tk = tk, H = 2, Hkv = 1, D = d };
        var x = AttnInputs<float>.Gaussian(c, new Random(1));
        var r = Harness.ReferenceBackward(c, x);
        for (int run = 0; run < 3; run++)
        {
            var (dq, dk, dv, _) = Harness.Backward(c, x, variant, false);
            (double eq, double ek, double ev) = GradientErrors(c, (dq, dk, dv), r);
            Assert.True(eq <= Tolerance && ek <= Tolerance && ev <= Tolerance, $"{variant} Tq{tq} Tk{tk} D{d} run {run}: dQ {eq:E2} dK {ek:E2} dV {ev:E2}");
        }
    }

    /// <summary>A varlen batch whose sequences have no queries: the LSE is empty and dK = dV = 0.</summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void BackwardWithNoQueries(string variant)
    {
        if (!Supported(variant, out string why)) { output.WriteLine($"skip: {why}"); return; }
        var c = new AttnCase { H = 2, Hkv = 1, D = 32 };
        c.SetVarlen([0, 0], [5, 3]);
        var x = AttnInputs<float>.Gaussian(c, new Random(3));
        var (_, dk, dv, _) = Harness.Backward(c, x, variant, false);
        Assert.All(dk, v => Assert.Equal(0.0, v));
        Assert.All(dv, v => Assert.Equal(0.0, v));
    }
}
