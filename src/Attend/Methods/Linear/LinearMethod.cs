using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// What one linear-family method asks of <see cref="LinearAttention"/>: its options and the gates and β it took from
/// the named inputs (or computed).
/// </summary>
/// <param name="Options">Feature map, decay, update, normalisation (the form and chunk size are filled in by <see cref="LinearMethod"/>).</param>
public sealed record LinearCall(LinearAttentionOptions Options)
{
    /// <summary>Log gates (<c>[B, T, H]</c> or <c>[B, T, H, Df]</c>), or null.</summary>
    public float[]? Gate { get; init; }

    /// <summary>β <c>[B, T, H]</c>, or null.</summary>
    public float[]? Beta { get; init; }

    /// <summary>When set, computes the whole result instead of the state kernel (TransNormer's DiagAttention).</summary>
    public Func<MethodInputs, LinearShape, MethodResult>? Instead { get; init; }

    /// <summary>When set, runs after the state kernel on its result (Based adds its sliding-window branch).</summary>
    public Action<MethodInputs, LinearShape, MethodResult>? After { get; init; }
}

/// <summary>
/// The shared front of the linear / recurrent methods: reads <c>q</c>, <c>k</c>, <c>v</c> (<c>[B, T, H, D]</c>, GQA and
/// varlen allowed), the parameters <c>form</c> (naive|chunked|recurrent) and <c>chunk</c>, the optional input
/// <c>state</c> (the initial state <c>[N, H, Df, Dv']</c>), runs <see cref="LinearAttention.Forward"/> and returns the
/// final state as <c>Extras["state"]</c>. A decode step is a call with T = 1, <c>form=recurrent</c> and the previous
/// state. Each method supplies its options through <see cref="Configure"/>.
/// </summary>
public abstract class LinearMethod : IAttentionMethod
{
    /// <summary>The <c>form</c> parameter every linear method takes.</summary>
    public static readonly MethodParameter FormParameter = new("form", "naive|chunked|recurrent", "chunked",
        "naive: float64 quadratic oracle; chunked: parallel prefill/training form; recurrent: step form (decode); every form reads the initial state as input state [N,H,Df,Dv'] and returns the final one");

    /// <summary>The <c>chunk</c> parameter every linear method takes.</summary>
    public static readonly MethodParameter ChunkParameter = new("chunk", "int", "64", "tokens per chunk of the chunked form");

    /// <inheritdoc />
    public abstract MethodInfo Info { get; }

    /// <summary>Reads the method's own parameters and inputs (gates, β, weights) and returns what to run.</summary>
    /// <param name="inputs">The named inputs.</param>
    /// <param name="arguments">The parameters (read each one the method knows).</param>
    /// <param name="shape">The q/k/v dimensions.</param>
    protected abstract LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape);

    /// <summary>
    /// What <see cref="Run"/> would hand to <see cref="LinearAttention"/> for these inputs and parameters (options with the
    /// form and chunk filled in, gates, β), without running it: lets the tests take each method's exact configuration
    /// through the engine's backward and the float64 reference.
    /// </summary>
    internal LinearCall Plan(MethodInputs inputs, MethodArguments arguments)
    {
        LinearShape shape = ShapeOf(inputs);
        LinearForm form = ParseForm(arguments);
        int chunk = arguments.GetInt("chunk", 64, 1, 1024);
        LinearCall call = Configure(inputs, arguments, shape);
        return call with { Options = call.Options with { Form = form, ChunkSize = chunk } };
    }

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearShape shape = ShapeOf(inputs);
        LinearForm form = ParseForm(arguments);
        int chunk = arguments.GetInt("chunk", 64, 1, 1024);
        LinearCall call = Configure(inputs, arguments, shape);
        arguments.ThrowIfUnused(Info.Name);
        if (call.Instead is { } instead) return instead(inputs, shape);
        MethodResult result;
        try { result = Execute(inputs, shape, WithBackend(call.Options with { Form = form, ChunkSize = chunk }, AttentionBackend.Current), call.Gate, call.Beta); }
        catch (ArgumentException e) when (e.ParamName == "gate")
        {
            // The engine calls the gates "gate"; the methods read them as the input "g" (a value out of range, or a
            // tensor of the wrong length).
            string message = $"Input 'g': {e.Message.Replace(" (Parameter 'gate')", "", StringComparison.Ordinal)}";
            throw e is ArgumentOutOfRangeException ? new ArgumentOutOfRangeException("g", message) : new ArgumentException(message, "g");
        }
        result.Report.Add(new("form", form.ToString().ToLowerInvariant()));
        call.After?.Invoke(inputs, shape, result);
        return result;
    }

    /// <summary>
    /// The options with <see cref="LinearAttentionOptions.Backend"/> taken from <paramref name="backend"/> (the
    /// <see cref="AttentionBackend.Use"/> scope of <see cref="MethodRunner.Run"/>) when the method named none itself, so
    /// <c>attend run --method NAME --backend cuda</c> runs the linear kernel there; <c>null</c> or <c>cpu</c> change nothing.
    /// </summary>
    /// <exception cref="NotSupportedException">The naive form (the float64 CPU reference) on another backend.</exception>
    public static LinearAttentionOptions WithBackend(LinearAttentionOptions options, string? backend)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Backend is not null || backend is null || backend.Equals("cpu", StringComparison.OrdinalIgnoreCase)) return options;
        if ((options.Form ?? LinearForm.Chunked) == LinearForm.Naive)
            throw new NotSupportedException($"form=naive is the float64 CPU reference; it does not run on '{backend}' (use form=chunked or form=recurrent)");
        return options with { Backend = backend };
    }

    /// <summary>The <c>form</c> parameter.</summary>
    public static LinearForm ParseForm(MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        return arguments.GetChoice("form", "chunked", "naive", "chunked", "recurrent") switch
        {
            "naive" => LinearForm.Naive,
            "recurrent" => LinearForm.Recurrent,
            _ => LinearForm.Chunked,
        };
    }

    /// <summary>The dimensions of q, k, v (checked to agree).</summary>
    /// <exception cref="ArgumentException">k or v disagree with q.</exception>
    public static LinearShape ShapeOf(MethodInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        if (k.Dim(0) != q.Dim(0) || k.Dim(1) != q.Dim(1) || v.Dim(0) != q.Dim(0) || v.Dim(1) != q.Dim(1))
            throw new ArgumentException($"k {k} and v {v} must have q's batch and tokens {q}: a linear method reads keys at the query positions.", "k");
        if (k.Dim(3) != q.Dim(3)) throw new ArgumentException($"k's head dim {k.Dim(3)} must equal q's {q.Dim(3)}.", "k");
        if (v.Dim(2) != k.Dim(2)) throw new ArgumentException($"v has {v.Dim(2)} heads but k has {k.Dim(2)}.", "v");
        return new LinearShape(q.Dim(0), q.Dim(1), q.Dim(2), k.Dim(2), q.Dim(3), v.Dim(3));
    }

    /// <summary>An optional input checked against its expected shape; null when absent.</summary>
    /// <exception cref="ArgumentException">It is present with another element count.</exception>
    public static float[]? OptionalInput(MethodInputs inputs, string name, long count, string shape)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        MethodTensor? t = inputs.Find(name);
        if (t is null) return null;
        if (t.Data.LongLength != count) throw new ArgumentException($"Input '{name}' {t} must be {shape} ({count} values).", name);
        return t.Data;
    }

    /// <summary>Runs <see cref="LinearAttention.Forward"/> on the method inputs (and their <c>state</c>) and wraps the result.</summary>
    public static MethodResult Execute(MethodInputs inputs, LinearShape shape, LinearAttentionOptions options, float[]? gate, float[]? beta)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(options);
        var probe = new LinearInputs
        {
            Shape = shape, Q = inputs.Q.Data, K = inputs.K.Data, V = inputs.V.Data, Gate = gate, Beta = beta, Offsets = inputs.Offsets,
        };
        LinearConfig config = LinearConfig.Resolve(probe, options);
        int n = config.Sequences, df = config.FeatureDim, dvs = config.StateColumns;
        float[]? state = OptionalInput(inputs, "state", config.StateLength, $"[N = {n}, H = {shape.Heads}, Df = {df}, Dv' = {dvs}]");
        var output = new float[(long)shape.Batch * shape.Tokens * shape.Heads * shape.ValueDim];
        var final = new float[config.StateLength];
        LinearAttention.Forward(probe with { InitialState = state }, options, output, final);
        var result = new MethodResult(new MethodTensor(output, shape.Batch, shape.Tokens, shape.Heads, shape.ValueDim));
        result.Extras["state"] = new MethodTensor(final, n, shape.Heads, df, dvs);
        result.Report.Add(new("feature_map", config.Map.Name));
        result.Report.Add(new("state", $"[{n}, {shape.Heads}, {df}, {dvs}] float32"));
        return result;
    }
}
