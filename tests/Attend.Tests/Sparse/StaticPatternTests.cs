using Attend.Methods;
using Attend.Methods.Sparse.Static;
using Attend.Workloads;
using Xunit;

namespace Attend.Tests.Sparse;

/// <summary>
/// The static sparse patterns: block structure equals the mask evaluated densely, forward and backward equal the
/// float64 reference with the same mask (odd lengths, T below one block, GQA, varlen), bad parameters are named, and a
/// pattern that keeps everything reproduces exact causal attention.
/// </summary>
public sealed class StaticPatternTests
{
    private const double Tolerance = 1e-5, BackwardTolerance = 1e-4;

    /// <summary>Each pattern with small parameters (so the patterns are really sparse at test sizes), and a setting that keeps everything.</summary>
    public static TheoryData<string, string[], string[]> Patterns() => new()
    {
        { "streaming-llm", ["sinks=3", "window=17"], ["sinks=0", "window=100000"] },
        { "dilated-window", ["window=6", "dilation=3"], ["window=100000", "dilation=1"] },
        { "dilated-window", ["window=5", "dilations=1,2,5"], ["window=100000", "dilations=1"] },
        { "power-attention", ["block=8", "local=1", "sinks=1"], ["block=8", "local=100000", "sinks=0"] },
        { "a-shape", ["block=16", "sinks=1", "local=2"], ["block=16", "sinks=0", "local=100000"] },
        { "s2-attention", ["block=8", "shards=3", "local=1"], ["block=8", "shards=1", "local=0"] },
        { "sinklora", ["group=24", "sinks=2"], ["group=1000000", "sinks=0"] },
        { "moa", ["windows=5,40,9", "sinks=2"], ["windows=100000", "sinks=0"] },
        { "moa", ["alpha=3,10", "beta=0.1,0.25", "sinks=1"], ["alpha=100000", "beta=0", "sinks=0"] },
        { "neighborhood", ["kernel=9", "dilation=2"], ["kernel=100000"] },
        { "neighborhood", ["kernel=21"], ["kernel=100000"] },
        { "neighborhood", ["kernel=6"], ["kernel=100000"] },
        { "neighborhood", ["grid={grid2}", "kernel=3x5", "dilation=2x1"], ["grid={grid2}", "kernel=100000", "causal=false"] },
        { "neighborhood", ["grid={grid3}", "kernel=3", "dilation=1x2x1", "causal=false"], ["grid={grid3}", "kernel=100000", "causal=false"] },
        { "axial", ["grid={grid2}"], ["grid=1x{T}"] },
        { "maxvit", ["grid={grid2}", "window=3", "gridsize=2"], ["grid={grid2}", "window=100000", "mode=block"] },
        { "maxvit", ["grid={grid2}", "window=2", "gridsize=3", "mode=grid"], ["grid={grid2}", "gridsize=100000", "mode=grid"] },
        { "halonet", ["grid={grid2}", "block=3", "halo=1"], ["grid={grid2}", "block=4", "halo=100000"] },
    };

    // Grid parameters that depend on the length: {grid2} (near-square 2D), {grid3} (3D), {T}.
    private static string[] ForLength(string[] pairs, int t)
    {
        TokenGrid g2 = AxialAttentionMethod.SquareGrid(t);
        int a = (int)Math.Cbrt(Math.Max(1, t));
        while (a > 1 && t % a != 0) a--;
        TokenGrid rest = AxialAttentionMethod.SquareGrid(Math.Max(1, t) / a);
        return [.. pairs.Select(p => p.Replace("{grid2}", g2.ToString(), StringComparison.Ordinal)
            .Replace("{grid3}", $"{a}x{rest}", StringComparison.Ordinal).Replace("{T}", t.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal))];
    }

    private static StaticPatternMethod Method(string name) =>
        (StaticPatternMethod)(MethodCatalog.FindRunnable(name) ?? throw new InvalidOperationException($"{name} is not registered"));

    private static IMaskMod Mask(string name, string[] pairs, int keys, int heads, bool causal) =>
        Method(name).CreateMask(MethodArguments.Parse(ForLength(pairs, keys)), keys, heads, causal);

    private static MethodResult Run(string name, string[] pairs, MethodInputs inputs, int keys) =>
        Method(name).Run(inputs, MethodArguments.Parse(ForLength(pairs, keys)));

    // A pattern's own causal parameter (the neighborhood's per-axis causal) when the pairs set it, else true.
    private static bool CausalOf(string[] pairs) => !pairs.Contains("causal=false");

    private static string[] WithoutCausal(string[] pairs) => [.. pairs.Where(p => !p.StartsWith("causal=", StringComparison.Ordinal))];

    [Theory]
    [MemberData(nameof(Patterns))]
    public void BlockMaskEqualsTheMaskEvaluatedDensely(string name, string[] pairs, string[] keepAll)
    {
        _ = keepAll;
        const int heads = 3;
        foreach ((int tq, int tk) in new[] { (1, 1), (5, 5), (37, 37), (64, 64), (130, 130), (211, 211), (40, 97) })
        {
            foreach (bool causal in new[] { true, false })
            {
                IMaskMod mask = Mask(name, WithoutCausal(pairs), tk, heads, causal);
                foreach ((int bq, int bk) in new[] { (64, 64), (16, 32), (7, 5) })
                {
                    BlockMask blocks = BlockMask.Create(mask, tq, tk, 1, heads, bq, bk);
                    for (int h = 0; h < heads; h++)
                    {
                        int hs = blocks.Heads == 1 ? 0 : h;
                        for (int qb = 0; qb < blocks.QueryBlocks(0); qb++)
                        {
                            for (int kb = 0; kb < blocks.KeyBlocks(0); kb++)
                            {
                                BlockKind kind = blocks.KindOf(0, hs, qb, kb);
                                int visible = 0, pairsInBlock = 0;
                                for (int i = qb * bq; i < Math.Min(tq, (qb + 1) * bq); i++)
                                    for (int k = kb * bk; k < Math.Min(tk, (kb + 1) * bk); k++)
                                    {
                                        pairsInBlock++;
                                        if (mask.IsVisible(0, h, i + tk - tq, k)) visible++;
                                    }
                                string where = $"{name} [{string.Join(' ', pairs)}] causal={causal} Tq={tq} Tk={tk} blocks {bq}x{bk} head {h} block ({qb},{kb})";
                                if (kind == BlockKind.Empty) Assert.True(visible == 0, $"{where}: Empty block has {visible} visible pairs");
                                if (kind == BlockKind.Full) Assert.True(visible == pairsInBlock, $"{where}: Full block has {pairsInBlock - visible} hidden pairs");
                            }
                        }
                    }
                    // The pair count of the structure equals the dense count.
                    long dense = 0;
                    for (int h = 0; h < blocks.Heads; h++)
                        for (int i = 0; i < tq; i++)
                            for (int k = 0; k < tk; k++)
                                if (mask.IsVisible(0, h, i + tk - tq, k)) dense++;
                    Assert.Equal(dense, blocks.VisiblePairs());
                }
            }
        }
    }

    private static float[] Gaussian(Random rng, long count) => TestData.Gaussian<float>(rng, count);

    [Theory]
    [MemberData(nameof(Patterns))]
    public void ForwardEqualsFloat64ReferenceWithTheSameMask(string name, string[] pairs, string[] keepAll)
    {
        _ = keepAll;
        var rng = TestData.Rng(TestData.Salt(name) ^ pairs.Length);
        foreach ((int b, int t, int h, int hkv, int d) in new[] { (1, 5, 2, 1, 32), (2, 77, 4, 2, 64), (1, 130, 3, 3, 40), (1, 200, 6, 2, 128) })
        {
            float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
            var inputs = new MethodInputs(new MethodTensor(q, b, t, h, d), new MethodTensor(k, b, t, hkv, d), new MethodTensor(v, b, t, hkv, d));
            MethodResult result = Run(name, pairs, inputs, t);
            IMaskMod mask = Mask(name, WithoutCausal(pairs), t, h, CausalOf(pairs));
            ReferenceForwardResult r = ReferenceAttention.Forward<float>(
                AttentionLayout.Bthd<float>(q, b, t, h, d), AttentionLayout.Bthd<float>(k, b, t, hkv, d), AttentionLayout.Bthd<float>(v, b, t, hkv, d),
                new AttentionOptions { Mask = mask });
            double err = TestData.RelativeError<float>(result.Output.Data, r.Output);
            Assert.True(err <= Tolerance, $"{name} [{string.Join(' ', pairs)}] B{b} T{t} H{h}/{hkv} D{d}: error {err:E2} (seed {TestData.RunSeed})");
            Assert.True(TestData.LseError(result.Extras["lse"].Data, r.Lse) <= 1e-5, $"{name}: LSE differs");
            Assert.InRange(result.Density!.Value, 0, 1);
            Assert.NotNull(result.SelectorMs);
            // Coverage is the mask.
            var covered = new bool[t];
            for (int head = 0; head < h; head++)
            {
                result.Coverage!.CoveredKeys(0, head, t - 1, covered);
                for (int key = 0; key < t; key++) Assert.Equal(mask.IsVisible(0, head, t - 1, key), covered[key]);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Patterns))]
    public void KeepingEverythingReproducesExactCausalAttention(string name, string[] pairs, string[] keepAll)
    {
        _ = pairs;
        var rng = TestData.Rng(17);
        const int b = 1, t = 150, h = 4, hkv = 2, d = 64;
        float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
        var inputs = new MethodInputs(new MethodTensor(q, b, t, h, d), new MethodTensor(k, b, t, hkv, d), new MethodTensor(v, b, t, hkv, d));
        MethodResult sparse = Run(name, keepAll, inputs, t);
        ReferenceForwardResult exact = ReferenceAttention.Forward<float>(
            AttentionLayout.Bthd<float>(q, b, t, h, d), AttentionLayout.Bthd<float>(k, b, t, hkv, d), AttentionLayout.Bthd<float>(v, b, t, hkv, d),
            new AttentionOptions { Mask = CausalOf(keepAll) ? new CausalMask() : null });
        Assert.Equal(1.0, sparse.Density!.Value, 12);
        double err = TestData.RelativeError<float>(sparse.Output.Data, exact.Output);
        Assert.True(err <= Tolerance, $"{name} [{string.Join(' ', keepAll)}]: error {err:E2} against exact {(CausalOf(keepAll) ? "causal" : "full")} attention");
    }

    /// <summary>
    /// A packed batch gives each sequence what it gives alone: sequence s's output equals the float64 reference of that
    /// sequence alone under the pattern built for its own length (length-dependent windows and grids are per sequence).
    /// An explicit grid describes one length: a ragged batch is refused naming it, and a batch of that length is run.
    /// </summary>
    [Theory]
    [MemberData(nameof(Patterns))]
    public void VarlenEqualsEachSequenceAloneUnderItsOwnPattern(string name, string[] pairs, string[] keepAll)
    {
        _ = keepAll;
        var rng = TestData.Rng(23);
        bool grid = pairs.Any(p => p.StartsWith("grid=", StringComparison.Ordinal));
        int[] lengths = grid ? [90, 90, 90] : [41, 1, 0, 90, 7];
        SeqOffsets offsets = SeqOffsets.FromLengths(lengths);
        int t = offsets.TotalTokens, h = 4, hkv = 2, d = 32;
        float[] q = Gaussian(rng, (long)t * h * d), k = Gaussian(rng, (long)t * hkv * d), v = Gaussian(rng, (long)t * hkv * d);
        var inputs = new MethodInputs(new MethodTensor(q, 1, t, h, d), new MethodTensor(k, 1, t, hkv, d), new MethodTensor(v, 1, t, hkv, d)) { Offsets = offsets };
        if (grid)
        {
            SeqOffsets ragged = SeqOffsets.FromLengths([90, 60, 120]);
            var raggedInputs = new MethodInputs(new MethodTensor(q, 1, t, h, d), new MethodTensor(k, 1, t, hkv, d), new MethodTensor(v, 1, t, hkv, d)) { Offsets = ragged };
            Assert.Equal("grid", Assert.Throws<ArgumentException>(() => Run(name, pairs, raggedInputs, 90)).ParamName);
        }
        MethodResult result = Run(name, pairs, inputs, 90);
        for (int s = 0; s < offsets.Count; s++)
        {
            int start = offsets.Start(s), length = offsets.Length(s);
            if (length == 0) continue;
            float[] qs = q.AsSpan(start * h * d, length * h * d).ToArray();
            float[] ks = k.AsSpan(start * hkv * d, length * hkv * d).ToArray(), vs = v.AsSpan(start * hkv * d, length * hkv * d).ToArray();
            IMaskMod mask = Mask(name, WithoutCausal(pairs), length, h, CausalOf(pairs));
            ReferenceForwardResult alone = ReferenceAttention.Forward<float>(
                AttentionLayout.Bthd<float>(qs, 1, length, h, d), AttentionLayout.Bthd<float>(ks, 1, length, hkv, d), AttentionLayout.Bthd<float>(vs, 1, length, hkv, d),
                new AttentionOptions { Mask = mask });
            double err = TestData.RelativeError<float>(result.Output.Data.AsSpan(start * h * d, length * h * d), alone.Output);
            Assert.True(err <= Tolerance, $"{name} [{string.Join(' ', pairs)}] varlen: sequence {s} (length {length}) differs from its float64 reference alone by {err:E2} (seed {TestData.RunSeed})");
        }
    }

    [Theory]
    [MemberData(nameof(Patterns))]
    public void BackwardEqualsFloat64ReferenceWithTheSameMask(string name, string[] pairs, string[] keepAll)
    {
        _ = keepAll;
        var rng = TestData.Rng(31);
        const int b = 1, t = 101, h = 4, hkv = 2, d = 48;
        IMaskMod mask = Mask(name, WithoutCausal(pairs), t, h, CausalOf(pairs));
        float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
        float[] dO = Gaussian(rng, (long)b * t * h * d);
        var options = new AttentionOptions { Mask = mask };
        float[] o = TestData.Poisoned<float>(q.Length), lse = TestData.Poisoned<float>((long)b * h * t);
        Attention.Forward<float>(AttentionLayout.Bthd<float>(q, b, t, h, d), AttentionLayout.Bthd<float>(k, b, t, hkv, d), AttentionLayout.Bthd<float>(v, b, t, hkv, d),
            options, AttentionLayout.Bthd<float>(o, b, t, h, d), AttentionLayout.Lse(lse, b, h, t));
        float[] dq = TestData.Poisoned<float>(q.Length), dk = TestData.Poisoned<float>(k.Length), dv = TestData.Poisoned<float>(v.Length);
        Attention.Backward<float>(AttentionLayout.Bthd<float>(q, b, t, h, d), AttentionLayout.Bthd<float>(k, b, t, hkv, d), AttentionLayout.Bthd<float>(v, b, t, hkv, d),
            AttentionLayout.Bthd<float>(o, b, t, h, d), AttentionLayout.Bthd<float>(dO, b, t, h, d), AttentionLayout.Lse(lse, b, h, t), options,
            AttentionLayout.Bthd<float>(dq, b, t, h, d), AttentionLayout.Bthd<float>(dk, b, t, hkv, d), AttentionLayout.Bthd<float>(dv, b, t, hkv, d));
        ReferenceBackwardResult r = ReferenceAttention.Backward<float>(AttentionLayout.Bthd<float>(q, b, t, h, d), AttentionLayout.Bthd<float>(k, b, t, hkv, d),
            AttentionLayout.Bthd<float>(v, b, t, hkv, d), AttentionLayout.Bthd<float>(dO, b, t, h, d), options);
        double eq = Fidelity.MaxRelativeError<float>(dq, r.DQ, floor: 1), ek = Fidelity.MaxRelativeError<float>(dk, r.DK, floor: 1),
            ev = Fidelity.MaxRelativeError<float>(dv, r.DV, floor: 1);
        Assert.True(eq <= BackwardTolerance && ek <= BackwardTolerance && ev <= BackwardTolerance,
            $"{name}: dQ {eq:E2} dK {ek:E2} dV {ev:E2} (seed {TestData.RunSeed})");
    }

    [Theory]
    [InlineData("streaming-llm", "window=0", "window")]
    [InlineData("streaming-llm", "sinks=-1", "sinks")]
    [InlineData("dilated-window", "dilation=0", "dilation")]
    [InlineData("dilated-window", "dilations=2,0", "dilations")]
    [InlineData("power-attention", "block=0", "block")]
    [InlineData("power-attention", "local=0", "local")]
    [InlineData("a-shape", "local=0", "local")]
    [InlineData("s2-attention", "shards=0", "shards")]
    [InlineData("sinklora", "group=0", "group")]
    [InlineData("moa", "windows=4,0", "windows")]
    [InlineData("moa", "alpha=1,2", "beta")]
    [InlineData("moa", "bogus=1", "bogus")]
    [InlineData("neighborhood", "kernel=0", "kernel")]
    [InlineData("neighborhood", "grid=3x3", "grid")]
    [InlineData("neighborhood", "dilation=1x2", "dilation")]
    [InlineData("axial", "grid=4", "grid")]
    [InlineData("maxvit", "window=0", "window")]
    [InlineData("maxvit", "mode=rows", "mode")]
    [InlineData("halonet", "halo=-1", "halo")]
    public void BadParametersThrowNamingTheParameter(string name, string pair, string parameter)
    {
        var inputs = new MethodInputs(new MethodTensor(new float[64], 1, 4, 2, 8), new MethodTensor(new float[32], 1, 4, 1, 8), new MethodTensor(new float[32], 1, 4, 1, 8));
        var e = Assert.ThrowsAny<ArgumentException>(() => Method(name).Run(inputs, MethodArguments.Parse([pair])));
        Assert.Contains(parameter, e.Message + " " + e.ParamName, StringComparison.Ordinal);
    }

    [Fact]
    public void MasksRejectBadConstructorArguments()
    {
        Assert.Equal("window", Assert.Throws<ArgumentOutOfRangeException>(() => new SinkWindowMask(0, 0)).ParamName);
        Assert.Equal("dilation", Assert.Throws<ArgumentOutOfRangeException>(() => new DilatedWindowMask(3, 0)).ParamName);
        Assert.Equal("blockSize", Assert.Throws<ArgumentOutOfRangeException>(() => new PowerAttentionMask(0, 1, 0)).ParamName);
        Assert.Equal("shards", Assert.Throws<ArgumentOutOfRangeException>(() => new S2AttentionMask(8, 0, 1)).ParamName);
        Assert.Equal("groupSize", Assert.Throws<ArgumentOutOfRangeException>(() => new ShiftedGroupMask(0, 2, 0)).ParamName);
        Assert.Equal("windows", Assert.Throws<ArgumentOutOfRangeException>(() => new PerHeadWindowMask([3, 0], 0)).ParamName);
        Assert.Equal("windows", Assert.Throws<ArgumentException>(() => new PerHeadWindowMask([], 0)).ParamName);
    }

    [Fact]
    public void SlidingWindowRecallIsHighOnLocalWorkloadAndLowOnRandom()
    {
        // The bench's recall: the structure decides whether a static pattern is any good; on plain random inputs a
        // window keeps about its share of the keys.
        foreach ((string preset, double low, double high) in new[] { (WorkloadPresets.Sinks, 0.8, 1.0), (WorkloadPresets.Random, 0.0, 0.45) })
        {
            Workload w = WorkloadGenerator.Generate(WorkloadPresets.Get(preset, 1024, heads: 2, kvHeads: 1, headDim: 128), TestData.RunSeed);
            MethodResult r = Method("streaming-llm").Run(w.ToInputs(), MethodArguments.Parse(["sinks=4", "window=256"]));
            double recall = 0;
            var covered = new bool[w.Length];
            int rows = 0;
            for (int head = 0; head < w.Heads; head++)
            {
                for (int query = 600; query < w.Length; query += 53, rows++)
                {
                    r.Coverage!.CoveredKeys(0, head, query, covered);
                    recall += ExactMass(w, head, query, covered);
                }
            }
            Assert.InRange(recall / rows, low, high);
        }
    }

    private static double ExactMass(Workload w, int head, int query, bool[] covered)
    {
        int kv = head / (w.Heads / w.KvHeads), d = w.HeadDim;
        var p = new double[query + 1];
        double max = double.NegativeInfinity, sum = 0, kept = 0;
        for (int k = 0; k <= query; k++)
        {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += (double)w.Q[((long)query * w.Heads + head) * d + i] * w.K[((long)k * w.KvHeads + kv) * d + i];
            p[k] = dot * w.Scale;
            max = Math.Max(max, p[k]);
        }
        for (int k = 0; k <= query; k++)
        {
            double e = Math.Exp(p[k] - max);
            sum += e;
            if (covered[k]) kept += e;
        }
        return kept / sum;
    }

    [Fact]
    public void MoaProfileGivesTheFarLookingHeadTheWiderWindow()
    {
        // Head 0 looks at its neighbours, head 1 along a slash line 120 tokens back: with a budget for one wide
        // window, the fit must give it to head 1.
        const int t = 512, d = 64;
        Workload near = WorkloadGenerator.Generate(new WorkloadOptions { Length = t, Heads = 1, KvHeads = 1, HeadDim = d, LocalityLogit = 9, LocalityWidth = 8 }, 1);
        Workload far = WorkloadGenerator.Generate(new WorkloadOptions { Length = t, Heads = 1, KvHeads = 1, HeadDim = d, SlashOffsets = [120], SlashLogit = 12 }, 2);
        var q = new float[t * 2 * d];
        var k = new float[t * 2 * d];
        for (int i = 0; i < t; i++)
        {
            Array.Copy(near.Q, i * d, q, (i * 2) * d, d);
            Array.Copy(far.Q, i * d, q, (i * 2 + 1) * d, d);
            Array.Copy(near.K, i * d, k, (i * 2) * d, d);
            Array.Copy(far.K, i * d, k, (i * 2 + 1) * d, d);
        }
        int[] windows = MoaProfile.Fit(q, k, t, 2, 2, d, [16, 32, 64, 128, 256], meanWindow: 80, sinks: 0);
        Assert.Equal(2, windows.Length);
        Assert.True(windows[1] >= 128 && windows[0] <= 32, $"windows {string.Join(",", windows)}");
        Assert.True(windows.Average() <= 80);
        Assert.Throws<ArgumentException>(() => MoaProfile.Fit(q, k, t, 2, 2, d, [16, 32], meanWindow: 8));
    }
}
