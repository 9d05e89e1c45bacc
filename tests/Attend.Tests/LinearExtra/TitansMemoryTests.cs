using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class TitansMemoryTests
{
    private static readonly int[] Dims = [8, 16, 32];

    private sealed record Setup(ExtraCase Case, float[]? Alpha, float[]? Eta, float[]? Theta, TitansMemoryOptions Options, float[] Init);

    private static Setup Random(Random rng, int maxT, bool varlen, int chunk, bool gates = true)
    {
        var c = ExtraCase.Random(rng, maxT, Dims, varlen);
        int hidden = Dims[rng.Next(Dims.Length)];
        long count = (long)c.Shape.Batch * c.Shape.Tokens * c.Shape.KvHeads;
        float[] Uniform(double lo, double hi)
        {
            var x = new float[count];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(lo + (hi - lo) * rng.NextDouble());
            return x;
        }
        float[] init = TitansMemory.InitialState(c.Shape, hidden);
        int row = TitansMemory.StateRow(c.Shape.KeyDim, hidden, c.Shape.ValueDim);
        for (int i = 0; i < init.Length; i++) init[i] += (float)(0.2 * (rng.NextDouble() - 0.5));
        // The position slot: a chunk already partly filled (its gradient weights G are the noisy copy above).
        for (int r = row - 1; r < init.Length; r += row) init[r] = rng.Next(chunk);
        var options = new TitansMemoryOptions { Hidden = hidden, ChunkSize = chunk };
        // A chunk sums b gradients taken at the same weights, so the stable step shrinks with b (the method diverges
        // otherwise, in float64 as well), momentum η multiplies it by up to 1/(1 − η), and the first layer's curvature
        // grows with ‖v‖² ≈ Dv: θ ≤ 0.4 / (b·Dv), η ≤ 0.9 (the default θ is 0.2 / (b·Dv)).
        return gates ? new Setup(c, Uniform(0, 0.2), Uniform(0.3, 0.9), Uniform(0, 0.4 / (chunk * c.Shape.ValueDim)), options, init) : new Setup(c, null, null, null, options, init);
    }

    private static (float[] O, float[] State) Run(Setup s, bool recurrent, ExtraCase? c = null, float[]? init = null, float[]? alpha = null, float[]? eta = null, float[]? theta = null)
    {
        c ??= s.Case;
        init ??= s.Init;
        var o = TestData.Poisoned<float>(c.Shape.OutputCount);
        var state = TestData.Poisoned<float>(init.Length);
        var gates = new TitansGates(alpha ?? s.Alpha, eta ?? s.Eta, theta ?? s.Theta);
        if (recurrent) TitansMemory.Recurrent(c.Q, c.K, c.V, c.Shape, gates, s.Options, init, o, state);
        else TitansMemory.Chunked(c.Q, c.K, c.V, c.Shape, gates, s.Options, init, o, state);
        return (o, state);
    }

    [Fact]
    public void InnerGradientMatchesFiniteDifferencesOfTheInnerLoss()
    {
        var rng = TestData.Rng(531);
        foreach ((int dk, int hd, int dv) in new[] { (3, 4, 2), (8, 5, 7), (16, 16, 16) })
        {
            double[] Draw(int n) => Array.ConvertAll(TestData.Gaussian<float>(rng, n, 0.7), x => (double)x);
            double[] w1 = Draw(hd * dk), w2 = Draw(dv * hd), k = Draw(dk), v = Draw(dv);
            var g1 = new double[w1.Length];
            var g2 = new double[w2.Length];
            TitansMemoryReference.InnerGradient(w1, w2, k, v, hd, g1, g2);
            const double step = 1e-6;
            foreach ((double[] w, double[] g) in new[] { (w1, g1), (w2, g2) })
            {
                for (int i = 0; i < w.Length; i++)
                {
                    double keep = w[i];
                    w[i] = keep + step;
                    double up = TitansMemoryReference.InnerLoss(w1, w2, k, v, hd);
                    w[i] = keep - step;
                    double down = TitansMemoryReference.InnerLoss(w1, w2, k, v, hd);
                    w[i] = keep;
                    double fd = (up - down) / (2 * step);
                    Assert.True(Math.Abs(fd - g[i]) < 1e-6 * Math.Max(1, Math.Abs(fd)), $"({dk},{hd},{dv}) weight {i}: analytic {g[i]} vs finite difference {fd} (seed {TestData.RunSeed})");
                }
            }
            // The float32 gradient the forms step with agrees with the float64 one.
            var f1 = new float[g1.Length];
            var f2 = new float[g2.Length];
            TitansMemory.InnerGradient(Array.ConvertAll(w1, x => (float)x), Array.ConvertAll(w2, x => (float)x), Array.ConvertAll(k, x => (float)x),
                Array.ConvertAll(v, x => (float)x), hd, f1, f2);
            Assert.True(ExtraCase.Error(f1, g1) < 1e-5 && ExtraCase.Error(f2, g2) < 1e-5, $"float32 gradient ({dk},{hd},{dv})");
        }
    }

    [Fact]
    public void ChunkedFormEqualsTheDefinitionWithTheSameChunkOnBatchesVarlenGqaAndGates()
    {
        var rng = TestData.Rng(532);
        int[] chunks = [1, 2, 3, 5, 16, 64];
        for (int trial = 0; trial < 12; trial++)
        {
            int chunk = chunks[rng.Next(chunks.Length)];
            Setup s = Random(rng, 100, varlen: trial % 3 == 0, chunk, gates: trial % 4 != 1);
            (double[] o, double[] st) = TitansMemoryReference.Forward(s.Case.Q, s.Case.K, s.Case.V, s.Case.Shape, s.Alpha, s.Eta, s.Theta, s.Options, s.Init);
            (float[] oc, float[] sc) = Run(s, recurrent: false);
            Assert.True(ExtraCase.Error(oc, o) < 1e-4, $"chunk {chunk}: output error {ExtraCase.Error(oc, o):E2}; {s.Case.Description}");
            Assert.True(ExtraCase.Error(sc, st) < 1e-4, $"chunk {chunk}: state error {ExtraCase.Error(sc, st):E2}; {s.Case.Description}");
        }
    }

    [Fact]
    public void RecurrentFormEqualsTheChunkedFormAndTheDefinitionForAnyChunk()
    {
        var rng = TestData.Rng(533);
        int[] chunks = [1, 1, 3, 8];
        for (int trial = 0; trial < 8; trial++)
        {
            int chunk = chunks[trial % chunks.Length];
            Setup s = Random(rng, 65, varlen: trial % 2 == 0, chunk);
            (double[] o, double[] st) = TitansMemoryReference.Forward(s.Case.Q, s.Case.K, s.Case.V, s.Case.Shape, s.Alpha, s.Eta, s.Theta, s.Options, s.Init);
            (float[] or, float[] sr) = Run(s, recurrent: true);
            Assert.True(ExtraCase.Error(or, o) < 1e-4 && ExtraCase.Error(sr, st) < 1e-4, $"chunk {chunk}: recurrent vs definition; {s.Case.Description}");
            (float[] oc, float[] sc) = Run(s, recurrent: false);
            Assert.True(ExtraCase.Error(oc, or) < 1e-4 && ExtraCase.Error(sc, sr) < 1e-4, $"chunk {chunk}: chunked vs recurrent; {s.Case.Description}");
        }
    }

    [Fact]
    public void PrefixThenRestEqualsTheWholeRun()
    {
        var rng = TestData.Rng(534);
        for (int trial = 0; trial < 6; trial++)
        {
            int chunk = trial % 2 == 0 ? 1 : 4 + trial;
            Setup s = Random(rng, 127, varlen: false, chunk, gates: false);
            int t = s.Case.Shape.Tokens;
            if (t < 2) continue;
            // Any split, also inside a chunk: the state carries the chunk's gradient weights and position.
            int split = rng.Next(1, t);
            (float[] whole, float[] wholeState) = Run(s, recurrent: false);
            ExtraCase head = s.Case.Slice(0, split), tail = s.Case.Slice(split, t);
            (float[] o1, float[] mid) = Run(s, recurrent: false, head);
            (float[] o2, float[] end) = Run(s, recurrent: trial % 3 != 0, tail, mid);
            float[] joined = ExtraCase.JoinRows(o1, split, o2, t - split, s.Case.Shape.Batch, s.Case.Shape.Heads * s.Case.Shape.ValueDim);
            Assert.True(ExtraCase.Error(joined, whole) < 1e-4, $"chunk {chunk} split {split}: outputs; {s.Case.Description}");
            Assert.True(ExtraCase.Error(end, wholeState) < 1e-4, $"chunk {chunk} split {split}: final states; {s.Case.Description}");
        }
    }

    [Fact]
    public void LongSequencesStayFiniteWithGatesAtTheirExtremes()
    {
        var rng = TestData.Rng(535);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 16384, 1, 1, 8, 8));
        // Chunks of 8 with θ = 0.0005 per token. With α = 0 and η near 1 the weights integrate a momentum that is itself
        // a sum of gradients (heavy ball without damping): on random targets θ = 0.005 already diverges at η = 0.99, in
        // float64 too, so the extremes are taken with a small θ; α = 0, η = 1 is taken at η = 0.99.
        foreach ((float alpha, float eta) in new[] { (0f, 0f), (0f, 0.99f), (1f, 0f), (1f, 1f) })
        {
            var s = new Setup(c, null, null, null, new TitansMemoryOptions { Hidden = 8, ChunkSize = 8, Alpha = alpha, Eta = eta, Theta = 0.0005f },
                TitansMemory.InitialState(c.Shape, 8));
            foreach (bool recurrent in new[] { false, true })
            {
                // The recurrent form on the first 2048 tokens (it does the same arithmetic token by token).
                (float[] o, float[] st) = recurrent ? Run(s, true, c.Slice(0, 2048)) : Run(s, false);
                Assert.True(ExtraCase.AllFinite(o) && ExtraCase.AllFinite(st), $"alpha {alpha} eta {eta} recurrent {recurrent}: non-finite");
            }
        }
    }

    [Fact]
    public void AdapterFormsAgreeAndBadParametersAreNamed()
    {
        var rng = TestData.Rng(536);
        var c = ExtraCase.Random(rng, 40, [16], varlen: true);
        var method = new TitansMemoryMethod();
        ArgumentException e0;
        MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive", "chunk=4"]));
        MethodResult chunked = method.Run(c.Inputs(), MethodArguments.Parse(["chunk=4"]));
        Assert.True(ExtraCase.Error(chunked.Output.Data, naive.Output.Data) < 1e-4, c.Description);
        MethodResult recurrent = method.Run(c.Inputs(), MethodArguments.Parse(["form=recurrent", "chunk=4"]));
        Assert.True(ExtraCase.Error(recurrent.Output.Data, naive.Output.Data) < 1e-4, c.Description);
        Assert.True(ExtraCase.Error(recurrent.Extras["state"].Data, naive.Extras["state"].Data) < 1e-4, c.Description);
        // A decode step from the final state continues the partly filled chunk.
        var bad = (float[])naive.Extras["state"].Data.Clone();
        bad[TitansMemory.StateRow(16, 16, 16) - 1] = 4; // position ≥ chunk
        e0 = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs().Add("state", new MethodTensor(bad, naive.Extras["state"].Shape.ToArray())), MethodArguments.Parse(["chunk=4"])));
        Assert.Contains("position", e0.Message);
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["alpha=1.5"])));
        Assert.Equal("alpha", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["theta=-1"])));
        Assert.Equal("theta", e.ParamName);
        var gates = new float[c.Shape.Tokens * c.Shape.KvHeads];
        gates[0] = -0.5f;
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs().Add("eta", new MethodTensor(gates, 1, c.Shape.Tokens, c.Shape.KvHeads)), MethodArguments.Empty));
        Assert.Equal("eta", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs().Add("state", new MethodTensor(new float[4], 4)), MethodArguments.Empty));
        Assert.Equal("state", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=fft"])));
        Assert.Equal("form", e.ParamName);
        // A chunk × chunk scratch per work item: a huge chunk is refused by name, not an overflow or a 4 GB request.
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["chunk=100000"])));
        Assert.Equal("chunk", e.ParamName);
        var huge = new Setup(c, null, null, null, new TitansMemoryOptions { ChunkSize = TitansMemory.MaxChunk + 1 }, TitansMemory.InitialState(c.Shape, c.Shape.KeyDim));
        Assert.Throws<ArgumentOutOfRangeException>(() => Run(huge, recurrent: false));
    }
}
