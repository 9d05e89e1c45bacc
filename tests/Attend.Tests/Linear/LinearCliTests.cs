using System.Text.Json;
using Attend.IO;
using Attend.Tests.Cli;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary><c>attend run --method</c> on the linear family (inputs by name, --form, --state-out) and <c>attend bench linear</c>.</summary>
public class LinearCliTests
{
    [Fact]
    public void RunWritesTheFinalStateAndDecodeContinuesFromIt()
    {
        using var dir = new TempDir();
        const int t = 21, h = 2, d = 16;
        Random rng = TestData.Rng(101);
        float[] q = TestData.Gaussian<float>(rng, t * h * d), k = TestData.Gaussian<float>(rng, t * h * d), v = TestData.Gaussian<float>(rng, t * h * d);
        float[] g = new float[t * h * d];
        for (int i = 0; i < g.Length; i++) g[i] = (float)Math.Log(0.7 + 0.3 * rng.NextDouble());
        void Write(string name, int tokens, int start, float[] data, int per) =>
            NpyFile.Write(dir.File(name), [1, tokens, h, per / h], data.AsSpan(start * per, tokens * per).ToArray());
        foreach ((string n, float[] x) in new[] { ("q", q), ("k", k), ("v", v), ("g", g) })
        {
            Write($"{n}.npy", t, 0, x, h * d);
            Write($"{n}20.npy", t - 1, 0, x, h * d);
            Write($"{n}1.npy", 1, t - 1, x, h * d);
        }
        string[] Io(string suffix) => ["--q", dir.File($"q{suffix}.npy"), "--k", dir.File($"k{suffix}.npy"), "--v", dir.File($"v{suffix}.npy"), "--input", $"g={dir.File($"g{suffix}.npy")}"];

        var (c1, _, e1) = CliHarness.Run(["run", "--method", "gla", .. Io(""), "--out", dir.File("o.npy"), "--state-out", dir.File("s.npy"), "--form", "chunked"]);
        Assert.True(c1 == 0, e1);
        var (c2, _, e2) = CliHarness.Run(["run", "--method", "gla", .. Io("20"), "--out", dir.File("o20.npy"), "--state-out", dir.File("s20.npy"), "--form", "chunked"]);
        Assert.True(c2 == 0, e2);
        var (c3, out3, e3) = CliHarness.Run(["run", "--method", "gla", .. Io("1"), "--input", $"state={dir.File("s20.npy")}", "--out", dir.File("o1.npy"), "--state-out", dir.File("s1.npy"), "--form", "recurrent"]);
        Assert.True(c3 == 0, e3);
        Assert.Contains("form: recurrent", out3);
        Assert.Equal([1, h, d, d], NpyFile.Read(dir.File("s.npy")).Shape);
        float[] whole = NpyFile.Read(dir.File("o.npy")).AsSingle(), last = NpyFile.Read(dir.File("o1.npy")).AsSingle();
        double e = TestData.RelativeError<float>(last, Array.ConvertAll(whole[^(h * d)..], x => (double)x));
        Assert.True(e < 1e-4, $"decode step vs whole run {e:E2}");
        double es = TestData.RelativeError<float>(NpyFile.Read(dir.File("s1.npy")).AsSingle(), Array.ConvertAll(NpyFile.Read(dir.File("s.npy")).AsSingle(), x => (double)x));
        Assert.True(es < 1e-4, $"state after decode vs whole run {es:E2}");
    }

    public static TheoryData<string> AllLinearMethods
    {
        get
        {
            var data = new TheoryData<string>();
            foreach (Attend.Methods.IAttentionMethod m in Attend.Methods.Linear.LinearMethods.All) data.Add(m.Info.Name);
            foreach (Attend.Methods.IAttentionMethod m in Attend.Methods.Linear.LinearExtraMethods.All) data.Add(m.Info.Name);
            return data;
        }
    }

    /// <summary>
    /// Every method of the family through <c>attend run --method NAME --form F --state-out</c> on .npy files, in each form
    /// its <c>form</c> parameter lists: the written output and final state equal the in-process naive (float64) form's;
    /// a method without a state refuses <c>--state-out</c> and writes nothing.
    /// </summary>
    [Theory]
    [MemberData(nameof(AllLinearMethods))]
    public void EveryMethodRunsFromTheCliInEachOfItsFormsWithItsState(string name)
    {
        using var dir = new TempDir();
        Random rng = TestData.Rng(TestData.Salt(name) & 0xffff);
        const int t = 11, h = 2, hkv = 1, d = 8;
        Attend.Methods.MethodInputs inputs = LinearMethodTests.InputsFor(name, rng, 1, t, h, hkv, d);
        var files = new List<string>();
        foreach (string n in inputs.Names)
        {
            Attend.Methods.MethodTensor x = inputs.Find(n)!;
            NpyFile.Write(dir.File(n + ".npy"), [.. x.Shape], x.Data);
            if (n is not ("q" or "k" or "v")) files.AddRange(["--input", $"{n}={dir.File(n + ".npy")}"]);
        }
        Attend.Methods.IAttentionMethod method = Attend.Methods.MethodCatalog.FindRunnable(name)!;
        string[] forms = method.Info.Parameters.Single(p => p.Name == "form").Type.Split('|');
        Assert.Contains("naive", forms);
        Assert.Contains("chunked", forms);
        Attend.Methods.MethodResult naive = method.Run(inputs, Attend.Methods.MethodArguments.Parse(["form=naive"]));
        bool stateful = naive.Extras.TryGetValue("state", out Attend.Methods.MethodTensor? naiveState);
        foreach (string form in forms)
        {
            string o = dir.File($"o-{form}.npy"), s = dir.File($"s-{form}.npy");
            string[] io = ["run", "--method", name, "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), .. files, "--form", form, "--out", o, "--state-out", s];
            var (code, output, err) = CliHarness.Run(io);
            if (!stateful)
            {
                Assert.Equal(Attend.Cli.AttendApp.UsageError, code);
                Assert.Contains("--state-out", err);
                Assert.False(File.Exists(o), $"{name} {form}: the output was written before --state-out was refused");
                (code, output, err) = CliHarness.Run(io[..^2]);
            }
            Assert.True(code == 0, $"{name} {form}: {err}{output}");
            double e = TestData.RelativeError<float>(NpyFile.Read(o).AsSingle(), Array.ConvertAll(naive.Output.Data, x => (double)x));
            Assert.True(e < 2e-4, $"{name} {form} output vs naive {e:E2}, seed {TestData.RunSeed}");
            if (!stateful) continue;
            NpyArray state = NpyFile.Read(s);
            Assert.Equal(naiveState!.Shape.ToArray(), state.Shape.ToArray());
            double es = TestData.RelativeError<float>(state.AsSingle(), Array.ConvertAll(naiveState.Data, x => (double)x));
            Assert.True(es < 2e-4, $"{name} {form} state vs naive {es:E2}, seed {TestData.RunSeed}");
        }
    }

    /// <summary>
    /// Based with its window branch summed in, decoded from the command line: the prefix run writes the linear state
    /// (<c>--state-out</c>) and the window's keys and values (<c>--extra-out window_state=…</c>), and the next token's
    /// run reads both (<c>--input</c>): its output and state equal the whole run's last row and state.
    /// </summary>
    [Fact]
    public void BasedDecodesFromTheCommandLineWithItsWindowState()
    {
        using var dir = new TempDir();
        const int t = 14, h = 2, d = 8;
        Random rng = TestData.Rng(105);
        foreach (string n in (string[])["q", "k", "v"])
        {
            float[] x = TestData.Gaussian<float>(rng, t * h * d, 0.5);
            NpyFile.Write(dir.File($"{n}.npy"), [1, t, h, d], x);
            NpyFile.Write(dir.File($"{n}-head.npy"), [1, t - 1, h, d], x[..((t - 1) * h * d)]);
            NpyFile.Write(dir.File($"{n}-last.npy"), [1, 1, h, d], x[((t - 1) * h * d)..]);
        }
        string[] Io(string suffix, string o) => ["run", "--method", "based", "--param", "window=4", "--param", "combine=sum",
            "--q", dir.File($"q{suffix}.npy"), "--k", dir.File($"k{suffix}.npy"), "--v", dir.File($"v{suffix}.npy"), "--out", dir.File(o)];
        var (c1, _, e1) = CliHarness.Run([.. Io("", "o.npy"), "--state-out", dir.File("s.npy")]);
        Assert.True(c1 == 0, e1);
        var (c2, _, e2) = CliHarness.Run([.. Io("-head", "o-head.npy"), "--state-out", dir.File("s-head.npy"), "--extra-out", $"window_state={dir.File("w-head.npy")}"]);
        Assert.True(c2 == 0, e2);
        Assert.Equal([1, 3, h, 2 * d + 1], NpyFile.Read(dir.File("w-head.npy")).Shape);
        var (c3, _, e3) = CliHarness.Run([.. Io("-last", "o-last.npy"), "--form", "recurrent", "--input", $"state={dir.File("s-head.npy")}",
            "--input", $"window_state={dir.File("w-head.npy")}", "--state-out", dir.File("s-last.npy")]);
        Assert.True(c3 == 0, e3);
        float[] whole = NpyFile.Read(dir.File("o.npy")).AsSingle(), last = NpyFile.Read(dir.File("o-last.npy")).AsSingle();
        double e = TestData.RelativeError<float>(last, Array.ConvertAll(whole[^(h * d)..], x => (double)x));
        Assert.True(e < 1e-4, $"decode step vs whole run {e:E2}");
        double es = TestData.RelativeError<float>(NpyFile.Read(dir.File("s-last.npy")).AsSingle(), Array.ConvertAll(NpyFile.Read(dir.File("s.npy")).AsSingle(), x => (double)x));
        Assert.True(es < 1e-4, $"state after decode vs whole run {es:E2}");
        // An extra result the method does not produce is refused before anything is written, and names what it does produce.
        var (c4, _, e4) = CliHarness.Run([.. Io("", "o-bad.npy"), "--extra-out", $"lse={dir.File("x.npy")}"]);
        Assert.Equal(Attend.Cli.AttendApp.UsageError, c4);
        Assert.Contains("window_state", e4);
        Assert.False(File.Exists(dir.File("o-bad.npy")));
    }

    /// <summary>
    /// <c>attend methods --json</c> lists every method issue 5 names, as family <c>linear</c> with status
    /// <c>implemented</c>, a <c>form</c> parameter with at least naive|chunked, every parameter with a default and a
    /// description, and names (in its summary or parameter descriptions) every input the method looks for.
    /// </summary>
    [Fact]
    public void MethodsListsEveryLinearMethodWithStatusParametersAndInputs()
    {
        string[] issue5 =
        [
            "linear-attention", "based", "hedgehog", "lightning-attention", "lightning-attention-2", "transnormer", "transnormerllm", "retnet",
            "gla", "deltanet", "gated-deltanet", "kda", "nalaformer", "aaren", "agent-attention", "local-linear-attention", "kernelized-rpe",
            "titans-memory", "gam",
        ];
        var (code, output, err) = CliHarness.Run("methods", "--json");
        Assert.True(code == 0, err);
        using JsonDocument doc = JsonDocument.Parse(output);
        foreach (string name in issue5)
        {
            JsonElement m = doc.RootElement.EnumerateArray().Single(x => x.GetProperty("name").GetString() == name);
            Assert.Equal("linear", m.GetProperty("family").GetString());
            Assert.Equal("implemented", m.GetProperty("status").GetString());
            JsonElement[] parameters = [.. m.GetProperty("parameters").EnumerateArray()];
            JsonElement form = parameters.Single(p => p.GetProperty("name").GetString() == "form");
            Assert.StartsWith("naive|chunked", form.GetProperty("type").GetString(), StringComparison.Ordinal);
            var text = new System.Text.StringBuilder(m.GetProperty("summary").GetString());
            foreach (JsonElement p in parameters)
            {
                Assert.False(string.IsNullOrWhiteSpace(p.GetProperty("default").GetString()), $"{name}: parameter {p.GetProperty("name")} has no default");
                Assert.False(string.IsNullOrWhiteSpace(p.GetProperty("description").GetString()), $"{name}: parameter {p.GetProperty("name")} has no description");
                text.Append(' ').Append(p.GetProperty("description").GetString());
            }
            // The inputs the method looks for: an unread input's error lists them.
            Attend.Methods.MethodInputs inputs = LinearMethodTests.InputsFor(name, TestData.Rng(106), 1, 9, 2, 1, 8);
            inputs.Add("zzz", new Attend.Methods.MethodTensor([0f], 1));
            Attend.Methods.MethodCatalog.FindRunnable(name)!.Run(inputs, Attend.Methods.MethodArguments.Parse(["form=naive"]));
            string looked = Assert.ThrowsAny<ArgumentException>(() => inputs.ThrowIfUnread(name)).Message;
            int at = looked.IndexOf("it looks for: ", StringComparison.Ordinal);
            Assert.True(at >= 0, looked);
            string list = looked[(at + "it looks for: ".Length)..];
            list = list[..list.IndexOf(')', StringComparison.Ordinal)];
            if (list.StartsWith("no inputs", StringComparison.Ordinal)) continue;
            foreach (string input in list.Split(", "))
            {
                // Named as an input: the word after "input"/"inputs" in the same parenthesis, whole (a bare substring
                // test passes for one-letter names such as g, w, b whatever the text says).
                var named = new System.Text.RegularExpressions.Regex($@"\binputs?\b[^)]*?(?<!\w){System.Text.RegularExpressions.Regex.Escape(input)}(?!\w)");
                Assert.True(named.IsMatch(text.ToString()), $"{name}: input '{input}' is not named by `attend methods`: {text}");
            }
        }
    }

    [Fact]
    public void MissingGateIsAUserError()
    {
        using var dir = new TempDir();
        Random rng = TestData.Rng(103);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, 5, 2, 8], TestData.Gaussian<float>(rng, 80));
        var (code, _, err) = CliHarness.Run(["run", "--method", "kda", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"), "--out", dir.File("o.npy")]);
        Assert.Equal(Attend.Cli.AttendApp.UsageError, code);
        Assert.Contains("'g'", err);
    }

    [Fact]
    public void MisspelledInputIsAUserErrorAndNothingIsWritten()
    {
        // deltanet reads "beta"; "betas" used to be ignored, giving the β = 1 output without a word.
        using var dir = new TempDir();
        Random rng = TestData.Rng(104);
        foreach (string name in (string[])["q", "k", "v"])
            NpyFile.Write(dir.File(name + ".npy"), [1, 5, 2, 8], TestData.Gaussian<float>(rng, 80));
        NpyFile.Write(dir.File("b.npy"), [1, 5, 2], TestData.Gaussian<float>(rng, 10));
        var (code, _, err) = CliHarness.Run(["run", "--method", "deltanet", "--q", dir.File("q.npy"), "--k", dir.File("k.npy"), "--v", dir.File("v.npy"),
            "--input", $"betas={dir.File("b.npy")}", "--out", dir.File("o.npy")]);
        Assert.Equal(Attend.Cli.AttendApp.UsageError, code);
        Assert.Contains("'betas'", err);
        Assert.Contains("beta", err);
        Assert.False(File.Exists(dir.File("o.npy")));
    }

    [Fact]
    public void BenchLinearQuickWritesRecordsForEveryLinearMethod()
    {
        using var dir = new TempDir();
        string path = dir.File("linear.json");
        var (code, output, err) = CliHarness.Run("bench", "linear", "--quick", "--json", path);
        Assert.True(code == 0, err + output);
        Assert.Contains("crossover", output);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement[] results = [.. doc.RootElement.GetProperty("results").EnumerateArray()];
        foreach (Attend.Methods.IAttentionMethod m in Attend.Methods.Linear.LinearMethods.All)
        {
            Assert.Contains(results, r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "chunked");
            Assert.Contains(results, r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "recurrent");
        }
        // The extra methods too: a chunked row each, a recurrent (decode) row with µs/token where the method has that form.
        foreach (Attend.Methods.IAttentionMethod m in Attend.Methods.Linear.LinearExtraMethods.All)
        {
            Assert.Contains(results, r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "chunked"
                && r.GetProperty("tokens_per_s").GetDouble() > 0 && r.GetProperty("max_rel_err").GetDouble() < 2e-4);
            // A FLOP count (so a peak fraction) where the method's work has a simple one (BenchLinearCommand.ExtraFlops).
            bool counted = m.Info.Name is "aaren" or "agent-attention" or "gam" or "local-linear-attention";
            Assert.All(results.Where(r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "chunked"),
                r => Assert.Equal(counted ? JsonValueKind.Number : JsonValueKind.Null, r.GetProperty("peak_fraction").ValueKind));
            bool recurrent = m.Info.Parameters.Single(p => p.Name == "form").Type.Split('|').Contains("recurrent");
            Assert.Equal(recurrent, results.Any(r => r.GetProperty("method").GetString() == m.Info.Name && r.GetProperty("form").GetString() == "recurrent"
                && r.GetProperty("us_per_token").ValueKind == JsonValueKind.Number));
        }
        foreach (JsonElement r in results)
        {
            Assert.Equal("ok", r.GetProperty("status").GetString());
            foreach (string key in (string[])["method", "form", "backend", "T", "D", "tokens_per_s", "us_per_token", "peak_fraction", "max_rel_err"])
                Assert.True(r.TryGetProperty(key, out _), key);
        }
        Assert.Contains(results, r => r.GetProperty("method").GetString() == "core" && r.GetProperty("peak_fraction").ValueKind == JsonValueKind.Number);
    }

    [Fact]
    public void BenchGatedBackwardComparesBothBackwardsAndTheyAgree()
    {
        var (code, output, err) = CliHarness.Run("bench", "linear", "--gated-backward", "--quick");
        Assert.True(code == 0, err + output);
        foreach (string method in new[] { "gla", "gated-deltanet", "deltanet", "kda" })
        {
            string line = output.Split('\n').Single(l => l.StartsWith(method + " ", StringComparison.Ordinal));
            string diff = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^2];
            Assert.True(double.Parse(diff, System.Globalization.CultureInfo.InvariantCulture) < 1e-4, line);
        }
    }
}
