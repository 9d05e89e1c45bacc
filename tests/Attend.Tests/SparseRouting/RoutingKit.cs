using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>One selector problem: shapes, inputs, and the checks every routing method must pass.</summary>
internal sealed class RoutingProblem
{
    public int B = 1, T, Tk, H = 1, Hkv = 1, D = 64, Dv = 64;
    public int[]? Lens;
    public float[] Q = [], K = [], V = [];

    public static RoutingProblem Random(Random rng, int b, int t, int h, int hkv, int d, int[]? lens = null, int? tk = null, double scale = 1.0)
    {
        var p = new RoutingProblem { B = b, T = lens?.Sum() ?? t, H = h, Hkv = hkv, D = d, Dv = d, Lens = lens };
        p.Tk = lens is null ? tk ?? t : p.T;
        p.Q = TestData.Gaussian<float>(rng, (long)p.B * p.T * h * d, scale);
        p.K = TestData.Gaussian<float>(rng, (long)p.B * p.Tk * hkv * d, scale);
        p.V = TestData.Gaussian<float>(rng, (long)p.B * p.Tk * hkv * d);
        return p;
    }

    public SeqOffsets? Offsets => Lens is null ? null : SeqOffsets.FromLengths(Lens);

    public SelectorInput Input => new(Q, K, B, T, Tk, H, Hkv, D, Offsets);

    public override string ToString() => $"B{B} T{T} Tk{Tk} H{H}/{Hkv} D{D}" + (Lens is null ? "" : $" varlen [{string.Join(",", Lens)}]") + $" seed {TestData.RunSeed}";

    /// <summary>The plan's forward with NaN-poisoned outputs: output and LSE.</summary>
    public (float[] O, float[] Lse) Run(SparsePlan plan, float? scale = null)
    {
        float[] o = TestData.Poisoned<float>((long)B * T * H * Dv), lse = TestData.Poisoned<float>((long)B * H * T);
        plan.Forward(Q, K, V, Dv, o, lse, scale);
        return (o, lse);
    }

    /// <summary>Float64 attention under <paramref name="options"/>.</summary>
    public ReferenceForwardResult Reference(AttentionOptions options) =>
        ReferenceAttention.Forward<float>(AttentionLayout.Bthd<float>(Q, B, T, H, D), AttentionLayout.Bthd<float>(K, B, Tk, Hkv, D),
            AttentionLayout.Bthd<float>(V, B, Tk, Hkv, Dv), options);

    /// <summary>The exact attention under the base mask (causal or none) the plan sits in.</summary>
    public AttentionOptions BaseOptions(bool causal) => new()
    {
        Mask = causal ? Masks.Causal : null, QueryOffsets = Offsets, KeyOffsets = Offsets,
    };

    /// <summary>The plan's output equals the float64 computation of the same sparse definition; masked rows are 0 / −∞.</summary>
    public void AssertMatchesReference(SparsePlan plan, float? scale = null, double tolerance = 2e-5)
    {
        var (o, lse) = Run(plan, scale);
        ReferenceForwardResult r = Reference(plan.Options(scale));
        double err = TestData.RelativeError<float>(o, r.Output);
        Assert.True(err < tolerance, $"output error {err:g3} vs the float64 reference of the plan; {this}");
        double lseErr = TestData.LseError(lse, r.Lse);
        Assert.True(lseErr < 1e-4, $"LSE error {lseErr:g3}; {this}");
        foreach (float x in o) Assert.False(float.IsNaN(x), $"NaN in the output; {this}");
        Assert.InRange(plan.Density, 0.0, 1.0);
    }

    /// <summary>The plan computes every visible pair, and its output is exact attention.</summary>
    public void AssertKeepsEverything(SparsePlan plan, bool causal)
    {
        Assert.True(Math.Abs(plan.Density - 1.0) < 1e-12, $"density {plan.Density} of a keep-everything plan; {this}");
        var (o, _) = Run(plan);
        ReferenceForwardResult exact = Reference(BaseOptions(causal));
        double err = TestData.RelativeError<float>(o, exact.Output);
        Assert.True(err < 2e-5, $"keep-everything plan differs from exact attention by {err:g3}; {this}");
    }

    /// <summary>
    /// Plants a needle: key <paramref name="position"/> of every key head (in every sequence) is a strong unit
    /// direction u, and the queries of rows [<paramref name="firstRow"/>, T) point along u too; its value is marked.
    /// </summary>
    public void PlantNeedle(Random rng, int position, int firstRow, float strength)
    {
        var u = new float[D];
        double norm = 0;
        for (int i = 0; i < D; i++) { u[i] = (float)(rng.NextDouble() * 2 - 1); norm += u[i] * u[i]; }
        for (int i = 0; i < D; i++) u[i] = (float)(u[i] / Math.Sqrt(norm));
        int sequences = Lens?.Length ?? B;
        for (int s = 0; s < sequences; s++)
        {
            int start = Lens is null ? 0 : Lens[..s].Sum(), tq = Lens?[s] ?? T;
            int b = Lens is null ? s : 0;
            for (int kvh = 0; kvh < Hkv; kvh++)
            {
                long key = ((long)b * Tk + start + position) * Hkv + kvh;
                for (int i = 0; i < D; i++) { K[key * D + i] = strength * u[i]; V[key * Dv + i] = 10; }
            }
            for (int row = firstRow; row < tq; row++)
                for (int h = 0; h < H; h++)
                {
                    long q = ((long)b * T + start + row) * H + h;
                    for (int i = 0; i < D; i++) Q[q * D + i] = strength * u[i] + 0.1f * Q[q * D + i];
                }
        }
    }

    /// <summary>Every query row in [firstRow, T) of every head and sequence sees key <paramref name="position"/>.</summary>
    public void AssertFindsNeedle(SparsePlan plan, int position, int firstRow)
    {
        SelectorInput x = plan.Input;
        for (int s = 0; s < x.Sequences; s++)
            for (int h = 0; h < H; h++)
                for (int row = firstRow; row < x.QueryLength(s); row++)
                    Assert.True(plan.Mask.IsVisible(s, h, x.QueryPosition(s, row), position),
                        $"sequence {s} head {h} row {row} does not see the needle at {position} (density {plan.Density:f3}); {this}");
        Assert.True(plan.Density < 0.9, $"a needle found at density {plan.Density:f3} proves nothing; {this}");
    }
}

internal static class Recall
{
    /// <summary>Mean over (sequence, head, row) of the exact softmax mass the plan covers (float64, causal or full).</summary>
    public static double Of(RoutingProblem p, Attend.Methods.Sparse.Routing.SparsePlan plan, bool causal)
    {
        Attend.Methods.Sparse.Routing.SelectorInput x = plan.Input;
        double total = 0;
        long rows = 0;
        double scale = 1 / Math.Sqrt(p.D);
        for (int s = 0; s < x.Sequences; s++)
            for (int h = 0; h < p.H; h++)
                for (int r = 0; r < x.QueryLength(s); r++)
                {
                    int pos = x.QueryPosition(s, r), end = causal ? Math.Min(pos + 1, x.KeyLength(s)) : x.KeyLength(s);
                    if (end <= 0) continue;
                    var logits = new double[end];
                    ReadOnlySpan<float> q = x.QueryRow(s, h, r);
                    for (int k = 0; k < end; k++)
                    {
                        ReadOnlySpan<float> key = x.KeyRow(s, h / x.GroupSize, k);
                        double dot = 0;
                        for (int i = 0; i < q.Length; i++) dot += (double)q[i] * key[i];
                        logits[k] = dot * scale;
                    }
                    double max = logits.Max(), z = 0, covered = 0;
                    for (int k = 0; k < end; k++)
                    {
                        double e = Math.Exp(logits[k] - max);
                        z += e;
                        if (plan.Mask.IsVisible(s, h, pos, k)) covered += e;
                    }
                    total += covered / z;
                    rows++;
                }
        return total / rows;
    }
}
