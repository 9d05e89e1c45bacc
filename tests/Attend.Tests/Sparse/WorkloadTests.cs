using Attend.Workloads;
using Xunit;

namespace Attend.Tests.Sparse;

/// <summary>The workload generator: its structure is really there, exactly where it says, and it is deterministic.</summary>
public sealed class WorkloadTests
{
    private static double Logit(Workload w, int batch, int head, int query, int key)
    {
        int kv = head / (w.Heads / w.KvHeads), d = w.HeadDim;
        long qo = (((long)batch * w.Length + query) * w.Heads + head) * d, ko = (((long)batch * w.Length + key) * w.KvHeads + kv) * d;
        double dot = 0;
        for (int i = 0; i < d; i++) dot += (double)w.Q[qo + i] * w.K[ko + i];
        return dot * w.Scale;
    }

    // Softmax over the causal row of `query` (keys 0..query) in float64.
    private static double[] CausalRow(Workload w, int batch, int head, int query)
    {
        var p = new double[query + 1];
        double max = double.NegativeInfinity;
        for (int k = 0; k <= query; k++) { p[k] = Logit(w, batch, head, query, k); max = Math.Max(max, p[k]); }
        double sum = 0;
        for (int k = 0; k <= query; k++) { p[k] = Math.Exp(p[k] - max); sum += p[k]; }
        for (int k = 0; k <= query; k++) p[k] /= sum;
        return p;
    }

    [Fact]
    public void SameSeedGivesSameBytesOtherSeedDiffers()
    {
        WorkloadOptions o = WorkloadPresets.Get(WorkloadPresets.Llm, 300, heads: 4, kvHeads: 2, headDim: 64, batch: 2);
        Workload a = WorkloadGenerator.Generate(o, 5), b = WorkloadGenerator.Generate(o, 5), c = WorkloadGenerator.Generate(o, 6);
        Assert.Equal(a.Q, b.Q);
        Assert.Equal(a.K, b.K);
        Assert.Equal(a.V, b.V);
        Assert.Equal(a.Needles, b.Needles);
        Assert.NotEqual(a.Q, c.Q);
        Assert.Equal(o.Batch * o.Length * o.Heads * o.HeadDim, a.Q.Length);
        Assert.Equal(o.Batch * o.Length * o.KvHeads * o.HeadDim, a.K.Length);
        Assert.All(a.Q, x => Assert.True(float.IsFinite(x)));
    }

    [Fact]
    public void RandomWorkloadIsStandardNormalLogits()
    {
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(WorkloadPresets.Random, 512, 2, 1, 64), TestData.RunSeed);
        double sum = 0, sq = 0;
        foreach (float x in w.Q) { sum += x; sq += (double)x * x; }
        double mean = sum / w.Q.Length, var = sq / w.Q.Length - mean * mean;
        Assert.InRange(mean, -0.02, 0.02);
        Assert.InRange(var, 0.95, 1.05);
        Assert.Empty(w.Needles);
        Assert.Empty(w.Stripes);
    }

    [Theory]
    [InlineData(64, 1)]
    [InlineData(128, 4)]
    public void EachComponentGivesExactlyItsLogitWithoutNoise(int headDim, int group)
    {
        // Noise off and no head variation: every logit is the sum of the components that apply, exactly.
        var o = new WorkloadOptions
        {
            Length = 400, Heads = 2 * group, KvHeads = 2, HeadDim = headDim, Noise = 0,
            SinkTokens = 3, SinkLogit = 5, StripeCount = 4, StripeLogit = 3, ClusterCount = 4, ClusterLogit = 2,
            NeedleCount = 1, NeedleLogit = 7,
        };
        Workload w = WorkloadGenerator.Generate(o, TestData.RunSeed);
        var stripe = w.Stripes.Select(s => (s.KvHead, s.Key)).ToHashSet();
        var needle = w.Needles.Select(n => (n.Head, n.Query, n.Key)).ToHashSet();
        for (int head = 0; head < w.Heads; head++)
        {
            int kv = head / group;
            for (int q = 0; q < w.Length; q += 7)
            {
                for (int k = 0; k <= q; k += 3)
                {
                    double expected = (k < 3 ? 5 : 0) + (stripe.Contains((kv, k)) ? 3 : 0)
                        + (w.KeyCluster(0, kv, k) == w.QueryCluster(0, head, q) ? 2 : 0) + (needle.Contains((head, q, k)) ? 7 : 0);
                    Assert.Equal(expected, Logit(w, 0, head, q, k), 3);
                }
            }
        }
        foreach (PlantedNeedle n in w.Needles)
        {
            double expected = 7 + (n.Key < 3 ? 5 : 0) + (stripe.Contains((n.Head / group, n.Key)) ? 3 : 0)
                + (w.KeyCluster(0, n.Head / group, n.Key) == w.QueryCluster(0, n.Head, n.Query) ? 2 : 0);
            Assert.Equal(expected, Logit(w, 0, n.Head, n.Query, n.Key), 3);
        }
    }

    [Fact]
    public void LocalityPeaksOnTheDiagonalAndDecaysWithDistance()
    {
        var o = new WorkloadOptions { Length = 2048, Heads = 1, KvHeads = 1, HeadDim = 128, Noise = 0, LocalityLogit = 8, LocalityWidth = 64 };
        Workload w = WorkloadGenerator.Generate(o, TestData.RunSeed);
        double Mean(int distance)
        {
            double s = 0;
            int n = 0;
            for (int q = distance; q < w.Length; q += 13) { s += Logit(w, 0, 0, q, q - distance); n++; }
            return s / n;
        }
        Assert.Equal(8, Mean(0), 3);
        // The logit is a function of the distance alone: L at 0, decaying roughly logarithmically, about 0 beyond the
        // width up to the far-field ripple of the rotating pairs (≈ L/√(2·pairs), pairs ≈ 48 here).
        Assert.True(Mean(2) > 3.5 && Mean(8) > 1.5 && Mean(8) < Mean(2), $"logit at 2: {Mean(2)}, at 8: {Mean(8)}");
        Assert.True(Mean(8) > Mean(64) + 1, $"logit at 8: {Mean(8)}, at 64: {Mean(64)}");
        for (int distance = 128; distance < 2048; distance += 61) Assert.InRange(Mean(distance), -2.5, 2.5);
    }

    [Fact]
    public void SlashLinePeaksAtItsOffset()
    {
        var o = new WorkloadOptions { Length = 1024, Heads = 1, KvHeads = 1, HeadDim = 64, Noise = 0, SlashOffsets = [300], SlashLogit = 6 };
        Workload w = WorkloadGenerator.Generate(o, TestData.RunSeed);
        for (int q = 300; q < w.Length; q += 17)
        {
            Assert.Equal(6, Logit(w, 0, 0, q, q - 300), 3);
            int best = 0;
            for (int k = 0; k <= q; k++) if (Logit(w, 0, 0, q, k) > Logit(w, 0, 0, q, best)) best = k;
            Assert.Equal(q - 300, best);
        }
    }

    [Theory]
    [InlineData(WorkloadPresets.Needle)]
    [InlineData(WorkloadPresets.Llm)]
    public void PlantedNeedleIsTheArgmaxOfItsExactAttentionRow(string preset)
    {
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(preset, 2048, heads: 4, kvHeads: 2, headDim: 128), TestData.RunSeed);
        Assert.Equal(2 * w.Heads, w.Needles.Count);
        foreach (PlantedNeedle n in w.Needles)
        {
            Assert.True(n.Query - n.Key >= w.Length / 4, $"needle {n} is not distant (seed {TestData.RunSeed})");
            double[] row = CausalRow(w, n.Batch, n.Head, n.Query);
            int argmax = Array.IndexOf(row, row.Max());
            Assert.True(argmax == n.Key, $"needle {n}: argmax {argmax} (mass {row[argmax]:F3}, needle mass {row[n.Key]:F3}), seed {TestData.RunSeed}");
        }
    }

    [Theory]
    [InlineData(WorkloadPresets.Sinks, 0.5)]
    [InlineData(WorkloadPresets.Stripes, 0.6)]
    [InlineData(WorkloadPresets.Clusters, 0.5)]
    [InlineData(WorkloadPresets.Local, 0.3)]
    public void StructureCarriesMostOfTheMass(string preset, double least)
    {
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(preset, 2048, heads: 2, kvHeads: 1, headDim: 128), TestData.RunSeed);
        var stripe = w.Stripes.Select(s => s.Key).ToHashSet();
        var rng = TestData.Rng(41);
        double mass = 0, random = 0;
        const int rows = 16;
        Workload plain = WorkloadGenerator.Generate(WorkloadPresets.Get(WorkloadPresets.Random, 2048, heads: 2, kvHeads: 1, headDim: 128), TestData.RunSeed);
        for (int r = 0; r < rows; r++)
        {
            int head = rng.Next(2), q = 1024 + rng.Next(1024);
            bool Structured(Workload x, int k) => preset switch
            {
                WorkloadPresets.Sinks => k < 4,
                WorkloadPresets.Stripes => k < 4 || stripe.Contains(k),
                WorkloadPresets.Clusters => x.KeyCluster(0, 0, k) == w.QueryCluster(0, head, q),
                _ => q - k < 256,
            };
            double[] p = CausalRow(w, 0, head, q), u = CausalRow(plain, 0, head, q);
            for (int k = 0; k <= q; k++)
            {
                if (!Structured(w, k)) continue;
                mass += p[k];
                random += u[k];
            }
        }
        Assert.True(mass / rows >= least, $"{preset}: structured keys hold {mass / rows:F3} of the mass (seed {TestData.RunSeed})");
        Assert.True(random < mass / 2, $"{preset}: plain random holds {random / rows:F3} on the same keys, the structured workload {mass / rows:F3}");
    }

    [Fact]
    public void HeadVariationGivesHeadsDifferentWindows()
    {
        Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(WorkloadPresets.Llm, 512, heads: 8, kvHeads: 2, headDim: 128), 3);
        Assert.Equal(8, w.HeadLocalityWidths.Count);
        Assert.True(w.HeadLocalityWidths.Distinct().Count() > 1);
        Assert.All(w.HeadLocalityWidths, x => Assert.InRange(x, 256 / 2, 256 * 2));
    }

    [Fact]
    public void EveryPresetRunsAtSmallAndOddShapes()
    {
        foreach (string name in WorkloadPresets.Names)
        {
            foreach (int t in new[] { 1, 37, 129 })
            {
                Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(name, t, heads: 3, kvHeads: 1, headDim: 32), 1);
                Assert.Equal(t * 3 * 32, w.Q.Length);
                Assert.All(w.K, x => Assert.True(float.IsFinite(x)));
                Assert.Equal(3 * 37 * 1 >= 0, w.ToInputs().Q.Dim(1) == t);
            }
        }
    }

    [Theory]
    [InlineData(nameof(WorkloadOptions.Length))]
    [InlineData(nameof(WorkloadOptions.KvHeads))]
    [InlineData(nameof(WorkloadOptions.LocalityWidth))]
    [InlineData(nameof(WorkloadOptions.SinkTokens))]
    [InlineData(nameof(WorkloadOptions.StripeCount))]
    [InlineData(nameof(WorkloadOptions.ClusterCount))]
    [InlineData(nameof(WorkloadOptions.SlashOffsets))]
    [InlineData(nameof(WorkloadOptions.Noise))]
    [InlineData(nameof(WorkloadOptions.NeedleCount))]
    [InlineData(nameof(WorkloadOptions.HeadVariation))]
    [InlineData(nameof(WorkloadOptions.HeadDim))]
    public void BadOptionsThrowNamingTheOption(string option)
    {
        var o = new WorkloadOptions { Length = 64, Heads = 4, KvHeads = 2, HeadDim = 32 };
        o = option switch
        {
            nameof(WorkloadOptions.Length) => o with { Length = 0 },
            nameof(WorkloadOptions.KvHeads) => o with { KvHeads = 3 },
            nameof(WorkloadOptions.LocalityWidth) => o with { LocalityWidth = 0, LocalityLogit = 1 },
            nameof(WorkloadOptions.SinkTokens) => o with { SinkTokens = 65 },
            nameof(WorkloadOptions.StripeCount) => o with { StripeCount = -1 },
            nameof(WorkloadOptions.ClusterCount) => o with { ClusterCount = 65 },
            nameof(WorkloadOptions.SlashOffsets) => o with { SlashOffsets = [64] },
            nameof(WorkloadOptions.Noise) => o with { Noise = double.NaN },
            nameof(WorkloadOptions.NeedleCount) => o with { NeedleCount = 1, NeedleMinDistance = 64 },
            nameof(WorkloadOptions.HeadVariation) => o with { HeadVariation = 1.5 },
            _ => o with { HeadDim = 4, SinkTokens = 2, StripeCount = 2, ClusterCount = 2, LocalityLogit = 1 },
        };
        var e = Assert.ThrowsAny<ArgumentException>(() => WorkloadGenerator.Generate(o, 1));
        Assert.Equal(option, e.ParamName);
        Assert.Throws<ArgumentException>(() => WorkloadPresets.Get("nope", 64));
    }
}
