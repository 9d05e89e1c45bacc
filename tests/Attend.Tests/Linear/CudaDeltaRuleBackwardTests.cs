using Attend.Cuda;
using Attend.Cuda.Linear;
using Attend.Linear;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>
/// The delta rules' chunked backward on the GPU (<see cref="CudaDeltaRulePlan.Backward"/>): which configurations it takes
/// and why it refuses the others, the checkpoint index its tables carry, its kernel source, specialisations and shared
/// memory (no GPU needed), and on a GPU its gradients through <c>LinearAttention.Backward</c> with <c>Backend = "cuda"</c>
/// against the float64 naive form (skipped, with the reason, where there is no GPU).
/// </summary>
public class CudaDeltaRuleBackwardTests
{
    [Theory]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, 128, 128)]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, 64, 64)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, 64, 128)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.FixedPerHead, 128, 64)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ChannelGate, 128, 128)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ChannelGate, 64, 64)]
    // Value dims past 128 (any multiple of 64): the chunk kernel's value-column blocks.
    [InlineData(LinearUpdate.Delta, LinearDecay.None, 128, 256)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, 64, 192)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.FixedPerHead, 128, 320)]
    public void BackwardSupportedConfigurations(LinearUpdate update, LinearDecay decay, int dk, int dv)
    {
        var options = new LinearAttentionOptions { Update = update, Decay = decay };
        var shape = new LinearShape(1, 100, 4, 2, dk, dv);
        foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            Assert.True(CudaDeltaRulePlan.IsBackwardSupported(shape, type, options, out string reason), reason);
    }

    [Theory]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 128, 96, "multiples of 64; got Dv = 96")]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, LinearForm.Chunked, 64, 160, "multiples of 64; got Dv = 160")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Recurrent, 128, 128, "chunked")]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ChannelGate, LinearForm.Recurrent, 128, 128, "chunked")]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ChannelGate, LinearForm.Chunked, 128, 256, "value dims 64 and 128")]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, LinearForm.Chunked, 96, 128, "key dims 64 and 128")]
    public void BackwardUnsupportedConfigurationsSayWhy(LinearUpdate update, LinearDecay decay, LinearForm form, int dk, int dv, string expected)
    {
        var options = new LinearAttentionOptions { Update = update, Decay = decay, Form = form };
        var shape = new LinearShape(1, 100, 4, 2, dk, dv);
        Assert.False(CudaDeltaRulePlan.IsBackwardSupported(shape, ElementType.BFloat16, options, out string reason));
        Assert.Contains(expected, reason);
    }

    [Fact]
    public void TheAdditivePlanSendsTheDeltaRulesToTheirOwnPlan()
    {
        var options = new LinearAttentionOptions { Update = LinearUpdate.GatedDelta, Decay = LinearDecay.ScalarGate };
        Assert.False(CudaLinearPlan.IsBackwardSupported(LinearShape.Mha(1, 64, 2, 64), ElementType.BFloat16, options, out string reason));
        Assert.Contains(nameof(CudaDeltaRulePlan), reason);
    }

    [Fact]
    public void EachSequenceRowNamesItsFirstChunk()
    {
        // The backward's checkpoints are indexed by chunk: the sequence table's last field must be the row of the
        // sequence's first chunk in the chunk table (empty sequences included: they own no row, the next starts there).
        Random rng = TestData.Rng(1201);
        for (int trial = 0; trial < 20; trial++)
        {
            int[] lengths = Enumerable.Range(0, rng.Next(1, 9)).Select(_ => rng.Next(0, 300)).ToArray();
            var offsets = SeqOffsets.FromLengths(lengths);
            (int[] starts, int[] lens) = LinearPlanInputs.Sequences(new LinearShape(1, offsets.TotalTokens, 2, 2, 64, 64), offsets);
            int[] seqTable = CudaDeltaRulePlan.SequenceTable(starts, lens);
            int[] chunks = CudaDeltaRulePlan.ChunkTable(starts, lens);
            for (int n = 0; n < lengths.Length; n++)
            {
                int first = seqTable[4 * n + 3];
                int count = (lengths[n] + CudaDeltaRulePlan.Chunk - 1) / CudaDeltaRulePlan.Chunk;
                for (int c = 0; c < count; c++)
                {
                    Assert.True(chunks[4 * (first + c)] == n, $"seed {TestData.RunSeed}: chunk row {first + c} belongs to sequence {chunks[4 * (first + c)]}, not {n}");
                    Assert.Equal(starts[n] + c * CudaDeltaRulePlan.Chunk, chunks[4 * (first + c) + 1]);
                }
                if (n + 1 < lengths.Length) Assert.Equal(first + count, seqTable[4 * (n + 1) + 3]);
                else Assert.Equal(chunks.Length / 4, first + count);
            }
        }
    }

    [Theory]
    [InlineData(64, 64)]
    [InlineData(64, 128)]
    [InlineData(128, 64)]
    [InlineData(128, 128)]
    public void BackwardKernelsFitInAHopperBlocksSharedMemory(int keyDim, int valueDim)
    {
        const int hopperMax = 227 * 1024;
        int chunk = CudaDeltaRulePlan.BackwardChunkSharedBytes(keyDim, valueDim);
        Assert.InRange(chunk, 1, hopperMax);
        // The reverse chain keeps a forward chain's footprint (two stages of its tiles).
        Assert.InRange(CudaDeltaRulePlan.BackwardStateSharedBytes(keyDim), 1, hopperMax);
        Assert.True(CudaDeltaRulePlan.BackwardChunkSharedBytes(keyDim, 128) > CudaDeltaRulePlan.BackwardChunkSharedBytes(keyDim, 64), "a wider value tile needs more room");
        // KDA's chunk kernel: 216,064 bytes at Dk = Dv = 128 (its layout's largest case).
        int kda = CudaDeltaRulePlan.KdaBackwardChunkSharedBytes(keyDim, valueDim);
        if (keyDim == 128 && valueDim == 128) Assert.Equal(216_064, kda);
        Assert.InRange(kda, 1, hopperMax);
        Assert.True(kda >= CudaDeltaRulePlan.KdaBackwardChunkSharedBytes(64, 64), "the smallest dims need the least room");
    }

    [Fact]
    public void BackwardKernelSourceIsEmbeddedWithItsEntryPoints()
    {
        string source = KernelCompiler.Source(CudaDeltaRulePlan.BackwardSource);
        Assert.DoesNotContain("#include \"", source);
        Assert.Contains(CudaDeltaRulePlan.StateGradientEntry + "(", source);
        Assert.Contains(CudaDeltaRulePlan.ChunkBackwardEntry + "(", source);
        Assert.Contains(CudaDeltaRulePlan.KdaChunkBackwardEntry + "(", source);
        Assert.Contains($"#define KT {CudaDeltaRulePlan.KdaChunkBackwardThreads}", source);
        // The forward chain takes the checkpoint outputs the backward asks it for.
        string forward = KernelCompiler.Source(CudaDeltaRulePlan.Source);
        Assert.Contains("Hck", forward);
        Assert.Contains("Dnew", forward);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void EveryValueDimSplitsIntoChunkKernelBlocksThatFitOneCta(int keyDim)
    {
        // Value dims past 128 run as several CTAs per (chunk, head) of 128 or 64 columns (their shares added): each block
        // divides Dv, is the wider one when it can be, and its chunk kernel fits sm_90's 227 KB per block.
        for (int dv = 64; dv <= 1024; dv += 64)
        {
            int columns = CudaDeltaRulePlan.BackwardValueColumns(dv);
            Assert.True(columns is 64 or 128, $"Dv = {dv}: {columns} columns");
            Assert.Equal(0, dv % columns);
            Assert.Equal(dv % 128 == 0 ? 128 : 64, columns);
            // The kernel's B_OFF_* layout at the block's width: q, k, dw [64][Dk]; v, dO, δ, dδ [64][DV]; S, X [Dk][DV]; T, M1,
            // M2 [64][64] (element type); four float32 rows of 64 and 16 floats.
            int bytes = CudaDeltaRulePlan.BackwardChunkSharedBytes(keyDim, dv);
            Assert.Equal(3 * 64 * keyDim * 2 + 4 * 64 * columns * 2 + 2 * keyDim * columns * 2 + 3 * 64 * 64 * 2 + 4 * 64 * 4 + 16 * 4, bytes);
            Assert.InRange(bytes, 1, 227 * 1024);
        }
        // Dv 64 and 128 stay one block: a WIDE 0 build, whose dv is DV and which writes its gradients plainly.
        Assert.Equal(64, CudaDeltaRulePlan.BackwardValueColumns(64));
        Assert.Equal(128, CudaDeltaRulePlan.BackwardValueColumns(128));
    }

    [Fact]
    public void TheChunkKernelTakesItsValueDimFromTheGridInWideBuilds()
    {
        // The host launches grid.z = Dv / DV value blocks; a WIDE build derives dv and whether to add its shares from it, and
        // the one-block build keeps dv a compile-time constant (its PTX is the one measured before value blocks existed).
        string source = KernelCompiler.Source(CudaDeltaRulePlan.BackwardSource);
        int wide = source.IndexOf("#if WIDE", StringComparison.Ordinal);
        Assert.True(wide >= 0);
        int grid = source.IndexOf("const int dv = DV * (int)gridDim.z, col0 = DV * (int)blockIdx.z;", wide, StringComparison.Ordinal);
        int single = source.IndexOf("const int dv = DV, col0 = 0;", wide, StringComparison.Ordinal);
        Assert.True(grid > wide && single > grid, "the WIDE branch takes dv from the grid, the #else branch from DV");
        Assert.Contains("-DWIDE=1", CudaDeltaRulePlan.BackwardOptions(128, 128, ElementType.BFloat16, 1, wide: true));
        Assert.Contains("-DWIDE=0", CudaDeltaRulePlan.BackwardOptions(128, 128, ElementType.BFloat16, 1));
    }

    [Fact]
    public void BackwardSpecialisationsDifferByKeyAndValueDimTypeAndGate()
    {
        string[] a = CudaDeltaRulePlan.BackwardOptions(128, 64, ElementType.BFloat16, 1);
        Assert.Contains("-DDK=128", a);
        Assert.Contains("-DDV=64", a);
        Assert.Contains("-DELEM_BF16=1", a);
        Assert.Contains("-DGATE=1", a);
        Assert.Contains("-DELEM_BF16=0", CudaDeltaRulePlan.BackwardOptions(128, 64, ElementType.Float16, 1));
        Assert.Contains("-DGATE=0", CudaDeltaRulePlan.BackwardOptions(64, 128, ElementType.BFloat16, 0));
        Assert.Contains("-DDV=128", CudaDeltaRulePlan.BackwardOptions(64, 128, ElementType.BFloat16, 0));
        // The chunk kernel's warps: the default unless asked for.
        Assert.Contains($"-DCW={CudaDeltaRulePlan.DefaultChunkWarps}", a);
        Assert.Contains("-DCW=4", CudaDeltaRulePlan.BackwardOptions(128, 64, ElementType.BFloat16, 1, 4));
    }

    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void TheRecomputedChainFitsAnSmBesideTheReverseChain(int keyDim)
    {
        // The backward runs the recomputed chain (no q, A tiles) and the reverse chain at once: one CTA of each must fit an
        // H100 SM's 228 KB (1 KB reserved per CTA).
        int chain = CudaDeltaRulePlan.RecomputeChainSharedBytes(keyDim, 16, 1);
        Assert.True(chain + CudaDeltaRulePlan.BackwardStateSharedBytes(keyDim) + 2 * 1024 <= 228 * 1024,
            $"Dk = {keyDim}: {chain} + {CudaDeltaRulePlan.BackwardStateSharedBytes(keyDim)} bytes do not fit one SM");
        // Exactly the forward chain's layout without its two stages of q and A tiles.
        int dropped = 2 * (CudaDeltaRulePlan.Chunk * keyDim * 2 + CudaDeltaRulePlan.Chunk * 64 * 2);
        Assert.Equal(CudaDeltaRulePlan.ChunkSharedBytes(keyDim, 16, 1) - dropped, chain);
        string forward = KernelCompiler.Source(CudaDeltaRulePlan.Source);
        Assert.Contains("CHAIN_NOOUT", forward);
        Assert.Contains("Tin", forward);
    }

    [CudaLinearTheory]
    [InlineData(64)]
    [InlineData(256)]
    public void AKeptForwardGivesTheRecomputedGradients(int dv)
    {
        CudaContext context = CudaContext.Default;
        Random rng = TestData.Rng(1220 + dv);
        const int t = 200, h = 2, dk = 64;
        var shape = new LinearShape(1, t, h, h, dk, dv);
        var options = new LinearAttentionOptions { Update = LinearUpdate.GatedDelta, Decay = LinearDecay.ScalarGate, Scale = 0.125f };
        CudaTensor Tensor(bool normalise, int d)
        {
            var x = new BFloat16[t * h * d];
            for (int r = 0; r < t * h; r++)
            {
                var row = new double[d];
                double norm = 0;
                for (int i = 0; i < d; i++) norm += (row[i] = rng.NextDouble() * 2 - 1) * row[i];
                for (int i = 0; i < d; i++) x[r * d + i] = (BFloat16)(float)(normalise ? row[i] / Math.Sqrt(norm) : row[i]);
            }
            return CudaTensor.FromHost<BFloat16>(context, x, 1, t, h, d);
        }
        using CudaTensor q = Tensor(false, dk), k = Tensor(true, dk), v = Tensor(false, dv), dO = Tensor(false, dv), q2 = Tensor(false, dk);
        using DeviceBuffer beta = DeviceBuffer.From<float>(context, Enumerable.Range(0, t * h).Select(_ => (float)rng.NextDouble()).ToArray());
        using DeviceBuffer gate = DeviceBuffer.From<float>(context, Enumerable.Range(0, t * h).Select(_ => -(float)rng.NextDouble() / 8).ToArray());
        using CudaTensor o = CudaTensor.Create(context, ElementType.BFloat16, 1, t, h, dv);
        float[][] Gradients(CudaDeltaKeep keep, CudaTensor forwardQuery, CudaTensor backwardQuery)
        {
            using var plan = new CudaDeltaRulePlan(context, shape, ElementType.BFloat16, options) { KeepForBackward = keep };
            using var gq = new DeviceBuffer(context, t * h * dk * 4L);
            using var gk = new DeviceBuffer(context, t * h * dk * 4L);
            using var gv = new DeviceBuffer(context, t * h * dv * 4L);
            using var gb = new DeviceBuffer(context, t * h * 4L);
            using var gg = new DeviceBuffer(context, t * h * 4L);
            foreach (DeviceBuffer b in (DeviceBuffer[])[gq, gk, gv, gb, gg]) b.Fill(0xFF);
            plan.Run(forwardQuery, k, v, beta, gate, null, o, null);
            plan.Backward(backwardQuery, k, v, beta, gate, null, dO, null, gq, gk, gv, gb, gg, null);
            context.Synchronize();
            return [.. ((DeviceBuffer[])[gq, gk, gv, gb, gg]).Select(b =>
            {
                var host = new float[b.Bytes / 4];
                b.CopyTo<float>(host);
                return host;
            })];
        }
        float[][] none = Gradients(CudaDeltaKeep.None, q, q);
        void Same(float[][] actual, float[][] expected, double tolerance, string what)
        {
            for (int i = 0; i < expected.Length; i++)
            {
                double err = TestData.RelativeL2(actual[i], expected[i]);
                Assert.True(err <= tolerance, $"seed {TestData.RunSeed}: {what}, gradient {i}: rel {err:E2} (NaN counts as unwritten)");
            }
        }
        // All: the forward's own checkpoints and δ, the same arithmetic as the recomputation (the margin only for a rounding flip).
        Same(Gradients(CudaDeltaKeep.All, q, q), none, 1e-3, "kept all");
        // Inverse: w and u from the kept T, rounded once more.
        Same(Gradients(CudaDeltaKeep.Inverse, q, q), none, 1e-2, "kept T");
        // A Backward given other buffers than the Run's recomputes: the gradients of q2, not of the kept forward.
        Same(Gradients(CudaDeltaKeep.All, q, q2), Gradients(CudaDeltaKeep.None, q2, q2), 1e-3, "other inputs");
    }

    [Attend.Tests.Cuda.CudaFact]
    public void AnInitialStateGradientOverlappingTheInitialStateIsRefusedByName()
    {
        // The recomputed chain (side stream) reads S0 while the reverse chain writes dS0: one buffer for both would race.
        CudaContext context = CudaContext.Default;
        const int t = 70, h = 2, d = 64;
        var shape = new LinearShape(1, t, h, h, d, d);
        using var plan = new CudaDeltaRulePlan(context, shape, ElementType.BFloat16, new LinearAttentionOptions { Update = LinearUpdate.Delta });
        using CudaTensor q = CudaTensor.Create(context, ElementType.BFloat16, 1, t, h, d), k = CudaTensor.Create(context, ElementType.BFloat16, 1, t, h, d),
            v = CudaTensor.Create(context, ElementType.BFloat16, 1, t, h, d), dO = CudaTensor.Create(context, ElementType.BFloat16, 1, t, h, d);
        using var grads = new DeviceBuffer(context, t * h * d * 4L);
        using var state = new DeviceBuffer(context, h * d * d * 4L * 2);
        var e = Assert.Throws<ArgumentException>(() => plan.Backward(q, k, v, null, null, state, dO, null, grads, grads, grads, null, null, state));
        Assert.Equal("initialStateGradient", e.ParamName);
    }

    [Attend.Tests.Cuda.NoGpuFact]
    public void TheCudaBackwardSaysWhyItCannotRunHere()
    {
        Assert.False(CudaBackend.IsAvailable(out string why));
        CudaBackend.Register();
        LinearCase c = LinearCase.Create(TestData.Rng(1202), LinearShape.Mha(1, 9, 2, 64),
            new LinearAttentionOptions { Update = LinearUpdate.Delta, Backend = "cuda" });
        float[] dO = new float[c.OutputLength];
        float[] dq = TestData.Poisoned<float>(c.Q.Length);
        NotSupportedException e = Assert.Throws<NotSupportedException>(() =>
            LinearAttention.Backward(c.Inputs, c.Options, dO, [], new LinearGradients { Q = dq }));
        Assert.Contains(why, e.Message);
    }

    [Fact]
    public void AnUnsupportedBackwardIsRefusedByItsReasonOnAnyMachine()
    {
        // The configuration is checked before the GPU's presence: Dv = 96 (not a multiple of 64) is refused with the
        // reason everywhere, and so is KDA past Dv = 128 (its chunk kernel holds the whole value dim).
        CudaBackend.Register();
        LinearCase c = LinearCase.Create(TestData.Rng(1203), new LinearShape(1, 9, 2, 2, 64, 96),
            new LinearAttentionOptions { Update = LinearUpdate.Delta, Backend = "cuda" });
        float[] dO = new float[c.OutputLength];
        NotSupportedException e = Assert.Throws<NotSupportedException>(() =>
            LinearAttention.Backward(c.Inputs, c.Options, dO, [], new LinearGradients { Q = new float[c.Q.Length] }));
        Assert.Contains("multiples of 64; got Dv = 96", e.Message);
        LinearCase kda = LinearCase.Create(TestData.Rng(1204), new LinearShape(1, 9, 2, 2, 64, 256),
            new LinearAttentionOptions { Update = LinearUpdate.GatedDelta, Decay = LinearDecay.ChannelGate, Backend = "cuda" });
        e = Assert.Throws<NotSupportedException>(() =>
            LinearAttention.Backward(kda.Inputs, kda.Options, new float[kda.OutputLength], [], new LinearGradients { Q = new float[kda.Q.Length] }));
        Assert.Contains("value dims 64 and 128; got Dv = 256", e.Message);
    }

    [CudaLinearTheory]
    [InlineData(LinearUpdate.Delta, LinearDecay.None, 0)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, 0)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, 1)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.FixedPerHead, 1)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ChannelGate, 0)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ChannelGate, 1)]
    // Value dims past 128: 2 blocks of 128 columns, 3 of 64 (their shares of dq, dk, dβ, d log α added atomically).
    [InlineData(LinearUpdate.Delta, LinearDecay.None, 0, 256)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.ScalarGate, 1, 192)]
    [InlineData(LinearUpdate.GatedDelta, LinearDecay.FixedPerHead, 0, 256)]
    public void GpuBackwardMatchesTheFloat64NaiveForm(LinearUpdate update, LinearDecay decay, int varlen, int valueDim = 128)
    {
        CudaBackend.Register();
        Random rng = TestData.Rng(1210 + (int)update * 10 + (int)decay * 3 + varlen + (valueDim == 128 ? 0 : valueDim));
        int[]? lengths = varlen == 1 ? [1, rng.Next(2, 90), 0, rng.Next(130, 300)] : null;
        var shape = new LinearShape(2, rng.Next(65, 260) | 1, 4, 2, 64, valueDim);
        var options = new LinearAttentionOptions
        {
            Update = update, Decay = decay, Backend = "cuda", Scale = 0.125f,
            HeadDecay = decay == LinearDecay.FixedPerHead ? [0.99f, 0.9f, 0.7f, 1f] : null,
        };
        LinearCase c = LinearCase.Create(rng, shape, options, lengths, qkScale: 1.0);
        NormaliseRows(c.K, c.Shape.KeyDim);
        TestData.RoundToBf16(c.Q);
        TestData.RoundToBf16(c.K);
        TestData.RoundToBf16(c.V);
        float[] dO = new float[c.OutputLength];
        for (int i = 0; i < dO.Length; i++) dO[i] = (float)(rng.NextDouble() * 2 - 1);
        TestData.RoundToBf16(dO);
        float[] dST = new float[c.Config.StateLength];
        for (int i = 0; i < dST.Length; i++) dST[i] = (float)(rng.NextDouble() - 0.5);
        (float[] Q, float[] K, float[] V, float[] Beta, float[] Gate, float[] State) Run(LinearAttentionOptions o)
        {
            var g = (Q: TestData.Poisoned<float>(c.Q.Length), K: TestData.Poisoned<float>(c.K.Length), V: TestData.Poisoned<float>(c.V.Length),
                Beta: TestData.Poisoned<float>(c.Beta.Length), Gate: TestData.Poisoned<float>(c.Gate.Length), State: TestData.Poisoned<float>(c.State.Length));
            LinearAttention.Backward(c.Inputs, o, dO, dST, new LinearGradients { Q = g.Q, K = g.K, V = g.V, Beta = g.Beta, Gate = g.Gate, InitialState = g.State });
            return g;
        }
        var gpu = Run(c.Options);
        var reference = Run(c.Options with { Form = LinearForm.Naive, Backend = null });
        foreach ((string name, float[] a, float[] e) in (ReadOnlySpan<(string, float[], float[])>)
                 [("dq", gpu.Q, reference.Q), ("dk", gpu.K, reference.K), ("dv", gpu.V, reference.V), ("dbeta", gpu.Beta, reference.Beta),
                  ("dlog gate", gpu.Gate, reference.Gate), ("dS0", gpu.State, reference.State)])
        {
            double err = TestData.RelativeL2(a, e);
            Assert.True(err <= 2e-2, $"seed {TestData.RunSeed}: {name} rel {err:E2} (NaN counts as unwritten)");
        }
    }

    [Attend.Tests.Cuda.CudaFact]
    public void BackwardArgumentsAreCheckedByName()
    {
        CudaContext context = CudaContext.Default;
        var shape = new LinearShape(1, 70, 2, 2, 64, 64);
        var options = new LinearAttentionOptions { Update = LinearUpdate.Delta };
        using var plan = new CudaDeltaRulePlan(context, shape, ElementType.BFloat16, options);
        using CudaTensor q = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using CudaTensor k = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using CudaTensor v = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using CudaTensor dO = CudaTensor.Create(context, ElementType.BFloat16, 1, 70, 2, 64);
        using var grad = new DeviceBuffer(context, 70L * 2 * 64 * 4);
        using var small = new DeviceBuffer(context, 16);
        using var rowBuffer = new DeviceBuffer(context, 70L * 2 * 4);
        // dβ without β (β = 1 has no gradient), a gate on the delta rule, a short query gradient.
        var e = Assert.Throws<ArgumentException>(() => plan.Backward(q, k, v, null, null, null, dO, null, grad, grad, grad, rowBuffer, null, null));
        Assert.Equal("betaGradient", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => plan.Backward(q, k, v, null, rowBuffer, null, dO, null, grad, grad, grad, null, null, null));
        Assert.Equal("gate", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => plan.Backward(q, k, v, null, null, null, dO, null, small, grad, grad, null, null, null));
        Assert.Equal("queryGradient", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => plan.Backward(q, k, v, null, null, null, dO, small, grad, grad, grad, null, null, null));
        Assert.Equal("finalStateGradient", e.ParamName);
        // The recurrent form has no backward: refused with the reason.
        using var recurrent = new CudaDeltaRulePlan(context, shape, ElementType.BFloat16, options with { Form = LinearForm.Recurrent });
        NotSupportedException n = Assert.Throws<NotSupportedException>(() => recurrent.Backward(q, k, v, null, null, null, dO, null, grad, grad, grad, null, null, null));
        Assert.Contains("chunked", n.Message);
    }

    private static void NormaliseRows(float[] x, int width)
    {
        for (int r = 0; r < x.Length / width; r++)
        {
            double norm = 0;
            for (int i = 0; i < width; i++) norm += (double)x[r * width + i] * x[r * width + i];
            float f = (float)(1 / Math.Sqrt(norm + 1e-12));
            for (int i = 0; i < width; i++) x[r * width + i] *= f;
        }
    }
}
