using Attend.Methods;
using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>
/// SpAtten's head pruning in a one-layer use (the only use <c>attend run</c> and the bench reach): heads are ranked by
/// the magnitude Σ|o| of their output on the sampled rows, the weakest are dropped (output 0, LSE −∞), and the rest
/// attend to the kept tokens — checked against a float64 computation of that definition.
/// </summary>
public sealed class SpAttenHeadPruningTests
{
    /// <summary>Shapes (packed lengths or a padded batch), GQA ratios, head dims, sample strides, a fraction or a count.</summary>
    public static TheoryData<int[]?, int, int, int, int, int, int, double, int> Cases => new()
    {
        // lens, B, T, H, Hkv, D, sample, head-keep fraction (0: none), head count (0: none)
        { [1, 70, 33], 1, 0, 4, 2, 32, 1, 0.5, 0 },
        { null, 2, 45, 8, 8, 64, 3, 0, 3 },
        { null, 1, 1, 2, 1, 16, 1, 0.5, 0 },
        { [64, 17], 1, 0, 6, 3, 128, 5, 0, 2 },
        { null, 1, 37, 4, 1, 256, 4, 0.25, 0 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void OneLayerHeadPruningEqualsFloat64Definition(int[]? lens, int b, int t, int h, int hkv, int d, int sample, double headKeep, int headCount)
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1811 + h * 7 + d), b, t, h, hkv, d, lens);
        var options = new SpAttenOptions
        {
            TokenKeep = 0.5,
            QuerySample = sample,
            HeadKeep = headKeep > 0 ? headKeep : null,
            HeadCount = headCount > 0 ? headCount : null,
        };
        SparsePlan plan = SpAtten.Plan(p.Input, p.V, p.Dv, options);
        SpAttenState state = SpAtten.StateOf(plan);
        var (o, lse) = p.Run(plan);

        double scale = 1 / Math.Sqrt(d);
        int sequences = lens?.Length ?? b;
        int prunedHeads = 0;
        for (int s = 0; s < sequences; s++)
        {
            int start = lens is null ? 0 : lens[..s].Sum(), length = lens?[s] ?? t, batch = lens is null ? s : 0;
            long Token(int i) => (long)batch * p.T + start + i;
            // The float64 definition: probabilities of the sampled rows over every (causal) token, per head.
            var tokenImportance = new double[length];
            var headMagnitude = new double[h];
            for (int r = 0; r < length; r++)
            {
                if (r % sample != 0 && r != length - 1) continue;
                for (int head = 0; head < h; head++)
                {
                    double[] prob = Softmax(p, Token(0), r, head, hkv, d, scale, _ => true);
                    var output = new double[d];
                    for (int k = 0; k <= r; k++)
                    {
                        tokenImportance[k] += prob[k];
                        for (int i = 0; i < d; i++) output[i] += prob[k] * p.V[(Token(k) * hkv + head / (h / hkv)) * d + i];
                    }
                    headMagnitude[head] += output.Sum(Math.Abs);
                }
            }
            int keepTokens = Math.Max(length == 0 ? 0 : 1, (int)Math.Ceiling(0.5 * length));
            int keepHeads = headCount > 0 ? headCount : Math.Max(1, (int)Math.Ceiling(headKeep * h));
            bool[] expectedTokens = TopByImportance(tokenImportance, keepTokens);
            bool[] expectedHeads = TopByImportance(headMagnitude, keepHeads);
            Assert.Equal(expectedHeads, state.SequenceKeptHeads[s]);
            Assert.Equal(expectedTokens, state.KeptTokens[s]);
            prunedHeads += h - keepHeads;

            // Kept heads: exact attention over the kept tokens (causal); pruned heads: output 0, LSE −∞.
            var expected = new double[length * h * d];
            for (int r = 0; r < length; r++)
                for (int head = 0; head < h; head++)
                {
                    long row = Token(r) * h + head;
                    long lseAt = ((long)batch * h + head) * p.T + start + r;
                    if (!expectedHeads[head])
                    {
                        for (int i = 0; i < d; i++) Assert.Equal(0f, o[row * d + i]);
                        Assert.Equal(float.NegativeInfinity, lse[lseAt]);
                        continue;
                    }
                    double[] prob = Softmax(p, Token(0), r, head, hkv, d, scale, k => expectedTokens[k]);
                    for (int k = 0; k <= r; k++)
                        for (int i = 0; i < d; i++) expected[(r * h + head) * d + i] += prob[k] * p.V[(Token(k) * hkv + head / (h / hkv)) * d + i];
                }
            float[] actual = o.AsSpan((int)(Token(0) * h * d), length * h * d).ToArray();
            double err = TestData.RelativeError<float>(actual, expected);
            Assert.True(err < 2e-5, $"sequence {s}: error {err:E2} against the float64 definition; {p}");
        }
        Assert.True(prunedHeads > 0, $"no head was pruned; {p}");
    }

    [Fact]
    public void AdapterHeadKeepPrunesHeadsToZero()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1821), 1, 50, 4, 2, 32);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 50, 4, 32), new MethodTensor(p.K, 1, 50, 2, 32), new MethodTensor(p.V, 1, 50, 2, 32));
        foreach (string keep in (string[])["2", "0.5"])
        {
            MethodResult result = new SpAttenMethod().Run(inputs, MethodArguments.Parse(["head-keep=" + keep, "query-sample=2"]));
            var plan = SpAtten.Plan(p.Input, p.V, p.Dv, new SpAttenOptions { HeadCount = keep == "2" ? 2 : null, HeadKeep = keep == "2" ? null : 0.5, QuerySample = 2 });
            var (o, _) = p.Run(plan);
            Assert.Equal(o, result.Output.Data);
            int zeroHeads = 0;
            for (int head = 0; head < 4; head++)
            {
                bool zero = true;
                for (int r = 0; r < 50; r++)
                    for (int i = 0; i < 32; i++) zero &= result.Output.Data[(r * 4 + head) * 32 + i] == 0;
                zeroHeads += zero ? 1 : 0;
            }
            Assert.Equal(2, zeroHeads);
            Assert.Contains(result.Report, e => e.Key == "kept heads");
        }
        // Without head-keep every head is kept (token pruning only).
        MethodResult all = new SpAttenMethod().Run(inputs, MethodArguments.Empty);
        Assert.Equal("0,1,2,3", all.Report.Single(e => e.Key == "kept heads").Value);
    }

    [Fact]
    public void BadHeadParametersNameTheParameter()
    {
        RoutingProblem p = RoutingProblem.Random(TestData.Rng(1822), 1, 30, 4, 2, 16);
        var inputs = new MethodInputs(new MethodTensor(p.Q, 1, 30, 4, 16), new MethodTensor(p.K, 1, 30, 2, 16), new MethodTensor(p.V, 1, 30, 2, 16));
        foreach (string bad in (string[])["0", "1.5", "5", "-2", "half"])
            Assert.Equal("head-keep", Assert.Throws<ArgumentException>(() => new SpAttenMethod().Run(inputs, MethodArguments.Parse(["head-keep=" + bad]))).ParamName);
        Assert.Equal("HeadCount", Assert.Throws<ArgumentOutOfRangeException>(() => SpAtten.Plan(p.Input, p.V, p.Dv, new() { HeadCount = 5 })).ParamName);
        Assert.Equal("values", Assert.Throws<ArgumentException>(() => SpAtten.Plan(p.Input, new SpAttenOptions { HeadKeep = 0.5 })).ParamName);
        Assert.Equal("values", Assert.Throws<ArgumentException>(() => SpAtten.Plan(p.Input, new float[7], p.Dv)).ParamName);
    }

    // Softmax of row r (causal: keys 0..r) of one head over the keys `keep` allows, in float64.
    private static double[] Softmax(RoutingProblem p, long first, int r, int head, int hkv, int d, double scale, Func<int, bool> keep)
    {
        int h = p.H;
        var logits = new double[r + 1];
        double max = double.NegativeInfinity;
        for (int k = 0; k <= r; k++)
        {
            if (!keep(k)) { logits[k] = double.NegativeInfinity; continue; }
            double dot = 0;
            for (int i = 0; i < d; i++) dot += (double)p.Q[((first + r) * h + head) * d + i] * p.K[((first + k) * hkv + head / (h / hkv)) * d + i];
            logits[k] = dot * scale;
            max = Math.Max(max, logits[k]);
        }
        double z = 0;
        for (int k = 0; k <= r; k++) z += double.IsNegativeInfinity(logits[k]) ? 0 : Math.Exp(logits[k] - max);
        var prob = new double[r + 1];
        for (int k = 0; k <= r; k++) prob[k] = double.IsNegativeInfinity(logits[k]) ? 0 : Math.Exp(logits[k] - max) / z;
        return prob;
    }

    // The `count` largest entries (ties to the lower index).
    private static bool[] TopByImportance(double[] importance, int count)
    {
        var kept = new bool[importance.Length];
        foreach (int i in Enumerable.Range(0, importance.Length).OrderByDescending(i => importance[i]).ThenBy(i => i).Take(count)) kept[i] = true;
        return kept;
    }
}
