using Attend.Linear;
using Attend.Reference;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>One random linear-attention problem (shape, options, inputs) and helpers to run it in each form.</summary>
internal sealed class LinearCase
{
    public LinearShape Shape;
    public int[]? Lengths;
    public LinearAttentionOptions Options = new();
    public float[] Q = [], K = [], V = [], Gate = [], Beta = [], State = [];

    /// <summary>How far from 1 the decays are: "mid" (α in 0.8..1), "one" (α ≈ 1 − 1e-4), "zero" (α ≈ e^-20).</summary>
    public string GateRegime = "mid";

    public LinearConfig Config => LinearConfig.Resolve(Inputs, Options);

    public LinearInputs Inputs => new()
    {
        Shape = Shape, Q = Q, K = K, V = V, Gate = Gate, Beta = Beta, InitialState = State,
        Offsets = Lengths is null ? null : SeqOffsets.FromLengths(Lengths),
    };

    /// <summary>
    /// Runs the case with its own options (a GPU backend, say) into NaN-poisoned output and final state, and the float64
    /// naive form on the CPU, and asserts both agree within <paramref name="tolerance"/> relative L2 (NaN counts as unwritten).
    /// </summary>
    public void AssertMatchesNaive(double tolerance)
    {
        float[] o = TestData.Poisoned<float>(OutputLength);
        float[] s = TestData.Poisoned<float>(Config.StateLength);
        LinearAttention.Forward(Inputs, Options, o, s);
        var refO = new float[o.Length];
        var refS = new float[s.Length];
        LinearAttention.Forward(Inputs, Options with { Form = LinearForm.Naive, Backend = null }, refO, refS);
        double eo = TestData.RelativeL2(o, refO), es = TestData.RelativeL2(s, refS);
        Assert.True(eo <= tolerance && es <= tolerance, $"seed {TestData.RunSeed}: output rel {eo:E2}, state rel {es:E2} (NaN counts as unwritten)");
    }

    /// <summary>Builds a case: q/k of the given scale (keys L2-normalised by the map for delta rules), random gates, β, initial state.</summary>
    public static LinearCase Create(Random rng, LinearShape shape, LinearAttentionOptions options, int[]? lengths = null,
        string gateRegime = "mid", bool initialState = true, double qkScale = 0.5)
    {
        if (lengths != null) shape = shape with { Batch = 1, Tokens = lengths.Sum() };
        var c = new LinearCase { Shape = shape, Options = options, Lengths = lengths, GateRegime = gateRegime };
        long rows = (long)shape.Batch * shape.Tokens;
        c.Q = TestData.Gaussian<float>(rng, rows * shape.Heads * shape.KeyDim, qkScale);
        c.K = TestData.Gaussian<float>(rng, rows * shape.KvHeads * shape.KeyDim, qkScale);
        c.V = TestData.Gaussian<float>(rng, rows * shape.KvHeads * shape.ValueDim);
        int df = (options.FeatureMap ?? FeatureMaps.Identity).OutputDim(shape.KeyDim);
        LinearDecay decay = options.Decay ?? LinearDecay.None;
        if (decay is LinearDecay.ScalarGate or LinearDecay.ChannelGate)
        {
            long n = rows * shape.Heads * (decay == LinearDecay.ChannelGate ? df : 1);
            c.Gate = new float[n];
            for (long i = 0; i < n; i++)
                c.Gate[i] = gateRegime switch
                {
                    "one" => (float)(-1e-4 * rng.NextDouble()),
                    "zero" => (float)(-20 - 10 * rng.NextDouble()),
                    _ => (float)Math.Log(0.8 + 0.2 * rng.NextDouble()),
                };
        }
        if (options.Update is LinearUpdate.Delta or LinearUpdate.GatedDelta)
        {
            c.Beta = new float[rows * shape.Heads];
            for (int i = 0; i < c.Beta.Length; i++) c.Beta[i] = (float)(0.05 + 0.95 * rng.NextDouble());
        }
        if (initialState)
        {
            var probe = new LinearCase { Shape = shape, Options = options, Lengths = lengths, Q = c.Q, K = c.K, V = c.V, Gate = c.Gate, Beta = c.Beta };
            c.State = TestData.Gaussian<float>(rng, probe.Config.StateLength, 0.3);
        }
        return c;
    }

    public long OutputLength => (long)Shape.Batch * Shape.Tokens * Shape.Heads * Shape.ValueDim;

    /// <summary>Runs <paramref name="form"/> into NaN-poisoned buffers.</summary>
    public (float[] Output, float[] State) Run(LinearForm form)
    {
        var o = TestData.Poisoned<float>(OutputLength);
        var s = TestData.Poisoned<float>(Config.StateLength);
        LinearAttention.Forward(Inputs, Options with { Form = form }, o, s);
        return (o, s);
    }

    public (double[] Output, double[] State) Naive() => ReferenceLinearAttention.Forward(Inputs, Options);

    public override string ToString() =>
        $"B{Shape.Batch} T{Shape.Tokens} H{Shape.Heads}/Hkv{Shape.KvHeads} Dk{Shape.KeyDim} Dv{Shape.ValueDim}" +
        (Lengths is null ? "" : $" varlen[{string.Join(",", Lengths)}]") +
        $" map {(Options.FeatureMap ?? FeatureMaps.Identity).Name} decay {Options.Decay ?? LinearDecay.None}({GateRegime}) update {Options.Update ?? LinearUpdate.Additive}" +
        $" norm {Options.Normalization ?? LinearNormalization.None} chunk {Options.ChunkSize ?? 64} seed {TestData.RunSeed}";
}
