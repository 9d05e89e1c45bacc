using System.Numerics.Tensors;

namespace Attend.Tests;

/// <summary>One attention problem: geometry, masking, score mods, layout.</summary>
internal sealed class AttnCase
{
    public int B = 1, Tq, Tk, H = 1, Hkv = 1, D;
    public int[]? QLens, KLens;
    public IMaskMod? Mask;
    public IScoreMod? ScoreMod;
    public float? Softcap, Scale;
    public bool Bhtd;

    public int Sequences => QLens?.Length ?? B;

    public AttentionOptions Options(string? variant = null, bool deterministic = false) => new()
    {
        Mask = Mask, ScoreMod = ScoreMod, Softcap = Softcap, Scale = Scale, Variant = variant, Deterministic = deterministic,
        QueryOffsets = QLens is null ? null : SeqOffsets.FromLengths(QLens),
        KeyOffsets = KLens is null ? null : SeqOffsets.FromLengths(KLens),
    };

    /// <summary>Sequence s: batch index, first query token, query count, first key token, key count.</summary>
    public (int Batch, int Q0, int Tq, int K0, int Tk) Seq(int s)
    {
        if (QLens is null) return (s, 0, Tq, 0, Tk);
        int q0 = QLens[..s].Sum(), k0 = KLens![..s].Sum();
        return (0, q0, QLens[s], k0, KLens[s]);
    }

    public void SetVarlen(int[] qLens, int[] kLens)
    {
        QLens = qLens;
        KLens = kLens;
        B = 1;
        Tq = qLens.Sum();
        Tk = kLens.Sum();
    }

    public long Work => (long)Math.Max(1, Tq) * Math.Max(1, Tk) * H * D * (QLens is null ? B : 1);

    public override string ToString() =>
        $"B{B} Tq{Tq} Tk{Tk} H{H}/Hkv{Hkv} D{D}" +
        (QLens is null ? "" : $" varlen q[{string.Join(",", QLens)}] k[{string.Join(",", KLens!)}]") +
        $" mask {Mask?.ToString() ?? "none"} mod {ScoreMod?.ToString() ?? "none"}" +
        (Softcap is float c ? $" softcap {c}" : "") + (Scale is float s ? $" scale {s}" : "") + (Bhtd ? " [B,H,T,D]" : "");
}

/// <summary>Inputs of one case, logically [B, T, H, D] dense.</summary>
internal sealed class AttnInputs<T> where T : unmanaged
{
    public required T[] Q, K, V, DO;

    public static AttnInputs<T> Gaussian(AttnCase c, Random rng, double scale = 1)
    {
        long nq = (long)c.B * c.Tq * c.H * c.D, nk = (long)c.B * c.Tk * c.Hkv * c.D;
        return new AttnInputs<T>
        {
            Q = TestData.Gaussian<T>(rng, nq, scale), K = TestData.Gaussian<T>(rng, nk, scale),
            V = TestData.Gaussian<T>(rng, nk), DO = TestData.Gaussian<T>(rng, nq),
        };
    }
}

internal static class Harness
{
    public static TensorSpan<T> View<T>(AttnCase c, T[] storage, int tokens, int heads) =>
        c.Bhtd ? AttentionLayout.Bhtd<T>(storage, c.B, heads, tokens, c.D) : AttentionLayout.Bthd<T>(storage, c.B, tokens, heads, c.D);

    /// <summary>Logical [B, T, H, D] to the storage the case uses.</summary>
    public static T[] Store<T>(AttnCase c, T[] logical, int tokens, int heads)
    {
        if (!c.Bhtd) return (T[])logical.Clone();
        var s = new T[logical.Length];
        int d = c.D;
        for (int b = 0; b < c.B; b++)
            for (int t = 0; t < tokens; t++)
                for (int h = 0; h < heads; h++)
                    Array.Copy(logical, (((long)b * tokens + t) * heads + h) * d, s, (((long)b * heads + h) * tokens + t) * d, d);
        return s;
    }

    /// <summary>Storage back to logical [B, T, H, D], widened to double.</summary>
    public static double[] Load<T>(AttnCase c, T[] storage, int tokens, int heads) where T : unmanaged
    {
        var r = new double[storage.Length];
        int d = c.D;
        for (int b = 0; b < c.B; b++)
            for (int t = 0; t < tokens; t++)
                for (int h = 0; h < heads; h++)
                {
                    long src = c.Bhtd ? (((long)b * heads + h) * tokens + t) * d : (((long)b * tokens + t) * heads + h) * d;
                    long dst = (((long)b * tokens + t) * heads + h) * d;
                    for (int x = 0; x < d; x++) r[dst + x] = ElementConvert.ToSingle(storage[src + x]);
                }
        return r;
    }

    public static ReferenceForwardResult Reference<T>(AttnCase c, AttnInputs<T> x) where T : unmanaged =>
        ReferenceAttention.Forward<T>(AttentionLayout.Bthd<T>(x.Q, c.B, c.Tq, c.H, c.D), AttentionLayout.Bthd<T>(x.K, c.B, c.Tk, c.Hkv, c.D),
            AttentionLayout.Bthd<T>(x.V, c.B, c.Tk, c.Hkv, c.D), c.Options());

    public static ReferenceBackwardResult ReferenceBackward<T>(AttnCase c, AttnInputs<T> x) where T : unmanaged =>
        ReferenceAttention.Backward<T>(AttentionLayout.Bthd<T>(x.Q, c.B, c.Tq, c.H, c.D), AttentionLayout.Bthd<T>(x.K, c.B, c.Tk, c.Hkv, c.D),
            AttentionLayout.Bthd<T>(x.V, c.B, c.Tk, c.Hkv, c.D), AttentionLayout.Bthd<T>(x.DO, c.B, c.Tq, c.H, c.D), c.Options());

    /// <summary>Runs the library's forward with outputs poisoned by NaN. Returns logical output (double), LSE [B, H, Tq], raw output storage.</summary>
    public static (double[] O, float[] Lse, T[] OStorage, string Ran) Forward<T>(AttnCase c, AttnInputs<T> x, string? variant) where T : unmanaged
    {
        T[] q = Store(c, x.Q, c.Tq, c.H), k = Store(c, x.K, c.Tk, c.Hkv), v = Store(c, x.V, c.Tk, c.Hkv);
        T[] o = TestData.Poisoned<T>(q.Length);
        float[] lse = TestData.Poisoned<float>((long)c.B * c.H * c.Tq);
        AttentionKernel ran = Attention.Forward<T>(View(c, q, c.Tq, c.H), View(c, k, c.Tk, c.Hkv), View(c, v, c.Tk, c.Hkv), c.Options(variant),
            View(c, o, c.Tq, c.H), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        return (Load(c, o, c.Tq, c.H), lse, o, ran.Name);
    }

    /// <summary>Forward then backward with the same variant; gradients poisoned by NaN before the call. Returns logical gradients.</summary>
    public static (double[] DQ, double[] DK, double[] DV, T[] Raw) Backward<T>(AttnCase c, AttnInputs<T> x, string variant, bool deterministic) where T : unmanaged
    {
        T[] q = Store(c, x.Q, c.Tq, c.H), k = Store(c, x.K, c.Tk, c.Hkv), v = Store(c, x.V, c.Tk, c.Hkv), dO = Store(c, x.DO, c.Tq, c.H);
        T[] o = TestData.Poisoned<T>(q.Length);
        float[] lse = TestData.Poisoned<float>((long)c.B * c.H * c.Tq);
        Attention.Forward<T>(View(c, q, c.Tq, c.H), View(c, k, c.Tk, c.Hkv), View(c, v, c.Tk, c.Hkv), c.Options(variant),
            View(c, o, c.Tq, c.H), AttentionLayout.Lse(lse, c.B, c.H, c.Tq));
        T[] dq = TestData.Poisoned<T>(q.Length), dk = TestData.Poisoned<T>(k.Length), dv = TestData.Poisoned<T>(v.Length);
        Attention.Backward<T>(View(c, q, c.Tq, c.H), View(c, k, c.Tk, c.Hkv), View(c, v, c.Tk, c.Hkv), View(c, o, c.Tq, c.H), View(c, dO, c.Tq, c.H),
            AttentionLayout.Lse(lse, c.B, c.H, c.Tq), c.Options(variant, deterministic), View(c, dq, c.Tq, c.H), View(c, dk, c.Tk, c.Hkv), View(c, dv, c.Tk, c.Hkv));
        return (Load(c, dq, c.Tq, c.H), Load(c, dk, c.Tk, c.Hkv), Load(c, dv, c.Tk, c.Hkv), [.. dq, .. dk, .. dv]);
    }

    /// <summary>
    /// Naive attention "in a type": scores, probabilities and the output rounded by <paramref name="round"/> (sums in
    /// double). With the identity it is an independent float64 implementation; with a rounding to Half/BFloat16 it
    /// is the naive computation in that type that kernel errors are compared with.
    /// </summary>
    public static double[] Naive<T>(AttnCase c, AttnInputs<T> x, Func<double, double> round) where T : unmanaged
    {
        var o = new double[(long)c.B * c.Tq * c.H * c.D];
        double scale = c.Scale ?? 1.0 / Math.Sqrt(c.D);
        IMaskMod mask = c.Mask ?? Masks.Full;
        int g = c.H / c.Hkv, d = c.D;
        for (int s = 0; s < c.Sequences; s++)
        {
            var (b, q0, tq, k0, tk) = c.Seq(s);
            var sc = new double[tk];
            for (int h = 0; h < c.H; h++)
            {
                int hk = h / g;
                for (int i = 0; i < tq; i++)
                {
                    int pos = i + tk - tq;
                    long qi = (((long)b * c.Tq + q0 + i) * c.H + h) * d;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < tk; j++)
                    {
                        if (!mask.IsVisible(s, h, pos, j)) { sc[j] = double.NegativeInfinity; continue; }
                        long kj = (((long)b * c.Tk + k0 + j) * c.Hkv + hk) * d;
                        double dot = 0;
                        for (int e = 0; e < d; e++) dot += (double)ElementConvert.ToSingle(x.Q[qi + e]) * ElementConvert.ToSingle(x.K[kj + e]);
                        double v = round(dot * scale);
                        if (c.Softcap is float cap) v = round(cap * Math.Tanh(v / cap));
                        if (c.ScoreMod is not null) v = round(c.ScoreMod.Apply(v, s, h, pos, j));
                        sc[j] = v;
                        max = Math.Max(max, v);
                    }
                    if (double.IsNegativeInfinity(max)) continue;
                    double sum = 0;
                    var acc = new double[d];
                    for (int j = 0; j < tk; j++)
                    {
                        if (double.IsNegativeInfinity(sc[j])) continue;
                        double p = round(Math.Exp(sc[j] - max));
                        sum += p;
                        long vj = (((long)b * c.Tk + k0 + j) * c.Hkv + hk) * d;
                        for (int e = 0; e < d; e++) acc[e] += p * ElementConvert.ToSingle(x.V[vj + e]);
                    }
                    for (int e = 0; e < d; e++) o[qi + e] = round(acc[e] / sum);
                }
            }
        }
        return o;
    }

    /// <summary>Rows (b, t, h) of the logical output whose reference LSE is −∞ must be exactly zero; returns a complaint or null.</summary>
    public static string? MaskedRowsAreZero(AttnCase c, double[] o, double[] refLse)
    {
        for (int b = 0; b < c.B; b++)
            for (int h = 0; h < c.H; h++)
                for (int t = 0; t < c.Tq; t++)
                {
                    if (!double.IsNegativeInfinity(refLse[((long)b * c.H + h) * c.Tq + t])) continue;
                    long row = (((long)b * c.Tq + t) * c.H + h) * c.D;
                    for (int x = 0; x < c.D; x++)
                        if (o[row + x] != 0) return $"fully masked row b{b} h{h} t{t} has {o[row + x]} at {x}";
                }
        return null;
    }

    public static readonly int[] LengthPool = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 79, 80, 81, 95, 96, 97, 127, 128, 129, 191, 192, 193, 255, 256, 257];
    public static readonly int[] HeadDims = [32, 64, 80, 96, 128, 256];
    public static readonly int[] GroupRatios = [1, 2, 4, 5, 8];

    public static int Length(Random rng) => rng.Next(4) == 0 ? rng.Next(1, 301) | 1 : LengthPool[rng.Next(LengthPool.Length)];

    public static IScoreMod? ScoreMod(Random rng, int heads) => rng.Next(6) switch
    {
        0 => AlibiScoreMod.Standard(heads),
        1 => RelativeBias(rng, heads),
        2 => new ComposedScoreMod<AlibiScoreMod, RelativePositionBias>(AlibiScoreMod.Standard(heads), RelativeBias(rng, heads)),
        _ => null,
    };

    public static RelativePositionBias RelativeBias(Random rng, int heads)
    {
        int buckets = rng.Next(2) == 0 ? 16 : 32;
        return new RelativePositionBias(TestData.Gaussian<float>(rng, heads * buckets), heads, buckets, rng.Next(2) == 0 ? 64 : 128, rng.Next(2) == 0);
    }

    /// <summary>A random case within a work budget (B·H·Tq·Tk·D).</summary>
    public static AttnCase RandomCase(Random rng, long budget, bool varlen, int maxQueries = int.MaxValue)
    {
        while (true)
        {
            var c = new AttnCase { D = HeadDims[rng.Next(HeadDims.Length)] };
            c.Hkv = rng.Next(3) == 0 ? 2 : 1;
            c.H = c.Hkv * GroupRatios[rng.Next(GroupRatios.Length)];
            if (varlen)
            {
                int n = rng.Next(1, 6);
                int[] ql = new int[n], kl = new int[n];
                for (int s = 0; s < n; s++)
                {
                    ql[s] = Math.Min(maxQueries, rng.Next(5) == 0 ? rng.Next(0, 2) : Length(rng));
                    kl[s] = rng.Next(3) == 0 ? ql[s] : rng.Next(6) == 0 ? rng.Next(0, 2) : Length(rng);
                }
                c.SetVarlen(ql, kl);
            }
            else
            {
                c.B = rng.Next(3) == 0 ? rng.Next(2, 4) : 1;
                c.Tq = Math.Min(maxQueries, Length(rng));
                c.Tk = rng.Next(3) == 0 ? c.Tq : Length(rng);
            }
            c.Mask = MaskCatalog.Make(rng.Next(MaskCatalog.Kinds), rng, Math.Max(c.Tq, c.Tk));
            c.ScoreMod = ScoreMod(rng, c.H);
            if (rng.Next(4) == 0) c.Softcap = (float)(2 + 28 * rng.NextDouble());
            if (rng.Next(5) == 0) c.Scale = (float)(0.05 + 0.5 * rng.NextDouble());
            c.Bhtd = rng.Next(3) == 0;
            if (c.Work <= budget) return c;
        }
    }
}
