using Attend.Methods;
using Attend.Methods.Linear;

namespace Attend.Tests.LinearExtra;

/// <summary>Random shapes and inputs for the extra linear-family methods, and the error measures their tests share.</summary>
internal sealed record ExtraCase(LinearExtraShape Shape, float[] Q, float[] K, float[] V, string Description)
{
    public static readonly int[] Lengths = [1, 2, 3, 5, 7, 16, 17, 31, 33, 63, 64, 65, 100, 127];

    /// <summary>A random case: batch or varlen, GQA ratio, head dims from <paramref name="dims"/>, T up to <paramref name="maxT"/>.</summary>
    public static ExtraCase Random(Random rng, int maxT, int[] dims, bool varlen, bool sameDims = false, double scale = 1)
    {
        int[] ratios = [1, 2, 3];
        int hkv = rng.Next(1, 3), h = hkv * ratios[rng.Next(ratios.Length)];
        int dk = dims[rng.Next(dims.Length)], dv = sameDims ? dk : dims[rng.Next(dims.Length)];
        LinearExtraShape shape;
        if (varlen)
        {
            int n = rng.Next(1, 4);
            var lengths = new int[n];
            for (int i = 0; i < n; i++) lengths[i] = PickLength(rng, maxT);
            if (n > 1 && rng.Next(3) == 0) lengths[rng.Next(n)] = 1;
            var offsets = SeqOffsets.FromLengths(lengths);
            shape = new LinearExtraShape(1, offsets.TotalTokens, h, hkv, dk, dv, offsets);
        }
        else shape = new LinearExtraShape(rng.Next(1, 3), PickLength(rng, maxT), h, hkv, dk, dv);
        return Make(rng, shape, scale);
    }

    public static ExtraCase Make(Random rng, LinearExtraShape shape, double scale = 1) =>
        new(shape, TestData.Gaussian<float>(rng, shape.QueryCount, scale), TestData.Gaussian<float>(rng, shape.KeyCount, scale),
            TestData.Gaussian<float>(rng, shape.ValueCount), Describe(shape));

    public static int PickLength(Random rng, int maxT)
    {
        int t;
        do t = Lengths[rng.Next(Lengths.Length)]; while (t > maxT);
        return t;
    }

    public static string Describe(LinearExtraShape s) =>
        $"seed {TestData.RunSeed}: B={s.Batch} T={s.Tokens} H={s.Heads} Hkv={s.KvHeads} Dk={s.KeyDim} Dv={s.ValueDim}" +
        (s.Offsets is null ? "" : $" varlen [{string.Join(",", s.Offsets.Offsets.ToArray())}]");

    public MethodInputs Inputs() => new(new MethodTensor(Q, Shape.Batch, Shape.Tokens, Shape.Heads, Shape.KeyDim),
        new MethodTensor(K, Shape.Batch, Shape.Tokens, Shape.KvHeads, Shape.KeyDim),
        new MethodTensor(V, Shape.Batch, Shape.Tokens, Shape.KvHeads, Shape.ValueDim))
    { Offsets = Shape.Offsets };

    /// <summary>Max |a − e| / max(1, max |e|) over the tensor: a relative error that tolerates zero entries; NaN counts as ∞.</summary>
    public static double Error(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        if (actual.Length != expected.Length) return double.PositiveInfinity;
        double scale = 1, worst = 0;
        foreach (double e in expected) if (double.IsFinite(e)) scale = Math.Max(scale, Math.Abs(e));
        for (int i = 0; i < actual.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]) && float.IsNegativeInfinity(actual[i])) continue;
            if (!float.IsFinite(actual[i])) return double.PositiveInfinity;
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / scale);
        }
        return worst;
    }

    public static double Error(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        var e = new double[expected.Length];
        for (int i = 0; i < e.Length; i++) e[i] = expected[i];
        return Error(actual, e);
    }

    public static bool AllFinite(ReadOnlySpan<float> x)
    {
        foreach (float f in x) if (!float.IsFinite(f)) return false;
        return true;
    }

    /// <summary>Tokens [from, to) of every sequence of a padded batch as a new case (same heads and dims).</summary>
    public ExtraCase Slice(int from, int to)
    {
        if (Shape.Offsets is not null) throw new InvalidOperationException("Slice is for padded batches.");
        var s = Shape with { Tokens = to - from };
        return new ExtraCase(s, SliceRows(Q, Shape.Heads * Shape.KeyDim, from, to), SliceRows(K, Shape.KvHeads * Shape.KeyDim, from, to),
            SliceRows(V, Shape.KvHeads * Shape.ValueDim, from, to), Describe(s));
    }

    public float[] SliceRows(float[] data, int rowSize, int from, int to)
    {
        var result = new float[(long)Shape.Batch * (to - from) * rowSize];
        for (int b = 0; b < Shape.Batch; b++)
            Array.Copy(data, ((long)b * Shape.Tokens + from) * rowSize, result, (long)b * (to - from) * rowSize, (long)(to - from) * rowSize);
        return result;
    }

    /// <summary>Concatenates, per batch row, the token rows of <paramref name="first"/> and <paramref name="second"/>.</summary>
    public static float[] JoinRows(float[] first, int t1, float[] second, int t2, int batch, int rowSize)
    {
        var result = new float[(long)batch * (t1 + t2) * rowSize];
        for (int b = 0; b < batch; b++)
        {
            Array.Copy(first, (long)b * t1 * rowSize, result, (long)b * (t1 + t2) * rowSize, (long)t1 * rowSize);
            Array.Copy(second, (long)b * t2 * rowSize, result, ((long)b * (t1 + t2) + t1) * rowSize, (long)t2 * rowSize);
        }
        return result;
    }
}
