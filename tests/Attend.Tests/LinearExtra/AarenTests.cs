using Xunit;
using Attend.Methods;
using Attend.Methods.Linear;

namespace Attend.Tests.LinearExtra;

public class AarenTests
{
    private static readonly int[] Dims = [32, 48, 64, 128, 256];

    private static float[] Run(ExtraCase c, float[] query, string form, int chunk, float[] init, out float[] state, float? scale = null)
    {
        var output = TestData.Poisoned<float>(c.Shape.OutputCount);
        state = TestData.Poisoned<float>(Aaren.StateSize(c.Shape));
        var options = new AarenOptions { ChunkSize = chunk, Scale = scale };
        if (form == "chunked") Aaren.Chunked(query, c.K, c.V, c.Shape, options, init, output, state);
        else Aaren.Recurrent(query, c.K, c.V, c.Shape, options, init, output, state);
        return output;
    }

    [Fact]
    public void BothFormsEqualCausalSoftmaxAttentionOfTheBroadcastQuery()
    {
        var rng = TestData.Rng(501);
        for (int trial = 0; trial < 12; trial++)
        {
            var c = ExtraCase.Random(rng, 127, Dims, varlen: false, sameDims: true);
            float[] query = AarenMethod.QueryTokens(c.Q, c.Shape);
            // The query token broadcast to every row: exact causal softmax attention must give the same outputs.
            var qFull = new float[c.Q.Length];
            int hd = c.Shape.Heads * c.Shape.KeyDim;
            for (int b = 0; b < c.Shape.Batch; b++)
                for (int t = 0; t < c.Shape.Tokens; t++) Array.Copy(query, b * hd, qFull, ((long)b * c.Shape.Tokens + t) * hd, hd);
            var s = c.Shape;
            ReferenceForwardResult expected = ReferenceAttention.Forward<float>(
                TestData.Bthd(qFull, s.Batch, s.Tokens, s.Heads, s.KeyDim), TestData.Bthd(c.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim),
                TestData.Bthd(c.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim), new AttentionOptions { Mask = new CausalMask() });
            int chunk = rng.Next(1, 40);
            foreach (string form in (string[])["chunked", "recurrent"])
            {
                float[] o = Run(c, query, form, chunk, [], out float[] state);
                double err = ExtraCase.Error(o, expected.Output);
                Assert.True(err < 2e-5, $"{form} chunk {chunk}: error {err:E2} vs causal softmax; {c.Description}");
                // The state's LSE, m + ln w, is the LSE of the last row.
                for (int n = 0; n < s.Sequences; n++)
                    for (int h = 0; h < s.Heads; h++)
                    {
                        int row = (n * s.Heads + h) * (s.ValueDim + 2);
                        double lse = state[row + s.ValueDim] + Math.Log(state[row + s.ValueDim + 1]);
                        double want = expected.Lse[((long)n * s.Heads + h) * s.Tokens + s.Tokens - 1];
                        Assert.True(Math.Abs(lse - want) < 1e-4 * Math.Max(1, Math.Abs(want)), $"{form}: state LSE {lse} vs {want}; {c.Description}");
                    }
            }
        }
    }

    [Fact]
    public void FormsAgreeWithTheReferenceOnVarlenAndGqaWithAnInitialState()
    {
        var rng = TestData.Rng(502);
        for (int trial = 0; trial < 10; trial++)
        {
            var c = ExtraCase.Random(rng, 100, Dims, varlen: trial % 2 == 0);
            float[] query = TestData.Gaussian<float>(rng, c.Shape.Sequences * c.Shape.Heads * c.Shape.KeyDim);
            // A non-empty initial state: the final state of a random prefix of 5 tokens.
            var prefix = ExtraCase.Make(rng, c.Shape with { Batch = c.Shape.Sequences, Tokens = 5, Offsets = null });
            (_, double[] initD) = AarenReference.Forward(query, prefix.K, prefix.V, prefix.Shape, null, []);
            float[] init = Array.ConvertAll(initD, x => (float)x);
            (double[] expected, double[] expectedState) = AarenReference.Forward(query, c.K, c.V, c.Shape, null, init);
            int chunk = rng.Next(1, 70);
            foreach (string form in (string[])["chunked", "recurrent"])
            {
                float[] o = Run(c, query, form, chunk, init, out float[] state);
                Assert.True(ExtraCase.Error(o, expected) < 2e-5, $"{form} chunk {chunk}: output error {ExtraCase.Error(o, expected):E2}; {c.Description}");
                // Compare states through what they mean: u/w and m + ln w.
                Assert.True(StateError(state, expectedState, c.Shape.ValueDim) < 2e-5, $"{form}: state error; {c.Description}");
            }
        }
    }

    private static double StateError(float[] actual, double[] expected, int dv)
    {
        double worst = 0;
        for (int r = 0; r < expected.Length; r += dv + 2)
        {
            double wa = actual[r + dv + 1], we = expected[r + dv + 1];
            for (int i = 0; i < dv; i++) worst = Math.Max(worst, Math.Abs(actual[r + i] / wa - expected[r + i] / we));
            worst = Math.Max(worst, Math.Abs(actual[r + dv] + Math.Log(wa) - (expected[r + dv] + Math.Log(we))) / Math.Max(1, Math.Abs(expected[r + dv])));
        }
        return double.IsNaN(worst) ? double.PositiveInfinity : worst;
    }

    [Fact]
    public void PrefixChunkedThenRestRecurrentEqualsTheWholeRunChunked()
    {
        var rng = TestData.Rng(503);
        for (int trial = 0; trial < 6; trial++)
        {
            var c = ExtraCase.Random(rng, 127, Dims, varlen: false);
            if (c.Shape.Tokens < 2) continue;
            int split = rng.Next(1, c.Shape.Tokens);
            float[] query = AarenMethod.QueryTokens(c.Q, c.Shape);
            float[] whole = Run(c, query, "chunked", 16, [], out float[] wholeState);
            ExtraCase head = c.Slice(0, split), tail = c.Slice(split, c.Shape.Tokens);
            float[] o1 = Run(head, query, "chunked", 16, [], out float[] mid);
            float[] o2 = Run(tail, query, "recurrent", 16, mid, out float[] end);
            int rowSize = c.Shape.Heads * c.Shape.ValueDim;
            float[] joined = ExtraCase.JoinRows(o1, split, o2, c.Shape.Tokens - split, c.Shape.Batch, rowSize);
            Assert.True(ExtraCase.Error(joined, whole) < 1e-5, $"split {split}: {c.Description}");
            Assert.True(ExtraCase.Error(end, wholeState) < 1e-5, $"split {split}: final states differ; {c.Description}");
        }
    }

    [Fact]
    public void LargeLogitsAndLongSequencesStayFinite()
    {
        var rng = TestData.Rng(504);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 65536, 1, 1, 32, 32), scale: 30);
        float[] query = AarenMethod.QueryTokens(c.Q, c.Shape);
        foreach (string form in (string[])["chunked", "recurrent"])
        {
            float[] o = Run(c, query, form, 256, [], out float[] state);
            Assert.True(ExtraCase.AllFinite(o), $"{form}: non-finite output; {c.Description}");
            Assert.True(float.IsFinite(state[32]) && state[33] >= 1, $"{form}: state m={state[32]} w={state[33]}");
        }
        float[] oc = Run(c, query, "chunked", 256, [], out _), or = Run(c, query, "recurrent", 1, [], out _);
        Assert.True(ExtraCase.Error(oc, or) < 1e-4, $"forms disagree at large logits: {ExtraCase.Error(oc, or):E2}");
    }

    [Fact]
    public void BackwardEqualsTheSoftmaxBackwardOfTheBroadcastQuery()
    {
        var rng = TestData.Rng(506);
        for (int trial = 0; trial < 8; trial++)
        {
            var c = ExtraCase.Random(rng, 100, [32, 64, 128], varlen: false, sameDims: true, scale: trial % 2 == 0 ? 1 : 4);
            var s = c.Shape;
            float[] query = AarenMethod.QueryTokens(c.Q, s);
            var qFull = new float[c.Q.Length];
            int hd = s.Heads * s.KeyDim;
            for (int b = 0; b < s.Batch; b++)
                for (int t = 0; t < s.Tokens; t++) Array.Copy(query, b * hd, qFull, ((long)b * s.Tokens + t) * hd, hd);
            float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
            ReferenceBackwardResult expected = ReferenceAttention.Backward<float>(TestData.Bthd(qFull, s.Batch, s.Tokens, s.Heads, s.KeyDim),
                TestData.Bthd(c.K, s.Batch, s.Tokens, s.KvHeads, s.KeyDim), TestData.Bthd(c.V, s.Batch, s.Tokens, s.KvHeads, s.ValueDim),
                TestData.Bthd(dO, s.Batch, s.Tokens, s.Heads, s.ValueDim), new AttentionOptions { Mask = new CausalMask() });
            // The query token is shared by every row, so its gradient is the sum of the rows' dQ.
            var dQuery = new double[query.Length];
            for (int b = 0; b < s.Batch; b++)
                for (int t = 0; t < s.Tokens; t++)
                    for (int i = 0; i < hd; i++) dQuery[b * hd + i] += expected.DQ[((long)b * s.Tokens + t) * hd + i];
            float[] o = Run(c, query, "chunked", 16, [], out _);
            float[] gq = TestData.Poisoned<float>(query.Length), gk = TestData.Poisoned<float>(c.K.Length), gv = TestData.Poisoned<float>(c.V.Length);
            Aaren.Backward(query, c.K, c.V, s, null, [], o, dO, gq, gk, gv);
            Assert.True(ExtraCase.Error(gv, expected.DV) < 1e-4, $"dV {ExtraCase.Error(gv, expected.DV):E2}; {c.Description}");
            Assert.True(ExtraCase.Error(gk, expected.DK) < 1e-4, $"dK {ExtraCase.Error(gk, expected.DK):E2}; {c.Description}");
            Assert.True(ExtraCase.Error(gq, dQuery) < 1e-4, $"dQuery {ExtraCase.Error(gq, dQuery):E2}; {c.Description}");
        }
    }

    [Fact]
    public void BackwardWithAnInitialStateMatchesFiniteDifferences()
    {
        var rng = TestData.Rng(507);
        var s = new LinearExtraShape(1, 6, 2, 1, 3, 2, SeqOffsets.FromLengths([2, 4]));
        var c = ExtraCase.Make(rng, s);
        float[] query = TestData.Gaussian<float>(rng, 2 * 2 * 3);
        var prefix = ExtraCase.Make(rng, s with { Batch = 2, Tokens = 3, Offsets = null });
        (_, double[] initD) = AarenReference.Forward(query, prefix.K, prefix.V, prefix.Shape, null, []);
        float[] init = Array.ConvertAll(initD, x => (float)x);
        float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
        double Loss(float[] qq, float[] kk, float[] vv)
        {
            (double[] o, _) = AarenReference.Forward(qq, kk, vv, s, null, init);
            double sum = 0;
            for (int i = 0; i < o.Length; i++) sum += o[i] * dO[i];
            return sum;
        }
        float[] output = Run(c, query, "recurrent", 1, init, out _);
        float[] gq = new float[query.Length], gk = new float[c.K.Length], gv = new float[c.V.Length];
        Aaren.Backward(query, c.K, c.V, s, null, init, output, dO, gq, gk, gv);
        foreach ((float[] x, float[] grad, string name) in new[] { (query, gq, "query"), (c.K, gk, "k"), (c.V, gv, "v") })
        {
            for (int i = 0; i < x.Length; i++)
            {
                float keep = x[i];
                const float step = 1e-2f;
                x[i] = keep + step;
                double up = Loss(query, c.K, c.V);
                x[i] = keep - step;
                double down = Loss(query, c.K, c.V);
                x[i] = keep;
                double fd = (up - down) / (2 * step);
                Assert.True(Math.Abs(fd - grad[i]) < 2e-3 * Math.Max(1, Math.Abs(fd)), $"d{name}[{i}]: {grad[i]} vs finite difference {fd} (seed {TestData.RunSeed})");
            }
        }
    }

    [Fact]
    public void AdapterRunsEveryFormAndRejectsBadParameters()
    {
        var rng = TestData.Rng(505);
        var c = ExtraCase.Random(rng, 33, [32], varlen: true);
        var method = new AarenMethod();
        MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive"]));
        foreach (string form in (string[])["chunked", "recurrent"])
        {
            MethodResult r = method.Run(c.Inputs(), MethodArguments.Parse([$"form={form}", "chunk=5"]));
            Assert.True(ExtraCase.Error(r.Output.Data, naive.Output.Data) < 2e-5, $"{form}; {c.Description}");
            Assert.Equal(naive.Extras["state"].Shape, r.Extras["state"].Shape);
        }
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=fft"])));
        Assert.Equal("form", e.ParamName);
        Assert.Contains("recurrent", e.Message);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["chunk=0"])));
        Assert.Equal("chunk", e.ParamName);
        var bad = c.Inputs().Add("state", new MethodTensor(new float[3], 1, 1, 3));
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(bad, MethodArguments.Empty));
        Assert.Equal("state", e.ParamName);
    }
}
