using Attend.Linear;
using Attend.Methods;
using Attend.Methods.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>Every linear method: naive = chunked = recurrent, final states, decode continuation, varlen and GQA.</summary>
public class LinearMethodTests
{
    public static TheoryData<string> Names
    {
        get
        {
            var data = new TheoryData<string>();
            foreach (IAttentionMethod m in LinearMethods.All) data.Add(m.Info.Name);
            return data;
        }
    }

    private static IAttentionMethod Method(string name) => MethodCatalog.FindRunnable(name) ?? throw new InvalidOperationException(name);

    /// <summary>Inputs for <paramref name="name"/>: q/k/v and whatever gates, β or weights the method reads.</summary>
    internal static MethodInputs InputsFor(string name, Random rng, int b, int t, int h, int hkv, int d, SeqOffsets? offsets = null, string regime = "mid")
    {
        if (name == "based") d = Math.Min(d, 8);
        float[] q = TestData.Gaussian<float>(rng, (long)b * t * h * d, 0.5), k = TestData.Gaussian<float>(rng, (long)b * t * hkv * d, 0.5);
        float[] v = TestData.Gaussian<float>(rng, (long)b * t * hkv * d);
        var inputs = new MethodInputs(new MethodTensor(q, b, t, h, d), new MethodTensor(k, b, t, hkv, d), new MethodTensor(v, b, t, hkv, d)) { Offsets = offsets };
        float Gate() => regime switch
        {
            "zero" => (float)(-20 - 10 * rng.NextDouble()),
            "one" => (float)(-1e-4 * rng.NextDouble()),
            _ => (float)Math.Log(0.8 + 0.2 * rng.NextDouble()),
        };
        if (name is "gla" or "kda")
            inputs.Add("g", new MethodTensor(Fill((long)b * t * h * d, Gate), b, t, h, d));
        if (name is "gated-deltanet")
            inputs.Add("g", new MethodTensor(Fill((long)b * t * h, Gate), b, t, h));
        if (name is "deltanet" or "gated-deltanet" or "kda")
            inputs.Add("beta", new MethodTensor(Fill((long)b * t * h, () => (float)(0.1 + 0.9 * rng.NextDouble())), b, t, h));
        if (name is "hedgehog")
        {
            // A perturbed identity so the map is not trivial; F = Dk.
            float[] w = new float[h * d * d];
            for (int x = 0; x < h; x++)
                for (int i = 0; i < d; i++)
                    for (int j = 0; j < d; j++) w[(x * d + i) * d + j] = (i == j ? 1f : 0f) + (float)(0.1 * (rng.NextDouble() - 0.5));
            inputs.Add("w", new MethodTensor(w, h, d, d));
        }
        return inputs;
    }

    private static float[] Fill(long n, Func<float> f)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = f();
        return a;
    }

    private static MethodResult Run(string name, MethodInputs inputs, string form, int chunk = 16, params string[] extra) =>
        Method(name).Run(inputs, MethodArguments.Parse([$"form={form}", $"chunk={chunk}", .. extra]));

    private static double Err(float[] a, float[] expected) => TestData.RelativeError<float>(a, Array.ConvertAll(expected, x => (double)x));

    [Theory]
    [MemberData(nameof(Names))]
    public void FormsAgreeAndReturnTheState(string name)
    {
        Random rng = TestData.Rng(name.Length * 97 + name[0]);
        // Plus one draw per run seed: an odd length that is not a multiple of its chunk, a head dim and a GQA ratio.
        int randomChunk = new[] { 3, 8, 16, 32 }[rng.Next(4)], randomT = 2 * rng.Next(1, 48) + 1;
        if (randomT % randomChunk == 0) randomT += 2;
        int randomHkv = 1 + rng.Next(2), randomD = new[] { 8, 12, 24 }[rng.Next(3)];
        foreach ((int t, int h, int hkv, int d, int chunk) in new[] { (1, 2, 1, 16, 16), (37, 4, 2, 32, 16), (50, 2, 2, 20, 32), (7, 2, 1, 128, 4), (randomT, 2 * randomHkv * (1 + rng.Next(2)), randomHkv, randomD, randomChunk) })
        {
            MethodInputs inputs = InputsFor(name, rng, 2, t, h, hkv, d);
            MethodResult naive = Run(name, inputs, "naive", chunk), chunked = Run(name, inputs, "chunked", chunk), recurrent = Run(name, inputs, "recurrent", chunk);
            string where = $"{name} T{t} H{h}/{hkv} D{d} chunk {chunk} seed {TestData.RunSeed}";
            Assert.True(Err(chunked.Output.Data, naive.Output.Data) < 2e-4, $"chunked vs naive output {Err(chunked.Output.Data, naive.Output.Data):E2}, {where}");
            Assert.True(Err(recurrent.Output.Data, naive.Output.Data) < 2e-4, $"recurrent vs naive output, {where}");
            if (!naive.Extras.ContainsKey("state")) continue; // TransNormer's DiagAttention has none
            Assert.True(Err(chunked.Extras["state"].Data, naive.Extras["state"].Data) < 2e-4, $"chunked state, {where}");
            Assert.True(Err(recurrent.Extras["state"].Data, naive.Extras["state"].Data) < 2e-4, $"recurrent state, {where}");
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void DecodeStepsContinueAChunkedPrefill(string name)
    {
        Random rng = TestData.Rng(name.Length * 7 + 3);
        const int total = 41, prefix = 30;
        MethodInputs whole = InputsFor(name, rng, 1, total, 2, 2, 16);
        MethodResult reference = Run(name, whole, "chunked");
        if (!reference.Extras.ContainsKey("state")) return;
        MethodTensor state = Run(name, Slice(whole, 0, prefix), "chunked").Extras["state"];
        int dv = whole.V.Dim(3), h = whole.Q.Dim(2);
        for (int t = prefix; t < total; t++)
        {
            MethodInputs step = Slice(whole, t, 1);
            step.Add("state", state);
            MethodResult r = Run(name, step, "recurrent");
            float[] expected = reference.Output.Data.AsSpan(t * h * dv, h * dv).ToArray();
            Assert.True(Err(r.Output.Data, expected) < 2e-4, $"{name} decode token {t}: {Err(r.Output.Data, expected):E2}, seed {TestData.RunSeed}");
            state = r.Extras["state"];
        }
        Assert.True(Err(state.Data, reference.Extras["state"].Data) < 2e-4, $"{name} final state after decode, seed {TestData.RunSeed}");
        // The whole rest as one recurrent call from the prefix's state gives the same rows and state.
        MethodInputs rest = Slice(whole, prefix, total - prefix);
        rest.Add("state", Run(name, Slice(whole, 0, prefix), "chunked").Extras["state"]);
        MethodResult restRun = Run(name, rest, "recurrent");
        float[] expectedRest = reference.Output.Data.AsSpan(prefix * h * dv).ToArray();
        Assert.True(Err(restRun.Output.Data, expectedRest) < 2e-4, $"{name} rest in one recurrent call: {Err(restRun.Output.Data, expectedRest):E2}, seed {TestData.RunSeed}");
        Assert.True(Err(restRun.Extras["state"].Data, reference.Extras["state"].Data) < 2e-4, $"{name} state after the recurrent rest, seed {TestData.RunSeed}");
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void VarlenMatchesNaiveWithGatesAtTheExtremes(string name)
    {
        Random rng = TestData.Rng(name.Length * 13 + name[^1]);
        // An empty, a 1-token, a random odd and a longer sequence (the chunk is 16).
        var offsets = SeqOffsets.FromLengths([9, 0, 1, 2 * rng.Next(1, 12) + 1, 33]);
        foreach (string regime in new[] { "zero", "one" })
        {
            MethodInputs inputs = InputsFor(name, rng, 1, offsets.TotalTokens, 2, 1, 16, offsets, regime);
            // A per-sequence initial state that the method produced itself (a short varlen prefix), so every sequence carries its own.
            MethodInputs prefix = InputsFor(name, rng, 1, 15, 2, 1, 16, SeqOffsets.FromLengths([3, 2, 1, 4, 5]), regime);
            inputs.Add("state", Run(name, prefix, "chunked").Extras["state"]);
            MethodResult naive = Run(name, inputs, "naive");
            Assert.Equal(5, naive.Extras["state"].Dim(0));
            foreach (string form in new[] { "chunked", "recurrent" })
            {
                MethodResult r = Run(name, inputs, form);
                Assert.True(Err(r.Output.Data, naive.Output.Data) < 2e-4, $"{name} {form} {regime} varlen, seed {TestData.RunSeed}");
                Assert.True(Err(r.Extras["state"].Data, naive.Extras["state"].Data) < 2e-4, $"{name} {form} {regime} varlen state, seed {TestData.RunSeed}");
            }
            // Each sequence alone (B = 1, its own initial state) gives the same output rows and final state.
            MethodTensor states = inputs.Find("state")!;
            int per = (int)(states.Data.LongLength / 5), rowWidth = 2 * inputs.V.Dim(3);
            for (int n = 0; n < offsets.Count; n++)
            {
                int start = offsets.Start(n), len = offsets.Length(n);
                if (len == 0)
                {
                    Assert.Equal(states.Data.AsSpan(n * per, per).ToArray(), naive.Extras["state"].Data.AsSpan(n * per, per).ToArray());
                    continue;
                }
                MethodInputs one = Slice(inputs, start, len);
                one.Add("state", new MethodTensor(states.Data.AsSpan(n * per, per).ToArray(), [1, .. states.Shape.Skip(1)]));
                MethodResult alone = Run(name, one, "naive");
                Assert.True(Err(alone.Output.Data, naive.Output.Data.AsSpan(start * rowWidth, len * rowWidth).ToArray()) < 1e-6, $"{name} sequence {n} alone, seed {TestData.RunSeed}");
                Assert.True(Err(alone.Extras["state"].Data, naive.Extras["state"].Data.AsSpan(n * per, per).ToArray()) < 1e-6, $"{name} sequence {n} state alone, seed {TestData.RunSeed}");
            }
        }
    }

    /// <summary>
    /// 64k tokens through every method's adapter with its gates at the extremes (α ≈ e^-25 and α ≈ 1 − 1e-4; RetNet's γ
    /// at 1e-30 and 1), q and k of size ~3: chunked and recurrent outputs and states stay finite and agree at the end.
    /// </summary>
    [Theory]
    [MemberData(nameof(Names))]
    public void SixtyFourThousandTokensStayFiniteWithGatesAtTheirExtremes(string name)
    {
        const int t = 65536, d = 8;
        Random rng = TestData.Rng(name.Length * 17 + 5);
        foreach (string regime in new[] { "zero", "one" })
        {
            MethodInputs inputs = InputsFor(name, rng, 1, t, 1, 1, d, regime: regime);
            foreach (float[] x in new[] { inputs.Q.Data, inputs.K.Data })
                for (int i = 0; i < x.Length; i++) x[i] *= 6;
            string[] extra = name == "retnet" ? [regime == "zero" ? "gamma=1e-30" : "gamma=1"] : [];
            MethodResult chunked = Run(name, inputs, "chunked", 64, extra), recurrent = Run(name, inputs, "recurrent", 64, extra);
            foreach ((string what, MethodResult r) in new[] { ("chunked", chunked), ("recurrent", recurrent) })
            {
                Assert.True(Array.TrueForAll(r.Output.Data, float.IsFinite), $"{name} {regime} {what} output not finite, seed {TestData.RunSeed}");
                Assert.True(Array.TrueForAll(r.Extras["state"].Data, float.IsFinite), $"{name} {regime} {what} state not finite, seed {TestData.RunSeed}");
            }
            int tail = 256 * chunked.Output.Dim(3);
            double e = Err(chunked.Output.Data[^tail..], recurrent.Output.Data[^tail..]);
            Assert.True(e < 1e-3, $"{name} {regime}: chunked vs recurrent over the last 256 tokens {e:E2}, seed {TestData.RunSeed}");
            Assert.True(Err(chunked.Extras["state"].Data, recurrent.Extras["state"].Data) < 1e-3, $"{name} {regime}: final states, seed {TestData.RunSeed}");
        }
    }

    internal static MethodInputs Slice(MethodInputs all, int start, int len)
    {
        MethodTensor Cut(MethodTensor x)
        {
            int per = (int)(x.Data.LongLength / x.Dim(1));
            int[] shape = [.. x.Shape];
            shape[1] = len;
            return new MethodTensor(x.Data.AsSpan(start * per, len * per).ToArray(), shape);
        }
        var r = new MethodInputs(Cut(all.Q), Cut(all.K), Cut(all.V));
        foreach (string n in all.Names)
        {
            if (n is "q" or "k" or "v" or "state") continue;
            MethodTensor x = all.Find(n)!;
            r.Add(n, n is "w" or "b" ? x : Cut(x));
        }
        return r;
    }

    [Fact]
    public void TransNormerDiagAttentionIsBlockDiagonalSoftmax()
    {
        Random rng = TestData.Rng(71);
        MethodInputs inputs = InputsFor("transnormer", rng, 1, 45, 2, 2, 16);
        MethodResult diag = Run("transnormer", inputs, "chunked", 16, "attention=diag", "block=16");
        // The reference: each block of 16 alone under a causal softmax.
        for (int start = 0; start < 45; start += 16)
        {
            int len = Math.Min(16, 45 - start);
            MethodInputs part = Slice(inputs, start, len);
            MethodResult exact = Method("exact").Run(part, MethodArguments.Parse(["mask=causal"]));
            float[] got = diag.Output.Data.AsSpan(start * 2 * 16, len * 2 * 16).ToArray();
            Assert.True(Err(got, exact.Output.Data) < 1e-5, $"block at {start}, seed {TestData.RunSeed}");
        }
    }

    [Fact]
    public void BasedWindowBranchIsSlidingWindowSoftmax()
    {
        Random rng = TestData.Rng(73);
        MethodInputs inputs = InputsFor("based", rng, 1, 40, 2, 2, 8);
        MethodResult r = Run("based", inputs, "chunked", 16, "window=8");
        MethodResult exact = Method("exact").Run(inputs, MethodArguments.Parse(["mask=window:7,0"]));
        Assert.Equal(exact.Output.Data, r.Extras["window"].Data);
        MethodResult sum = Run("based", inputs, "chunked", 16, "window=8", "combine=sum");
        float[] expected = new float[sum.Output.Data.Length];
        for (int i = 0; i < expected.Length; i++) expected[i] = r.Output.Data[i] + exact.Output.Data[i];
        Assert.True(Err(sum.Output.Data, expected) < 1e-6);
    }

    /// <summary>
    /// Based with its window branch summed in: a prefix run followed by decode steps (each carrying the linear state and
    /// the window's last W − 1 keys and values) equals the whole run, output, state and window state; so does a varlen
    /// batch split in two calls (sequences shorter than the window, and ones with nothing left for the second call).
    /// </summary>
    [Fact]
    public void BasedDecodeStepsCarryTheWindowAndEqualTheWholeRun()
    {
        Random rng = TestData.Rng(74);
        const int total = 29, prefix = 10, h = 2, d = 8;
        string[] args = ["window=8", "combine=sum"];
        MethodInputs whole = InputsFor("based", rng, 2, total, h, 1, d);
        MethodResult reference = Run("based", whole, "chunked", 16, args);
        Assert.Equal([2, 7, 1, 2 * d + 1], reference.Extras[BasedMethod.WindowStateName].Shape.ToArray());
        MethodResult head = Run("based", Tokens(whole, 0, prefix), "chunked", 16, args);
        MethodTensor state = head.Extras["state"], window = head.Extras[BasedMethod.WindowStateName];
        for (int t = prefix; t < total; t++)
        {
            MethodInputs step = Tokens(whole, t, 1);
            step.Add("state", state);
            step.Add(BasedMethod.WindowStateName, window);
            MethodResult r = Run("based", step, "recurrent", 16, args);
            for (int b = 0; b < 2; b++)
            {
                float[] expected = reference.Output.Data.AsSpan((b * total + t) * h * d, h * d).ToArray();
                float[] got = r.Output.Data.AsSpan(b * h * d, h * d).ToArray();
                Assert.True(Err(got, expected) < 2e-4, $"based decode token {t} batch {b}: {Err(got, expected):E2}, seed {TestData.RunSeed}");
            }
            (state, window) = (r.Extras["state"], r.Extras[BasedMethod.WindowStateName]);
        }
        Assert.True(Err(state.Data, reference.Extras["state"].Data) < 2e-4, $"based final state after decode, seed {TestData.RunSeed}");
        Assert.Equal(reference.Extras[BasedMethod.WindowStateName].Data, window.Data);
        // Without the window state a decode step's window sees its own token only: the output differs.
        MethodInputs bare = Tokens(whole, total - 1, 1);
        bare.Add("state", head.Extras["state"]);
        Assert.True(Err(Run("based", bare, "recurrent", 16, args).Output.Data, reference.Output.Data.AsSpan((total - 1) * h * d, h * d).ToArray()) > 1e-3);

        // Varlen: lengths 3, 12, 1, 20 split after 5 tokens of each (or all of a shorter one).
        int[] lengths = [3, 12, 1, 20];
        var offsets = SeqOffsets.FromLengths(lengths);
        MethodInputs packed = InputsFor("based", rng, 1, offsets.TotalTokens, h, 1, d, offsets);
        MethodResult all = Run("based", packed, "chunked", 4, args);
        int[] first = lengths.Select(l => Math.Min(l, 5)).ToArray(), rest = lengths.Select(l => l - Math.Min(l, 5)).ToArray();
        MethodInputs part1 = Pick(packed, offsets, first, 0), part2 = Pick(packed, offsets, rest, 5);
        MethodResult r1 = Run("based", part1, "chunked", 4, args);
        part2.Add("state", r1.Extras["state"]);
        part2.Add(BasedMethod.WindowStateName, r1.Extras[BasedMethod.WindowStateName]);
        MethodResult r2 = Run("based", part2, "recurrent", 4, args);
        var joined = new List<float>();
        int row = h * d, at1 = 0, at2 = 0;
        for (int n = 0; n < lengths.Length; n++)
        {
            joined.AddRange(r1.Output.Data.AsSpan(at1 * row, first[n] * row).ToArray());
            joined.AddRange(r2.Output.Data.AsSpan(at2 * row, rest[n] * row).ToArray());
            at1 += first[n]; at2 += rest[n];
        }
        Assert.True(Err([.. joined], all.Output.Data) < 2e-4, $"based varlen split, seed {TestData.RunSeed}");
        Assert.True(Err(r2.Extras["state"].Data, all.Extras["state"].Data) < 2e-4, $"based varlen state, seed {TestData.RunSeed}");
        Assert.Equal(all.Extras[BasedMethod.WindowStateName].Data, r2.Extras[BasedMethod.WindowStateName].Data);

        // A window state of the wrong shape, with a flag that is not 0/1, or with an empty slot after a filled one, or for W = 1.
        MethodTensor good = head.Extras[BasedMethod.WindowStateName];
        foreach (MethodTensor bad in new[]
                 {
                     new MethodTensor(new float[2 * 6 * (2 * d + 1)], 2, 6, 1, 2 * d + 1),
                     Flagged(good, 3, 0.5f), Flagged(good, good.Dim(1) - 1, 0f),
                 })
        {
            MethodInputs x = Tokens(whole, prefix, 1);
            x.Add(BasedMethod.WindowStateName, bad);
            var e = Assert.ThrowsAny<ArgumentException>(() => Run("based", x, "recurrent", 16, args));
            Assert.Equal(BasedMethod.WindowStateName, e.ParamName);
        }
        MethodInputs w1 = Tokens(whole, prefix, 1);
        w1.Add(BasedMethod.WindowStateName, good);
        Assert.Equal(BasedMethod.WindowStateName, Assert.ThrowsAny<ArgumentException>(() => Run("based", w1, "recurrent", 16, "window=1")).ParamName);
    }

    // q, k, v tokens [start, start + len) of every batch row (no other inputs).
    private static MethodInputs Tokens(MethodInputs all, int start, int len)
    {
        MethodTensor Cut(MethodTensor x)
        {
            int b = x.Dim(0), t = x.Dim(1), per = x.Dim(2) * x.Dim(3);
            var data = new float[b * len * per];
            for (int i = 0; i < b; i++) Array.Copy(x.Data, (i * t + start) * per, data, i * len * per, len * per);
            return new MethodTensor(data, b, len, x.Dim(2), x.Dim(3));
        }
        return new MethodInputs(Cut(all.Q), Cut(all.K), Cut(all.V));
    }

    // A varlen batch of tokens [skip, skip + counts[n]) of each sequence n.
    private static MethodInputs Pick(MethodInputs all, SeqOffsets offsets, int[] counts, int skip)
    {
        MethodTensor Cut(MethodTensor x)
        {
            int per = x.Dim(2) * x.Dim(3);
            var data = new List<float>();
            for (int n = 0; n < counts.Length; n++)
                data.AddRange(x.Data.AsSpan((offsets.Start(n) + Math.Min(skip, offsets.Length(n))) * per, counts[n] * per).ToArray());
            return new MethodTensor([.. data], 1, counts.Sum(), x.Dim(2), x.Dim(3));
        }
        return new MethodInputs(Cut(all.Q), Cut(all.K), Cut(all.V)) { Offsets = SeqOffsets.FromLengths(counts) };
    }

    private static MethodTensor Flagged(MethodTensor cache, int slot, float flag)
    {
        float[] data = (float[])cache.Data.Clone();
        int width = cache.Dim(3);
        for (int b = 0; b < cache.Dim(0); b++) data[((b * cache.Dim(1) + slot) * cache.Dim(2)) * width + width - 1] = flag;
        return new MethodTensor(data, [.. cache.Shape]);
    }

    [Fact]
    public void HedgehogDistillationGradientMatchesFiniteDifferencesAndLowersTheLoss()
    {
        Random rng = TestData.Rng(79);
        var shape = new LinearShape(1, 12, 2, 1, 4, 4);
        float[] q = TestData.Gaussian<float>(rng, 12 * 2 * 4), k = TestData.Gaussian<float>(rng, 12 * 1 * 4);
        var w = new HedgehogWeights(2, 4, 4, TestData.Gaussian<float>(rng, 2 * 4 * 4, 0.5), TestData.Gaussian<float>(rng, 2 * 4, 0.1));
        var dW = new double[w.W.Length];
        var dB = new double[w.B.Length];
        HedgehogDistillation.Loss(q, k, shape, w, dW, dB);
        foreach ((double[] p, double[] g) in new[] { (w.W, dW), (w.B, dB) })
            for (int i = 0; i < p.Length; i += 3)
            {
                double keep = p[i], step = 1e-5;
                p[i] = keep + step; double up = HedgehogDistillation.Loss(q, k, shape, w, null, null);
                p[i] = keep - step; double down = HedgehogDistillation.Loss(q, k, shape, w, null, null);
                p[i] = keep;
                Assert.True(Math.Abs((up - down) / (2 * step) - g[i]) < 1e-6 * Math.Max(1, Math.Abs(g[i])), $"gradient {i}: fd {(up - down) / (2 * step)} vs {g[i]}");
            }
        double[] losses = HedgehogDistillation.Train(q, k, shape, w, 100, 0.5);
        Assert.True(losses[0] > 0 && losses[^1] < 0.7 * losses[0], $"distillation KL {losses[0]:F4} -> {losses[^1]:F4}");
    }

    [Fact]
    public void NormAwareMapGradientsMatchTheReference()
    {
        // The map's Backward enters the engine's and the reference's gradients; check it against finite differences.
        var map = new NormAwareMap(2f);
        Random rng = TestData.Rng(83);
        double[] x = Array.ConvertAll(TestData.Gaussian<float>(rng, 6), v => (double)v);
        double[] dy = Array.ConvertAll(TestData.Gaussian<float>(rng, 12), v => (double)v);
        var dx = new double[6];
        map.Backward<double>(0, false, x, dy, dx);
        var y = new double[12];
        for (int i = 0; i < 6; i++)
        {
            double keep = x[i], step = 1e-6;
            x[i] = keep + step; map.Apply<double>(0, false, x, y); double up = Dot(y, dy);
            x[i] = keep - step; map.Apply<double>(0, false, x, y); double down = Dot(y, dy);
            x[i] = keep;
            Assert.True(Math.Abs((up - down) / (2 * step) - dx[i]) < 1e-6, $"dx[{i}]");
        }
        // φ is non-negative and unit-norm; a larger norm makes it spikier (lower entropy of φ²).
        double[] small = x.Select(v => v * 0.1).ToArray(), large = x.Select(v => v * 10).ToArray();
        var ys = new double[12]; var yl = new double[12];
        map.Apply<double>(0, false, small, ys); map.Apply<double>(0, false, large, yl);
        Assert.All(ys, v => Assert.True(v >= 0));
        Assert.Equal(1.0, Dot(ys, ys), 9);
        Assert.True(Entropy(yl) < Entropy(ys));
    }

    private static double Dot(double[] a, double[] b) => a.Zip(b, (p, q) => p * q).Sum();

    private static double Entropy(double[] y) => -y.Where(v => v > 0).Sum(v => v * v * Math.Log(v * v));

    [Theory]
    [InlineData("nalaformer")]
    [InlineData("hedgehog")]
    public void LearnedAndNormAwareMapsBackpropagateThroughTheEngine(string name)
    {
        Random rng = TestData.Rng(89);
        MethodInputs m = InputsFor(name, rng, 1, 11, 2, 1, 6);
        FeatureMap map = name == "nalaformer" ? new NormAwareMap(2f) : new HedgehogFeatureMap(new HedgehogWeights(2, 6, 6, m.Find("w")!.Data));
        var options = new LinearAttentionOptions { FeatureMap = map, Normalization = LinearNormalization.Denominator, ChunkSize = 4 };
        var inputs = new LinearInputs { Shape = new LinearShape(1, 11, 2, 1, 6, 6), Q = m.Q.Data, K = m.K.Data, V = m.V.Data };
        float[] dO = TestData.Gaussian<float>(rng, 11 * 2 * 6);
        ReferenceLinearGradients r = ReferenceLinearAttention.Backward(inputs, options, dO, default);
        float[] dq = new float[m.Q.Data.Length], dk = new float[m.K.Data.Length];
        LinearAttention.Backward(inputs, options, dO, default, new LinearGradients { Q = dq, K = dk });
        Assert.True(TestData.RelativeError<float>(dq, r.Q) < 1e-4, $"dq, seed {TestData.RunSeed}");
        Assert.True(TestData.RelativeError<float>(dk, r.K) < 1e-4, $"dk, seed {TestData.RunSeed}");
    }

    [Fact]
    public void MethodParametersAreCheckedAndNamed()
    {
        Random rng = TestData.Rng(97);
        MethodInputs inputs = InputsFor("gla", rng, 1, 8, 2, 2, 16);
        var e = Assert.Throws<ArgumentException>(() => Run("gla", inputs, "sideways"));
        Assert.Equal("form", e.ParamName);
        var gamma = Assert.Throws<ArgumentException>(() => Run("retnet", inputs, "chunked", 16, "gamma=-0.5"));
        Assert.Equal("gamma", gamma.ParamName);
        MethodInputs noGate = InputsFor("retnet", rng, 1, 8, 2, 2, 16);
        var g = Assert.Throws<ArgumentException>(() => Run("gla", noGate, "chunked"));
        Assert.Equal("g", g.ParamName);
        noGate.Add("state", new MethodTensor(new float[7], 7));
        var s = Assert.Throws<ArgumentException>(() => Run("retnet", noGate, "chunked"));
        Assert.Equal("state", s.ParamName);
    }

    /// <summary>
    /// Each method's own bad parameters and inputs are refused with an exception naming the parameter or input: a log gate
    /// above 0 (a decay above 1) or NaN, β outside [0, 2] or NaN, a Hedgehog map or initial state of the wrong width, a
    /// negative λ, out-of-range layers and chunks, Based's Dk above 64, DiagAttention on a varlen batch.
    /// </summary>
    [Theory]
    [MemberData(nameof(Names))]
    public void EachMethodRefusesItsBadParametersByName(string name)
    {
        Random rng = TestData.Rng(TestData.Salt(name) & 0xfff);
        MethodInputs Fresh() => InputsFor(name, rng, 1, 9, 2, 1, 8);
        void Refused(string expected, MethodInputs inputs, params string[] args)
        {
            var e = Assert.ThrowsAny<ArgumentException>(() => Method(name).Run(inputs, MethodArguments.Parse(args)));
            Assert.True(e.ParamName == expected, $"{name} {string.Join(' ', args)}: ParamName '{e.ParamName}', expected '{expected}': {e.Message}");
        }

        Refused("chunk", Fresh(), "chunk=0");
        Refused("form", Fresh(), "form=sideways");
        Refused("nonsense", Fresh(), "nonsense=1");
        // An initial state one feature row short: the width of the feature map (2F, 1 + d + d², …) decides its size.
        MethodInputs wrongState = Fresh();
        MethodTensor good = Run(name, Fresh(), "chunked").Extras["state"];
        wrongState.Add("state", new MethodTensor(new float[good.Dim(0) * good.Dim(1) * (good.Dim(2) - 1) * good.Dim(3)], good.Dim(0), good.Dim(1), good.Dim(2) - 1, good.Dim(3)));
        Refused("state", wrongState);
        MethodInputs probe = Fresh();
        if (probe.Find("g") is not null)
        {
            foreach (float bad in new[] { 0.25f, float.NaN })
            {
                MethodInputs x = Fresh();
                x.Find("g")!.Data[3] = bad;
                Refused("g", x);
            }
            // A gate tensor one element short is named as the input too (the engine's length check calls it "gate").
            MethodInputs shortGate = Fresh();
            MethodTensor g = shortGate.Find("g")!;
            var shorter = new MethodInputs(shortGate.Q, shortGate.K, shortGate.V);
            if (shortGate.Find("beta") is { } beta) shorter.Add("beta", beta);
            shorter.Add("g", new MethodTensor(g.Data[..^1], g.Data.Length - 1));
            Refused("g", shorter);
        }
        if (probe.Find("beta") is not null)
        {
            foreach (float bad in new[] { -0.5f, 2.5f, float.NaN })
            {
                MethodInputs x = Fresh();
                x.Find("beta")!.Data[5] = bad;
                Refused("beta", x);
            }
        }
        switch (name)
        {
            case "retnet":
                Refused("gamma", Fresh(), "gamma=-0.5");
                Refused("gamma", Fresh(), "gamma=1.5");
                break;
            case "hedgehog":
                MethodInputs w = InputsFor("linear-attention", rng, 1, 9, 2, 1, 8);
                w.Add("w", new MethodTensor(new float[2 * 8 * 7], 2, 8, 7));
                Refused("w", w);
                MethodInputs b = Fresh();
                b.Add("b", new MethodTensor(new float[2 * 7], 2, 7));
                Refused("b", b);
                break;
            case "nalaformer":
                Refused("lambda", Fresh(), "lambda=-1");
                break;
            case "based":
                MethodInputs wide = InputsFor("linear-attention", rng, 1, 9, 2, 1, 72);
                Refused("q", wide);
                Refused("window", Fresh(), "window=-1");
                break;
            case "lightning-attention" or "lightning-attention-2" or "transnormerllm":
                Refused("layer", Fresh(), "layers=4", "layer=4");
                Refused("decay", Fresh(), "decay=fast");
                break;
            case "transnormer":
                MethodInputs varlen = InputsFor(name, rng, 1, 9, 2, 1, 8, SeqOffsets.FromLengths([4, 5]));
                Refused("attention", varlen, "attention=diag");
                Refused("block", Fresh(), "attention=diag", "block=0");
                break;
            case "linear-attention":
                Refused("map", Fresh(), "map=softmax");
                break;
        }
    }
}
