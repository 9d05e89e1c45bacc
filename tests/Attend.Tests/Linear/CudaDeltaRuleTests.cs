using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// <see cref="CudaDeltaRulePlan"/>: which configurations it takes and why it refuses the others, its chunk and sequence
/// tables, its kernel source and specialisations (no GPU needed), and on a GPU the chunked and recurrent delta rules
/// through <c>Backend = "cuda"</c> against the float64 naive form (skipped, with the reason, where there is no GPU).
/// </summary>
public class CudaDeltaRuleTests
{
    private static readonly LinearShape s_shape = new(1, 100, 4, 2, 128, 128);

    [Theory]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 128, 128)]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 64, 256)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, LinearForm.Chunked, 64, 192)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.FixedPerHead, LinearForm.Chunked, 128, 64)]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Recurrent, 96, 40)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, LinearForm.Recurrent, 256, 128)]
    public void SupportedConfigurations(LinearUpdate update, LinearDecay decay, LinearForm form, int dk, int dv)
    {
        var options = new LinearAttentionOptions { Update = update, Decay = decay, Form = form };
        foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            Assert.True(CudaDeltaRulePlan.IsSupported(s_shape with { KeyDim = dk, ValueDim = dv }, type, options, out string reason), reason);
    }

    [Theory]
    [InlineData(LinearUpdate.Additive, LinearDecay.None, LinearForm.Chunked, 128, 128, "CudaLinearPlan")]
    [InlineData(LinearUpdate.Delta, LinearDecay.ScalarGate, LinearForm.Chunked, 128, 128, "GatedDelta")]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.None, LinearForm.Chunked, 128, 128, "needs a decay")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Naive, 128, 128, "float64")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 96, 128, "key dims 64 and 128")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 128, 96, "multiples of 64")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Recurrent, 12, 128, "multiples of 8 up to 256")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Recurrent, 264, 128, "multiples of 8 up to 256")]
    public void UnsupportedConfigurationsSayWhy(LinearUpdate update, LinearDecay decay, LinearForm form, int dk, int dv, string expected)
    {
        var options = new LinearAttentionOptions { Update = update, Decay = decay, Form = form };
        Assert.False(CudaDeltaRulePlan.IsSupported(s_shape with { KeyDim = dk, ValueDim = dv }, ElementType.BFloat16, options, out string reason));
        Assert.Contains(expected, reason);
    }

    [Fact]
    public void ElementTypeFeatureMapAndNormalisationAreRefusedByName()
    {
        var delta = new LinearAttentionOptions { Update = LinearUpdate.Delta };
        Assert.False(CudaDeltaRulePlan.IsSupported(s_shape, ElementType.Float32, delta, out string reason));
        Assert.Contains("f32", reason);
        Assert.False(CudaDeltaRulePlan.IsSupported(s_shape, ElementType.BFloat16, delta with { FeatureMap = FeatureMaps.EluPlusOne }, out reason));
        Assert.Contains(FeatureMaps.EluPlusOne.Name, reason);
        Assert.False(CudaDeltaRulePlan.IsSupported(s_shape, ElementType.BFloat16, delta with { Normalization = LinearNormalization.RmsNorm }, out reason));
        Assert.Contains("RmsNorm", reason);
    }

    [Fact]
    public void TheAdditivePlanPointsTheDeltaRulesAtTheirOwnPlan()
    {
        foreach (LinearUpdate update in (LinearUpdate[])[LinearUpdate.Delta, LinearUpdate.GatedDelta])
        {
            var options = new LinearAttentionOptions { Update = update, Decay = update == LinearUpdate.Delta ? LinearDecay.None : LinearDecay.ScalarGate };
            Assert.False(CudaLinearPlan.IsSupported(s_shape, ElementType.BFloat16, options, out string reason));
            Assert.Contains(nameof(CudaDeltaRulePlan), reason);
            Assert.True(CudaDeltaRulePlan.IsSupported(s_shape, ElementType.BFloat16, options, out reason), reason);
        }
    }

    [Theory]
    [InlineData(new[] { 16384 })]
    [InlineData(new[] { 1, 0, 130, 64, 63, 65 })]
    [InlineData(new[] { 0 })]
    [InlineData(new int[0])]
    public void ChunksCoverEveryTokenOnceInsideTheirSequence(int[] lengths)
    {
        int[] starts = new int[lengths.Length];
        for (int n = 1; n < lengths.Length; n++) starts[n] = starts[n - 1] + lengths[n - 1];
        int total = lengths.Sum();
        int[] table = CudaDeltaRulePlan.ChunkTable(starts, lengths);
        Assert.Equal(0, table.Length % 4);
        var covered = new int[total];
        var chunksPerSequence = new int[lengths.Length];
        for (int i = 0; i < table.Length / 4; i++)
        {
            int seq = table[4 * i], start = table[4 * i + 1], len = table[4 * i + 2];
            Assert.InRange(len, 1, CudaDeltaRulePlan.Chunk);
            Assert.InRange(start, starts[seq], starts[seq] + lengths[seq] - len);
            // Chunks start at multiples of 64 inside their sequence: the in-chunk gate prefix sums begin there.
            Assert.Equal(0, (start - starts[seq]) % CudaDeltaRulePlan.Chunk);
            for (int x = start; x < start + len; x++) covered[x]++;
            chunksPerSequence[seq]++;
        }
        Assert.All(covered, c => Assert.Equal(1, c));
        for (int n = 0; n < lengths.Length; n++) Assert.Equal((lengths[n] + 63) / 64, chunksPerSequence[n]);
    }

    [Fact]
    public void RandomVarlenTablesAgreeWithTheOffsets()
    {
        Random rng = TestData.Rng(971);
        for (int trial = 0; trial < 20; trial++)
        {
            int[] lengths = Enumerable.Range(0, rng.Next(1, 9)).Select(_ => rng.Next(0, 300)).ToArray();
            var offsets = SeqOffsets.FromLengths(lengths);
            (int[] starts, int[] lens) = LinearPlanInputs.Sequences(new LinearShape(1, offsets.TotalTokens, 2, 2, 64, 64), offsets);
            int[] seqTable = CudaDeltaRulePlan.SequenceTable(starts, lens);
            Assert.Equal(4 * lengths.Length, seqTable.Length);
            for (int n = 0; n < lengths.Length; n++)
            {
                Assert.Equal(n, seqTable[4 * n]);
                Assert.Equal(offsets.Start(n), seqTable[4 * n + 1]);
                Assert.Equal(lengths[n], seqTable[4 * n + 2]);
            }
            int chunkTokens = 0;
            int[] chunks = CudaDeltaRulePlan.ChunkTable(starts, lens);
            for (int i = 0; i < chunks.Length / 4; i++) chunkTokens += chunks[4 * i + 2];
            Assert.True(chunkTokens == offsets.TotalTokens, $"seed {TestData.RunSeed}: chunks cover {chunkTokens} of {offsets.TotalTokens} tokens");
        }
    }

    [Fact]
    public void BatchedSequencesAreContiguousRowsOfTheFlattenedTokenAxis()
    {
        (int[] starts, int[] lengths) = LinearPlanInputs.Sequences(new LinearShape(3, 70, 2, 2, 64, 64), null);
        Assert.Equal([0, 70, 140], starts);
        Assert.Equal([70, 70, 70], lengths);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void EveryValueBlockFitsInAHopperBlocksSharedMemory(int keyDim)
    {
        // sm_90 lets one block opt in to 227 KB of dynamic shared memory; the prepare kernel keeps 2 blocks per SM.
        const int hopperMax = 227 * 1024;
        foreach (int bv in (int[])[16, 32, 64])
            foreach (int groups in (int[])[1, 2])
            {
                if (bv * groups > 64) continue;   // the plan refuses CTAs wider than 64 columns
                int bytes = CudaDeltaRulePlan.ChunkSharedBytes(keyDim, bv, groups);
                Assert.InRange(bytes, 1, hopperMax);
                Assert.True(bv == 16 || bytes > CudaDeltaRulePlan.ChunkSharedBytes(keyDim, bv / 2, groups), "a wider value block needs more room");
                // Two groups share the q, k, w and A tiles: less than two CTAs of one group.
                if (groups == 2) Assert.True(bytes < 2 * CudaDeltaRulePlan.ChunkSharedBytes(keyDim, bv, 1));
            }
        Assert.InRange(CudaDeltaRulePlan.PrepareSharedBytes(keyDim), 1, hopperMax / 2);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void TheDefaultValueBlockDividesEveryChunkedValueDim(int dv)
    {
        int bv = CudaDeltaRulePlan.DefaultValueBlock(dv);
        int groups = CudaDeltaRulePlan.DefaultValueGroups(dv, bv);
        Assert.Equal(0, dv % (bv * groups));
        Assert.Contains(bv, (int[])[16, 32, 64]);
        Assert.Contains(groups, (int[])[1, 2]);
    }

    [Fact]
    public void KernelSourceIsEmbeddedWithItsThreeEntryPoints()
    {
        string source = KernelCompiler.Source(CudaDeltaRulePlan.Source);
        Assert.DoesNotContain("#include \"", source);
        Assert.Contains(CudaDeltaRulePlan.PrepareEntry + "(", source);
        Assert.Contains(CudaDeltaRulePlan.ChunkEntry + "(", source);
        Assert.Contains(CudaDeltaRulePlan.RecurrentEntry + "(", source);
    }

    [Fact]
    public void SpecialisationsDifferByKeyDimTypeGateAndValueBlock()
    {
        string[] a = CudaDeltaRulePlan.Options(128, ElementType.BFloat16, 1, 32, 2);
        Assert.Contains("-DDK=128", a);
        Assert.Contains("-DELEM_BF16=1", a);
        Assert.Contains("-DGATE=1", a);
        Assert.Contains("-DBV=32", a);
        Assert.Contains("-DVH=2", a);
        Assert.Contains("-DELEM_BF16=0", CudaDeltaRulePlan.Options(128, ElementType.Float16, 1, 32, 2));
        Assert.Contains("-DGATE=0", CudaDeltaRulePlan.Options(128, ElementType.BFloat16, 0, 32, 2));
        Assert.Contains("-DBV=16", CudaDeltaRulePlan.Options(128, ElementType.BFloat16, 1, 16, 2));
        Assert.Contains("-DVH=1", CudaDeltaRulePlan.Options(128, ElementType.BFloat16, 1, 16, 1));
        Assert.Contains("-DDK=64", CudaDeltaRulePlan.Options(64, ElementType.BFloat16, 1, 32, 2));
    }

    [Attend.Tests.Cuda.NoGpuFact]
    public void TheCudaBackendSaysWhyItCannotRunTheDeltaRuleHere()
    {
        Assert.False(CudaBackend.IsAvailable(out string why));
        CudaBackend.Register();
        LinearCase c = LinearCase.Create(TestData.Rng(972), LinearShape.Mha(1, 9, 2, 64),
            new LinearAttentionOptions { Update = LinearUpdate.Delta, Backend = "cuda" });
        var o = TestData.Poisoned<float>(c.OutputLength);
        NotSupportedException e = Assert.Throws<NotSupportedException>(() => LinearAttention.Forward(c.Inputs, c.Options, o, []));
        Assert.Contains(why, e.Message);
    }

    [CudaLinearTheory]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 0)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, LinearForm.Chunked, 0)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.FixedPerHead, LinearForm.Chunked, 1)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, LinearForm.Chunked, 1)]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Recurrent, 1)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, LinearForm.Recurrent, 0)]
    public void GpuDeltaRulesMatchTheFloat64NaiveForm(LinearUpdate update, LinearDecay decay, LinearForm form, int varlen)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(980 + (int)update * 10 + (int)decay * 3 + (int)form);
        int[]? lengths = varlen == 1 ? [1, rng.Next(2, 90), 0, rng.Next(130, 300)] : null;
        var shape = new LinearShape(2, rng.Next(65, 260) | 1, 4, 2, 64, 128);
        var options = new LinearAttentionOptions
        {
            Form = form, Update = update, Decay = decay, Backend = "cuda", Scale = 0.125f,
            HeadDecay = decay == LinearDecay.FixedPerHead ? [0.99f, 0.9f, 0.7f, 1f] : null,
        };
        LinearCase c = LinearCase.Create(rng, shape, options, lengths, qkScale: 1.0);
        NormaliseRows(c.K, c.Shape.KeyDim);
        TestData.RoundToBf16(c.Q);
        TestData.RoundToBf16(c.K);
        TestData.RoundToBf16(c.V);
        c.AssertMatchesNaive(1e-2);
    }

    [CudaLinearTheory]
    [InlineData(LinearForm.Chunked)]
    [InlineData(LinearForm.Recurrent)]
    public void OnlyTheRecurrentFormUpdatesTheStateInPlace(LinearForm form)
    {
        // The chunked kernel reads the initial state through the read-only cache (__restrict__), so one buffer for both
        // states must be refused by name; the recurrent kernel reads each slice before it writes it, so it may alias.
        CudaContext context = CudaContext.Default;
        var shape = new LinearShape(1, 70, 2, 2, 64, 64);
        var options = new LinearAttentionOptions { Form = form, Update = LinearUpdate.Delta };
        using var plan = new CudaDeltaRulePlan(context, shape, ElementType.BFloat16, options);
        using CudaTensor q = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using CudaTensor k = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using CudaTensor v = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using CudaTensor o = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        q.Buffer.Fill(0);
        k.Buffer.Fill(0);
        v.Buffer.Fill(0);
        using var state = new DeviceBuffer(context, 2L * 64 * 64 * 4);
        state.Fill(0);
        if (form == LinearForm.Chunked)
        {
            var e = Assert.Throws<ArgumentException>(() => plan.Run(q, k, v, null, null, state, o, state));
            Assert.Equal("finalState", e.ParamName);
        }
        else
        {
            plan.Run(q, k, v, null, null, state, o, state);
            context.Synchronize();
        }
    }

    [Fact]
    public void HostFeatureMapMapsEachRowAsTheCpuEngineDoes()
    {
        // A map that depends on the head and on query/key: a wrong head index or a swapped flag changes the outputs.
        var map = new HeadScaledMap();
        Random rng = TestData.Rng(973);
        var shape = new LinearShape(2, 37, 4, 2, 16, 8);
        var options = new LinearAttentionOptions { Update = LinearUpdate.Delta, FeatureMap = map, Scale = 0.5f };
        LinearCase c = LinearCase.Create(rng, shape, options, qkScale: 0.15);   // |φ(k)|² < 1: the delta rule stays contractive
        var expected = TestData.Poisoned<float>(c.OutputLength);
        var expectedState = TestData.Poisoned<float>(c.Config.StateLength);
        LinearAttention.Forward(c.Inputs, c.Options, expected, expectedState);

        float[] q = CudaDeltaRuleHost.MapRows(map, c.Q, shape.Heads, 1, shape.KeyDim, isKey: false);
        float[] k = CudaDeltaRuleHost.MapRows(map, c.K, shape.KvHeads, shape.Heads / shape.KvHeads, shape.KeyDim, isKey: true);
        var premapped = new LinearInputs { Shape = shape, Q = q, K = k, V = c.V, Beta = c.Beta, InitialState = c.State };
        var actual = TestData.Poisoned<float>(c.OutputLength);
        var actualState = TestData.Poisoned<float>(c.Config.StateLength);
        LinearAttention.Forward(premapped, options with { FeatureMap = FeatureMaps.Identity }, actual, actualState);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-5f * (1 + Math.Abs(expected[i])), $"seed {TestData.RunSeed}: output {i}: {actual[i]} vs {expected[i]}");
        for (int i = 0; i < expectedState.Length; i++)
            Assert.True(Math.Abs(actualState[i] - expectedState[i]) <= 1e-5f * (1 + Math.Abs(expectedState[i])), $"seed {TestData.RunSeed}: state {i}");
    }

    [Fact]
    public void HostMappingRefusesMapsThatChangeTheWidth()
    {
        float[] rows = new float[3 * 8];
        ArgumentException e = Assert.Throws<ArgumentException>(() => CudaDeltaRuleHost.MapRows(FeatureMaps.Taylor2, rows, 1, 1, 8, isKey: true));
        Assert.Contains(FeatureMaps.Taylor2.Name, e.Message);
        Assert.Equal("map", e.ParamName);
    }

    [CudaLinearTheory]
    [InlineData(LinearUpdate.Delta)]
    [InlineData(LinearUpdate.GatedDelta)]
    public void GpuDeltaRulesWithTheL2NormMapMatchTheFloat64NaiveForm(LinearUpdate update)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(990 + (int)update);
        var shape = new LinearShape(1, rng.Next(65, 260) | 1, 4, 2, 128, 128);
        var options = new LinearAttentionOptions
        {
            Update = update, FeatureMap = FeatureMaps.L2Norm, Backend = "cuda", Scale = 0.088f,
            Decay = update == LinearUpdate.GatedDelta ? LinearDecay.ScalarGate : LinearDecay.None,
        };
        LinearCase c = LinearCase.Create(rng, shape, options, qkScale: 1.0);
        c.AssertMatchesNaive(1e-2);
    }

    private sealed class HeadScaledMap : FeatureMap
    {
        public override string Name => "head-scaled-test";

        public override int OutputDim(int inputDim) => inputDim;

        public override void Apply<T>(int head, bool isKey, ReadOnlySpan<T> x, Span<T> y)
        {
            T f = T.CreateTruncating((1 + head) * (isKey ? 0.5 : 0.25));
            for (int i = 0; i < x.Length; i++) y[i] = x[i] * f;
        }

        public override void Backward<T>(int head, bool isKey, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
            throw new NotSupportedException("forward-only test map");
    }

    [CudaLinearTheory]
    [InlineData(0)]
    public void CheckCommandDeltaCasesPassOnTheGpu(int unused)
    {
        _ = unused;
        var output = new StringWriter();
        var error = new StringWriter();
        (int passed, int failed) = Attend.Cli.CudaDeltaCheck.Run(TestData.RunSeed, output, error);
        Assert.True(failed == 0 && passed > 0, $"seed {TestData.RunSeed}: {error}");
    }

    private static void NormaliseRows(float[] x, int width)
    {
        for (int r = 0; r < x.Length / width; r++)
        {
            double norm = 0;
            for (int i = 0; i < width; i++) norm += (double)x[r * width + i] * x[r * width + i];
            float f = (float)(1 / Math.Sqrt(Math.Max(norm, 1e-30)));
            for (int i = 0; i < width; i++) x[r * width + i] *= f;
        }
    }

}
