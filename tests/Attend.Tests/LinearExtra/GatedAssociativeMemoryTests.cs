using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class GatedAssociativeMemoryTests
{
    private sealed record Setup(ExtraCase Case, float[] Memory, float[] Conv, int Width, float[]? GateLocal, float[]? GateGlobal, float[]? Init);

    private static Setup Random(Random rng, int maxT, bool varlen, bool withState)
    {
        var c = ExtraCase.Random(rng, maxT, [32, 64, 128], varlen, sameDims: true);
        int h = c.Shape.Heads, d = c.Shape.KeyDim, width = rng.Next(1, 6), slots = rng.Next(1, 80);
        float[] memory = TestData.Gaussian<float>(rng, h * slots * d, 0.3);
        float[] conv = TestData.Gaussian<float>(rng, h * width * d);
        bool gates = rng.Next(3) > 0;
        float[]? gl = gates ? TestData.Gaussian<float>(rng, c.Shape.OutputCount, 3) : null;
        float[]? gg = gates ? TestData.Gaussian<float>(rng, c.Shape.OutputCount, 3) : null;
        float[]? init = withState ? TestData.Gaussian<float>(rng, GatedAssociativeMemory.StateSize(c.Shape, width)) : null;
        return new Setup(c, memory, conv, width, gl, gg, init);
    }

    private static (float[] O, float[] State) Run(Setup s, bool recurrent, ExtraCase? c = null, float[]? init = null, float[]? gl = null, float[]? gg = null)
    {
        c ??= s.Case;
        var o = TestData.Poisoned<float>(c.Shape.OutputCount);
        var state = TestData.Poisoned<float>(GatedAssociativeMemory.StateSize(c.Shape, s.Width));
        GatedAssociativeMemory.Forward(c.Q, c.V, c.Shape, new GamParameters(s.Memory, s.Conv, gl ?? s.GateLocal, gg ?? s.GateGlobal), null,
            init ?? s.Init, o, state, recurrent);
        return (o, state);
    }

    [Fact]
    public void BothFormsEqualTheDefinitionOnBatchesVarlenGqaGatesAndStates()
    {
        var rng = TestData.Rng(541);
        for (int trial = 0; trial < 12; trial++)
        {
            Setup s = Random(rng, 100, varlen: trial % 3 == 0, withState: trial % 2 == 1);
            (double[] o, double[] st) = GatedAssociativeMemoryReference.Forward(s.Case.Q, s.Case.V, s.Case.Shape, s.Memory, s.Conv, s.GateLocal, s.GateGlobal, null, s.Init);
            foreach (bool recurrent in new[] { false, true })
            {
                (float[] of, float[] sf) = Run(s, recurrent);
                Assert.True(ExtraCase.Error(of, o) < 2e-5, $"recurrent {recurrent} W {s.Width}: output error {ExtraCase.Error(of, o):E2}; {s.Case.Description}");
                Assert.True(ExtraCase.Error(sf, st) == 0, $"recurrent {recurrent} W {s.Width}: the window must hold exactly the last values; {s.Case.Description}");
            }
        }
    }

    [Fact]
    public void PrefixChunkedThenRestRecurrentEqualsTheWholeRunChunked()
    {
        var rng = TestData.Rng(542);
        for (int trial = 0; trial < 6; trial++)
        {
            Setup s = Random(rng, 127, varlen: false, withState: false) with { GateLocal = null, GateGlobal = null };
            int t = s.Case.Shape.Tokens;
            if (t < 2) continue;
            int split = rng.Next(1, t);
            (float[] whole, float[] wholeState) = Run(s, recurrent: false);
            (float[] o1, float[] mid) = Run(s, recurrent: false, s.Case.Slice(0, split));
            (float[] o2, float[] end) = Run(s, recurrent: true, s.Case.Slice(split, t), mid);
            float[] joined = ExtraCase.JoinRows(o1, split, o2, t - split, s.Case.Shape.Batch, s.Case.Shape.Heads * s.Case.Shape.ValueDim);
            Assert.True(ExtraCase.Error(joined, whole) < 1e-6, $"split {split} W {s.Width}; {s.Case.Description}");
            Assert.True(ExtraCase.Error(end, wholeState) == 0, $"split {split}: final windows differ; {s.Case.Description}");
        }
    }

    [Fact]
    public void SaturatedGatesPickOnePathAndLongSequencesStayFinite()
    {
        var rng = TestData.Rng(543);
        // A cheap long shape: one head of 32 over 64k tokens, 16 slots, width 4.
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 65536, 1, 1, 32, 32), scale: 30);
        var s = new Setup(c, TestData.Gaussian<float>(rng, 16 * 32), TestData.Gaussian<float>(rng, 4 * 32), 4, null, null, null);
        float[] on = new float[c.Shape.OutputCount], off = new float[c.Shape.OutputCount];
        Array.Fill(on, 100f);
        Array.Fill(off, -100f);
        (float[] localOnly, _) = Run(s, recurrent: false, c, gl: on, gg: off);
        (float[] globalOnly, _) = Run(s, recurrent: true, c, gl: off, gg: on);
        (float[] both, _) = Run(s, recurrent: false, c, gl: on, gg: on);
        Assert.True(ExtraCase.AllFinite(both), c.Description);
        var sum = new float[both.Length];
        for (int i = 0; i < sum.Length; i++) sum[i] = localOnly[i] + globalOnly[i];
        Assert.True(ExtraCase.Error(both, sum) < 1e-5, $"gates at 1 must add the two paths; {c.Description}");
    }

    [Fact]
    public void AdapterFormsAgreeAndBadInputsAreNamed()
    {
        var rng = TestData.Rng(544);
        var c = ExtraCase.Random(rng, 40, [32], varlen: true, sameDims: true);
        var method = new GatedAssociativeMemoryMethod();
        MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive", "slots=9", "width=4"]));
        foreach (string form in (string[])["chunked", "recurrent"])
        {
            MethodResult r = method.Run(c.Inputs(), MethodArguments.Parse([$"form={form}", "slots=9", "width=4"]));
            Assert.True(ExtraCase.Error(r.Output.Data, naive.Output.Data) < 2e-5, $"{form}; {c.Description}");
            Assert.True(ExtraCase.Error(r.Extras["state"].Data, naive.Extras["state"].Data) == 0, $"{form} state; {c.Description}");
        }
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["width=0"])));
        Assert.Equal("width", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=parallel"])));
        Assert.Equal("form", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs().Add("memory", new MethodTensor(new float[10 * 31], 1, 10, 31)), MethodArguments.Empty));
        Assert.Equal("memory", e.ParamName);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs().Add("state", new MethodTensor(new float[5], 5)), MethodArguments.Empty));
        Assert.Equal("state", e.ParamName);
        var wide = ExtraCase.Make(rng, new LinearExtraShape(1, 5, 1, 1, 32, 16));
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(wide.Inputs(), MethodArguments.Empty));
        Assert.Equal("v", e.ParamName);
    }
}

public class GatedAssociativeMemoryBackwardTests
{
    [Fact]
    public void BackwardMatchesFiniteDifferencesOfTheDefinitionForEveryInputAndParameter()
    {
        var rng = TestData.Rng(545);
        foreach (LinearExtraShape s in new[] { new LinearExtraShape(2, 5, 2, 1, 3, 3), new LinearExtraShape(1, 7, 2, 2, 3, 3, SeqOffsets.FromLengths([4, 1, 2])) })
        {
            var c = ExtraCase.Make(rng, s);
            const int slots = 4, width = 3;
            float[] memory = TestData.Gaussian<float>(rng, s.Heads * slots * 3), conv = TestData.Gaussian<float>(rng, s.Heads * width * 3);
            float[] gl = TestData.Gaussian<float>(rng, s.OutputCount), gg = TestData.Gaussian<float>(rng, s.OutputCount);
            float[] init = TestData.Gaussian<float>(rng, GatedAssociativeMemory.StateSize(s, width));
            float[] dO = TestData.Gaussian<float>(rng, s.OutputCount);
            var grads = new[] { new float[c.Q.Length], new float[c.V.Length], new float[memory.Length], new float[conv.Length], new float[gl.Length], new float[gg.Length] };
            GatedAssociativeMemory.Backward(c.Q, c.V, s, new GamParameters(memory, conv, gl, gg), null, init, dO,
                grads[0], grads[1], grads[2], grads[3], grads[4], grads[5]);
            double Loss()
            {
                (double[] o, _) = GatedAssociativeMemoryReference.Forward(c.Q, c.V, s, memory, conv, gl, gg, null, init);
                double sum = 0;
                for (int i = 0; i < o.Length; i++) sum += o[i] * dO[i];
                return sum;
            }
            float[][] inputs = [c.Q, c.V, memory, conv, gl, gg];
            string[] names = ["q", "v", "memory", "conv", "gate_local", "gate_global"];
            for (int which = 0; which < inputs.Length; which++)
            {
                float[] x = inputs[which];
                for (int i = 0; i < x.Length; i++)
                {
                    float keep = x[i];
                    const float step = 1e-2f;
                    x[i] = keep + step;
                    double up = Loss();
                    x[i] = keep - step;
                    double down = Loss();
                    x[i] = keep;
                    double fd = (up - down) / (2 * step);
                    Assert.True(Math.Abs(fd - grads[which][i]) < 2e-3 * Math.Max(1, Math.Abs(fd)),
                        $"d{names[which]}[{i}]: {grads[which][i]} vs finite difference {fd}; {c.Description}");
                }
            }
        }
    }
}
