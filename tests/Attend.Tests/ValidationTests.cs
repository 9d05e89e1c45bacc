using System.Numerics.Tensors;
using Xunit;

namespace Attend.Tests;

/// <summary>Bad input gets an exception naming the argument (ParamName) and the offending dimension (message).</summary>
public class ValidationTests
{
    private sealed class Call
    {
        public int B = 1, Tq = 8, Tk = 8, H = 4, Hkv = 2, D = 16;
        public int? KTokens, VTokens, KHeads, VHeads, KDim, VDim, KBatch, VBatch;
        public int[]? OutShape, LseShape;
        public AttentionOptions Options = AttentionOptions.Default;

        public AttentionKernel Forward()
        {
            float[] q = new float[B * Tq * H * D];
            int kt = KTokens ?? Tk, vt = VTokens ?? Tk, kh = KHeads ?? Hkv, vh = VHeads ?? Hkv, kd = KDim ?? D, vd = VDim ?? D, kb = KBatch ?? B, vb = VBatch ?? B;
            float[] k = new float[kb * kt * kh * kd], v = new float[vb * vt * vh * vd];
            int[] os = OutShape ?? [B, Tq, H, D];
            int[] ls = LseShape ?? [B, H, Tq];
            float[] o = new float[os.Aggregate(1, (a, x) => a * x)];
            float[] l = new float[ls.Aggregate(1, (a, x) => a * x)];
            return Attention.Forward<float>(TestData.Bthd(q, B, Tq, H, D), TestData.Bthd(k, kb, kt, kh, kd), TestData.Bthd(v, vb, vt, vh, vd), Options,
                TestData.Bthd(o, os[0], os[1], os[2], os[3]), AttentionLayout.Lse(l, ls[0], ls[1], ls[2]));
        }
    }

    private static ArgumentException Fails(Call c, string param, params string[] fragments)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => c.Forward());
        Assert.Equal(param, e.ParamName);
        foreach (string f in fragments) Assert.Contains(f, e.Message);
        return e;
    }

    [Fact]
    public void ValidCallRuns() => Assert.NotNull(new Call().Forward());

    [Fact]
    public void HeadsThatDoNotDivide() => Fails(new Call { H = 6, Hkv = 4 }, "k", "dimension 2", "4 heads", "6");

    [Fact]
    public void ValueHeadsDifferFromKeyHeads() => Fails(new Call { VHeads = 1 }, "v", "dimension 2");

    [Fact]
    public void MismatchedHeadDims()
    {
        Fails(new Call { KDim = 32 }, "k", "head dim", "32", "16");
        Fails(new Call { VDim = 8 }, "v", "head dim", "8");
    }

    [Fact]
    public void KeyValueTokenMismatch()
    {
        Fails(new Call { VTokens = 7 }, "v", "dimension 1", "7", "8");
        Fails(new Call { KTokens = 9 }, "v", "dimension 1", "9", "8");
    }

    [Fact]
    public void KeyHeadsThatDoNotDivide() => Fails(new Call { H = 4, KHeads = 3 }, "k", "dimension 2", "3 heads");

    [Fact]
    public void BatchMismatch()
    {
        Fails(new Call { B = 2, KBatch = 3 }, "k", "dimension 0");
        Fails(new Call { B = 2, VBatch = 1 }, "v", "dimension 0");
    }

    [Fact]
    public void OutputOfTheWrongShape()
    {
        Fails(new Call { OutShape = [1, 7, 4, 16] }, "output", "[1, 8, 4, 16]", "[1, 7, 4, 16]");
        Fails(new Call { OutShape = [1, 8, 2, 16] }, "output");
        Fails(new Call { OutShape = [1, 8, 4, 8] }, "output");
    }

    [Fact]
    public void LseOfTheWrongShape()
    {
        Fails(new Call { LseShape = [1, 2, 8] }, "lse", "[B, H, Tq]");
        Fails(new Call { LseShape = [1, 4, 9] }, "lse", "[1, 4, 8]");
    }

    [Fact]
    public void OffsetsWhoseTotalDisagreesWithT()
    {
        Fails(new Call { Tq = 12, Tk = 12, Options = new() { QueryOffsets = SeqOffsets.FromLengths([5, 5]) } }, "options", "QueryOffsets", "10", "12", "dimension 1");
        Fails(new Call { Tq = 10, Tk = 12, Options = new() { QueryOffsets = SeqOffsets.FromLengths([5, 5]), KeyOffsets = SeqOffsets.FromLengths([6, 7]) } },
            "options", "KeyOffsets", "13", "12");
        Fails(new Call { Tq = 10, Tk = 12, Options = new() { QueryOffsets = SeqOffsets.FromLengths([5, 5]), KeyOffsets = SeqOffsets.FromLengths([12]) } },
            "options", "sequences");
        Fails(new Call { B = 2, Tq = 10, Tk = 10, Options = new() { QueryOffsets = SeqOffsets.FromLengths([5, 5]) } }, "q", "dimension 0");
        Fails(new Call { Options = new() { KeyOffsets = SeqOffsets.FromLengths([8]) } }, "options", "QueryOffsets");
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void NonFiniteScale(float scale) => Fails(new Call { Options = new() { Scale = scale } }, "options", "Scale");

    [Theory]
    [InlineData(0f)]
    [InlineData(-1f)]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void BadSoftcap(float cap) => Fails(new Call { Options = new() { Softcap = cap } }, "options", "Softcap");

    [Fact]
    public void UnknownForcedVariant()
    {
        var e = Fails(new Call { Options = new() { Variant = "NoSuchKernel" } }, "options.Variant", "NoSuchKernel");
        foreach (AttentionKernel k in KernelRegistry.Softmax) Assert.Contains(k.Name, e.Message);
    }

    [Fact]
    public void ForcedVariantThatCannotRunSaysWhy()
    {
        var e = Assert.Throws<NotSupportedException>(() => new Call { Tq = 40, Tk = 40, Options = new() { Variant = "CpuSplitKvDecode" } }.Forward());
        Assert.Contains("CpuSplitKvDecode", e.Message);
        Assert.Contains("16", e.Message);
        Assert.Contains("40", e.Message);

        float[] x = new float[8 * 2 * 16], lse = new float[2 * 8];
        var b = Assert.Throws<NotSupportedException>(() =>
        {
            TensorSpan<float> t = TestData.Bthd(x, 1, 8, 2, 16);
            Attention.Backward<float>(t, t, t, t, t, AttentionLayout.Lse(lse, 1, 2, 8), new AttentionOptions { Variant = "CpuSplitKvDecode" }, t, t, t);
        });
        Assert.Contains("forward only", b.Message);
    }

    [Fact]
    public void WrongRank()
    {
        float[] x = new float[64];
        var e = Assert.Throws<ArgumentException>(() =>
        {
            var rank2 = new TensorSpan<float>(x, [8, 8], [8, 1]);
            var four = TestData.Bthd(x, 1, 2, 2, 16);
            Attention.Forward<float>(rank2, four, four, AttentionOptions.Default, four);
        });
        Assert.Equal("q", e.ParamName);
        Assert.Contains("rank", e.Message);
    }

    [Fact]
    public void NonContiguousHeadDim()
    {
        float[] x = new float[2 * 2 * 32], y = new float[64];
        var e = Assert.Throws<ArgumentException>(() =>
        {
            var strided = new TensorSpan<float>(x, [1, 2, 2, 16], [0, 64, 32, 2]);
            var ok = TestData.Bthd(y, 1, 2, 2, 16);
            Attention.Forward<float>(strided, ok, ok, AttentionOptions.Default, ok);
        });
        Assert.Equal("q", e.ParamName);
        Assert.Contains("stride", e.Message);
    }

    [Fact]
    public void MaxThreadsBelowOne()
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => new Call { Options = new() { MaxThreads = 0 } }.Forward());
        Assert.Equal("options", e.ParamName);
    }

    [Fact]
    public void BackwardArgumentsAreChecked()
    {
        int tq = 8, tk = 8, h = 2, d = 16;
        float[] x = new float[tq * h * d], lse = new float[h * tq], small = new float[(tk - 1) * h * d];
        // which: 0 lse missing, 1 dk short, 2 dv short, 3 dq short, 4 dO short, 5 output short.
        string? Param(int which)
        {
            try
            {
                TensorSpan<float> t = TestData.Bthd(x, 1, tq, h, d), s = TestData.Bthd(small, 1, tk - 1, h, d);
                TensorSpan<float> l = which == 0 ? default : AttentionLayout.Lse(lse, 1, h, tq);
                Attention.Backward<float>(t, t, t, which == 5 ? s : t, which == 4 ? s : t, l, AttentionOptions.Default,
                    which == 3 ? s : t, which == 1 ? s : t, which == 2 ? s : t);
                return "(no exception)";
            }
            catch (ArgumentException e) { return e.ParamName; }
        }
        Assert.Equal("lse", Param(0));
        Assert.Equal("dk", Param(1));
        Assert.Equal("dv", Param(2));
        Assert.Equal("dq", Param(3));
        Assert.Equal("outputGradient", Param(4));
        Assert.Equal("output", Param(5));
    }

    [Fact]
    public void AllocatingFormsRejectNull()
    {
        var t = Tensor.Create<float>(new float[16], [1, 1, 1, 16]);
        Assert.Equal("q", Assert.Throws<ArgumentNullException>(() => Attention.Forward<float>(null!, t, t)).ParamName);
        Assert.Equal("v", Assert.Throws<ArgumentNullException>(() => Attention.Forward<float>(t, t, null!)).ParamName);
    }

    [Fact]
    public void BadSequenceOffsets()
    {
        Assert.Equal("offsets", Assert.Throws<ArgumentException>(() => new SeqOffsets([1, 2])).ParamName);
        Assert.Equal("offsets", Assert.Throws<ArgumentException>(() => new SeqOffsets([0, 5, 3])).ParamName);
        Assert.Equal("offsets", Assert.Throws<ArgumentException>(() => new SeqOffsets([0])).ParamName);
        Assert.Equal("lengths", Assert.Throws<ArgumentException>(() => SeqOffsets.FromLengths([3, -1])).ParamName);
    }

    [Fact]
    public void ScoreModParameters()
    {
        Assert.Equal("slopes", Assert.Throws<ArgumentException>(() => new AlibiScoreMod([])).ParamName);
        Assert.Equal("slopes", Assert.Throws<ArgumentException>(() => new AlibiScoreMod([1f, float.NaN])).ParamName);
        Assert.Equal("table", Assert.Throws<ArgumentException>(() => new RelativePositionBias(new float[10], 2, 8, 16)).ParamName);
        Assert.Equal("cap", Assert.Throws<ArgumentOutOfRangeException>(() => new SoftcapScoreMod(0)).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentOutOfRangeException>(() => AlibiScoreMod.Standard(0)).ParamName);
    }
}
