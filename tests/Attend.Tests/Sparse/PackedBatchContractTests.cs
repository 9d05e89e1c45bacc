using Attend.Methods;
using Xunit;

namespace Attend.Tests.Sparse;

/// <summary>
/// The contract of every sparse and approximate method that accepts varlen offsets: a packed (ragged) batch gives each
/// sequence exactly what that sequence gives alone (the same plan, the same output to rounding). Defaults that depend on
/// the length (windows, grids, budgets, cluster and list counts, span lengths) must be computed per sequence, not from
/// the longest sequence or the packed total. A method that cannot be per sequence must refuse offsets by name.
/// </summary>
public sealed class PackedBatchContractTests
{
    private const double Tolerance = 1e-5;
    private const int Heads = 4, KvHeads = 2, Dim = 16;
    private static readonly int[] s_lengths = [1, 97, 300];

    /// <summary>Every sparse and approximation method of the catalog with its defaults, plus parameter sets whose length rule matters.</summary>
    public static TheoryData<string, string[], int[]> Methods()
    {
        var data = new TheoryData<string, string[], int[]>();
        foreach (IAttentionMethod m in MethodCatalog.Runnable)
            if (m.Info.Family is "sparse" or "approximation") data.Add(m.Info.Name, [], s_lengths);
        data.Add("moa", ["alpha=3,10,1,7", "beta=0.1,0.25,0.05,0.5", "sinks=2"], s_lengths);
        // MInference's default budget max(128, Tk/16) only depends on the length above 2048 keys.
        data.Add("minference", [], [1, 97, 2100]);
        data.Add("minference", ["pattern=search", "budget=64"], s_lengths);
        data.Add("minference", ["pattern=block-sparse", "budget=128"], s_lengths);
        data.Add("flexprefill", ["tau=0"], s_lengths);
        data.Add("flexprefill", ["tau=100", "gamma=0.5"], s_lengths);
        // The approximations below min_seq_len are exact: these settings make every long sequence approximate.
        data.Add("hyperattention", ["min_seq_len=64", "block=64", "samples=32"], s_lengths);
        data.Add("scatterbrain", ["block=64", "features=16"], s_lengths);
        data.Add("routing-transformer", ["sorted=false"], s_lengths);
        data.Add("spatten", ["head-keep=0.5"], s_lengths);
        data.Add("spatten", ["head-keep=3", "token-keep=0.5"], s_lengths);
        return data;
    }

    [Theory]
    [MemberData(nameof(Methods))]
    public void PackedBatchEqualsEachSequenceAlone(string name, string[] pairs, int[] lengths)
    {
        IAttentionMethod method = MethodCatalog.FindRunnable(name) ?? throw new InvalidOperationException($"{name} is not registered");
        var rng = TestData.Rng(TestData.Salt(name) + pairs.Length + lengths[^1]);
        SeqOffsets offsets = SeqOffsets.FromLengths(lengths);
        int total = offsets.TotalTokens;
        float[] q = TestData.Gaussian<float>(rng, (long)total * Heads * Dim);
        float[] k = TestData.Gaussian<float>(rng, (long)total * KvHeads * Dim);
        float[] v = TestData.Gaussian<float>(rng, (long)total * KvHeads * Dim);
        var packedInputs = new MethodInputs(new MethodTensor(q, 1, total, Heads, Dim), new MethodTensor(k, 1, total, KvHeads, Dim), new MethodTensor(v, 1, total, KvHeads, Dim))
        {
            Offsets = offsets,
        };
        MethodResult packed;
        try
        {
            packed = method.Run(packedInputs, MethodArguments.Parse(pairs));
        }
        catch (ArgumentException e) when (e.ParamName == "offsets")
        {
            // A method that cannot plan per sequence refuses a ragged batch, naming the argument (and says so here).
            Assert.Contains("offsets", e.Message, StringComparison.OrdinalIgnoreCase);
            return;
        }
        Assert.Equal((long)total * Heads * Dim, packed.Output.Data.Length);

        double weightedDensity = 0, basePairs = 0;
        for (int s = 0; s < offsets.Count; s++)
        {
            int start = offsets.Start(s), length = offsets.Length(s);
            float[] qs = q.AsSpan(start * Heads * Dim, length * Heads * Dim).ToArray();
            float[] ks = k.AsSpan(start * KvHeads * Dim, length * KvHeads * Dim).ToArray();
            float[] vs = v.AsSpan(start * KvHeads * Dim, length * KvHeads * Dim).ToArray();
            var alone = new MethodInputs(new MethodTensor(qs, 1, length, Heads, Dim), new MethodTensor(ks, 1, length, KvHeads, Dim), new MethodTensor(vs, 1, length, KvHeads, Dim));
            MethodResult single = method.Run(alone, MethodArguments.Parse(pairs));
            float[] packedPart = packed.Output.Data.AsSpan(start * Heads * Dim, length * Heads * Dim).ToArray();
            Assert.All(packedPart, x => Assert.False(float.IsNaN(x), $"{name}: NaN in sequence {s}"));
            // The packed density is the sequences' densities weighted by their causal pairs (every default here is causal).
            double causalPairs = length * (length + 1.0) / 2;
            weightedDensity += (single.Density ?? double.NaN) * causalPairs;
            basePairs += causalPairs;
            double err = TestData.RelativeL2(packedPart, single.Output.Data);
            Assert.True(err <= Tolerance,
                $"{name} [{string.Join(' ', pairs)}]: sequence {s} (length {length}) differs from the same sequence alone by {err:E2} (seed {TestData.RunSeed})");
        }
        if (packed.Density is double density)
            Assert.True(Math.Abs(density - weightedDensity / basePairs) <= 1e-9,
                $"{name}: packed density {density} but the sequences' weighted density is {weightedDensity / basePairs}");
    }

    [Theory]
    [InlineData("minference")]
    [InlineData("routing-transformer")]
    [InlineData("retrieval-attention")]
    [InlineData("superlinear")]
    public void AllEmptyPackedBatchStillChecksItsParameters(string name)
    {
        // The methods that plan each sequence alone ran nothing on a batch of empty sequences, so a misspelled parameter
        // passed unnoticed; the valid call gives an empty output.
        IAttentionMethod method = MethodCatalog.FindRunnable(name) ?? throw new InvalidOperationException($"{name} is not registered");
        MethodInputs Empty() => new(new MethodTensor([], 1, 0, Heads, Dim), new MethodTensor([], 1, 0, KvHeads, Dim), new MethodTensor([], 1, 0, KvHeads, Dim))
        {
            Offsets = SeqOffsets.FromLengths([0, 0]),
        };
        Assert.Empty(method.Run(Empty(), MethodArguments.Empty).Output.Data);
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(Empty(), MethodArguments.Parse(["no-such-parameter=1"])));
        Assert.Contains("no-such-parameter", e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// The dynamic prefill selectors decide a pattern per head from the data; in a padded batch too each entry gets the
    /// plan it gets alone (FlexPrefill's query-aware / vertical-slash choice is per entry and head, not the first entry's).
    /// </summary>
    [Theory]
    [InlineData("flexprefill", new[] { "tau=0.3" })]
    [InlineData("flexprefill", new[] { "tau=0.3", "gamma=0.7" })]
    [InlineData("minference", new[] { "pattern=search", "budget=64" })]
    [InlineData("anchor-attention", new string[0])]
    public void PaddedBatchEqualsEachEntryAlone(string name, string[] pairs)
    {
        IAttentionMethod method = MethodCatalog.FindRunnable(name) ?? throw new InvalidOperationException($"{name} is not registered");
        const int batch = 3, t = 701;
        float[] q = [], k = [], v = [];
        MethodResult padded = null!;
        for (int attempt = 0; ; attempt++)
        {
            var rng = TestData.Rng(TestData.Salt(name) + 17 * pairs.Length + 1000 * attempt);
            // Entries of different character, so a per-head choice made on one entry is wrong for another: a flat one
            // (nearly uniform attention: FlexPrefill goes query-aware), one where every query wants one planted key (a
            // vertical line the pooled block estimate dilutes: vertical-slash), and a plain random one.
            q = TestData.Gaussian<float>(rng, (long)batch * t * Heads * Dim);
            k = TestData.Gaussian<float>(rng, (long)batch * t * KvHeads * Dim);
            v = TestData.Gaussian<float>(rng, (long)batch * t * KvHeads * Dim);
            for (long i = 0; i < (long)t * Heads * Dim; i++) q[i] *= 0.05f;
            float[] u = TestData.Gaussian<float>(rng, Dim);
            for (int row = 0; row < t; row++)
                for (int head = 0; head < Heads; head++)
                    for (int i = 0; i < Dim; i++) q[((long)(t + row) * Heads + head) * Dim + i] = 0.3f * q[((long)(t + row) * Heads + head) * Dim + i] + 2 * u[i];
            for (int head = 0; head < KvHeads; head++)
                for (int i = 0; i < Dim; i++) k[((long)(t + 70) * KvHeads + head) * Dim + i] = 3 * u[i];
            var inputs = new MethodInputs(new MethodTensor(q, batch, t, Heads, Dim), new MethodTensor(k, batch, t, KvHeads, Dim), new MethodTensor(v, batch, t, KvHeads, Dim));
            padded = method.Run(inputs, MethodArguments.Parse(pairs));
            if (name != "flexprefill") break;
            // At τ = 0.3 the flat entry goes query-aware and the planted-key entry vertical-slash, so the choice must be
            // per entry. A rare draw (about one in fifty) gives both entries the same choices: that draw proves nothing
            // about the per-entry choice, so it is drawn again (five draws at most).
            string[] entries = padded.Report.First(p => p.Key == "patterns").Value.Split("; ");
            Assert.Equal(batch, entries.Length);
            if (entries[0] != entries[1]) break;
            Assert.True(attempt < 4, $"five draws gave the flat and the planted-key entry the same choices: {entries[0]} (seed {TestData.RunSeed})");
        }
        for (int b = 0; b < batch; b++)
        {
            var alone = new MethodInputs(
                new MethodTensor(q.AsSpan(b * t * Heads * Dim, t * Heads * Dim).ToArray(), 1, t, Heads, Dim),
                new MethodTensor(k.AsSpan(b * t * KvHeads * Dim, t * KvHeads * Dim).ToArray(), 1, t, KvHeads, Dim),
                new MethodTensor(v.AsSpan(b * t * KvHeads * Dim, t * KvHeads * Dim).ToArray(), 1, t, KvHeads, Dim));
            MethodResult single = method.Run(alone, MethodArguments.Parse(pairs));
            double err = TestData.RelativeL2(padded.Output.Data.AsSpan(b * t * Heads * Dim, t * Heads * Dim).ToArray(), single.Output.Data);
            Assert.True(err <= Tolerance, $"{name} [{string.Join(' ', pairs)}]: batch entry {b} differs from the entry alone by {err:E2} (seed {TestData.RunSeed})");
        }
    }
}
