namespace Attend.Cli;

/// <summary>Which pass a bench case times.</summary>
internal enum BenchPass
{
    /// <summary>Forward (prefill): FLOPs = 4·H·D·visible pairs.</summary>
    Forward,

    /// <summary>Backward from the saved LSE: FLOPs = 2.5 × forward.</summary>
    Backward,

    /// <summary>A few queries against a long cache: bytes of K and V read per second.</summary>
    Decode,
}

/// <summary>One benchmark case: a pass, a shape and a mask (by name; built by <see cref="BenchMasks"/>).</summary>
internal sealed record BenchCase(BenchPass Pass, string Mask, int B, int H, int Hkv, int Tq, int Tk, int D, string? Variant = null, bool Deterministic = false)
{
    /// <summary>A short identifier such as <c>fwd_causal_h8kv2_d128_t4096</c>.</summary>
    public string Name => $"{Pass switch { BenchPass.Forward => "fwd", BenchPass.Backward => "bwd", _ => "dec" }}_{Mask}_h{H}kv{Hkv}_d{D}_t{(Pass == BenchPass.Decode ? Tk : Tq)}"
        + (Variant is null ? "" : "_" + Variant) + (Deterministic ? "_det" : "");

    /// <summary><c>forward</c>, <c>backward</c> or <c>decode</c>.</summary>
    public string PassName => Pass.ToString().ToLowerInvariant();

    /// <summary>The same case at a smaller length (for the backward check against the reference).</summary>
    public BenchCase WithLength(int t) => this with { Tq = t, Tk = t };
}

/// <summary>
/// The embedded workloads of <c>attend bench</c>: the CPU shapes of docs BENCH-PROTOCOL.md scaled to run in under two
/// minutes on two cores, and a tiny one (<c>--quick</c>) for tests.
/// </summary>
internal static class BenchWorkload
{
    /// <summary>The default workload.</summary>
    public static IReadOnlyList<BenchCase> Default()
    {
        var cases = new List<BenchCase>();
        // Forward: B=1, H=8 over Hkv 2 and 8, D 64 and 128, T 1k/2k/4k, masks full, causal, sliding window causal (1024).
        foreach (int t in new[] { 1024, 2048, 4096 })
            foreach (int d in new[] { 64, 128 })
                foreach (int hkv in new[] { 2, 8 })
                    foreach (string mask in new[] { "full", "causal", "window1024" })
                        cases.Add(new BenchCase(BenchPass.Forward, mask, 1, 8, hkv, t, t, d));
        // One packed varlen case: documents of uneven length, causal within each document.
        cases.Add(new BenchCase(BenchPass.Forward, "doc_causal", 1, 8, 2, 4096, 4096, 128));
        // The headline forward again on the narrower variants (what machines without AVX-512, and Arm64, get).
        cases.Add(new BenchCase(BenchPass.Forward, "causal", 1, 8, 2, 4096, 4096, 128, Variant: "CpuFlashVector256"));
        cases.Add(new BenchCase(BenchPass.Forward, "causal", 1, 8, 2, 4096, 4096, 128, Variant: "CpuFlashVector128"));
        // Backward (causal) at the headline shape (also deterministic) and a smaller one.
        cases.Add(new BenchCase(BenchPass.Backward, "causal", 1, 8, 2, 4096, 4096, 128));
        cases.Add(new BenchCase(BenchPass.Backward, "causal", 1, 8, 2, 4096, 4096, 128, Deterministic: true));
        cases.Add(new BenchCase(BenchPass.Backward, "causal", 1, 8, 2, 1024, 1024, 64));
        // Decode: one query against a cache below and above the last-level cache.
        foreach (int tk in new[] { 32768, 131072 })
            cases.Add(new BenchCase(BenchPass.Decode, "full", 1, 8, 2, 1, tk, 128));
        return cases;
    }

    /// <summary>A tiny workload that runs in seconds, covering each pass and mask kind.</summary>
    public static IReadOnlyList<BenchCase> Quick() =>
    [
        new(BenchPass.Forward, "full", 1, 4, 2, 256, 256, 64),
        new(BenchPass.Forward, "causal", 1, 4, 2, 256, 256, 64),
        new(BenchPass.Forward, "window1024", 1, 4, 4, 256, 256, 32),
        new(BenchPass.Forward, "doc_causal", 1, 4, 2, 256, 256, 64),
        new(BenchPass.Backward, "causal", 1, 4, 2, 128, 128, 64),
        new(BenchPass.Decode, "full", 1, 4, 2, 1, 4096, 64),
    ];
}

/// <summary>The masks the bench names.</summary>
internal static class BenchMasks
{
    /// <summary>Builds mask <paramref name="name"/> for <paramref name="keyLength"/> keys; null for <c>full</c>.</summary>
    public static IMaskMod? Create(string name, int keyLength) => name switch
    {
        "full" => null,
        "causal" => new CausalMask(),
        "window1024" => new SlidingWindowMask(1024, 0),
        "doc_causal" => Masks.And(new CausalMask(), new DocumentMask(Documents(keyLength))),
        _ => throw new ArgumentException($"Unknown bench mask '{name}'.", nameof(name)),
    };

    /// <summary>Uneven documents packed to <paramref name="length"/>: lengths cycle through 1/2, 1/4, 1/8, … of the rest (at least 1 token).</summary>
    public static SeqOffsets Documents(int length)
    {
        var lengths = new List<int>();
        int left = length;
        while (left > 0)
        {
            int next = Math.Max(Math.Min(left, 64), left / 2);
            if (left - next < 16) next = left;
            lengths.Add(next);
            left -= next;
        }
        return SeqOffsets.FromLengths(lengths.ToArray());
    }
}
