using System.Numerics.Tensors;

namespace Attend.Methods.Linear;

/// <summary>Options of <see cref="AgentAttention"/>; null fields take their defaults.</summary>
public sealed record AgentAttentionOptions
{
    /// <summary>Agent tokens per sequence n (default 64).</summary>
    public int? Agents { get; init; }

    /// <summary>Score scale of both softmax steps; default 1/√D.</summary>
    public float? Scale { get; init; }

    /// <summary>Force a softmax kernel variant for both steps (see <c>attend methods</c>).</summary>
    public string? Variant { get; init; }
}

/// <summary>
/// Agent Attention (Han et al., 2024: "Agent Attention: On the Integration of Softmax and
/// Linear Attention"). n agent tokens A (n ≪ T) are pooled from the queries; the agents first aggregate the sequence,
/// V_A = softmax(A·Kᵀ·scale)·V, then broadcast it back, O = softmax(Q·Aᵀ·scale)·V_A. Cost O(T·n·D) instead of
/// O(T²·D); the paper shows this is a generalised linear attention with the feature map
/// φ_q(Q) = softmax(Q·Aᵀ), φ_k(K) = softmax(A·Kᵀ). Both softmax steps run through <see cref="Attention.Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{float})"/>,
/// with grouped-query keys and values used in place and varlen batches as per-sequence agents.
/// </summary>
/// <remarks>
/// <para>Agents: adaptive average pooling of the queries over the token axis, per head (agent a averages tokens
/// [⌊a·T/n⌋, ⌈(a+1)·T/n⌉) of its sequence), as the paper pools the query map; a sequence shorter than n still gets n
/// (overlapping) agents.</para>
/// <para>Training: <see cref="Backward"/> runs both softmax steps backward on the shared kernels and the pooling's
/// adjoint (checked against finite differences of the float64 definition).</para>
/// <para>Deviations from the paper: pooling is 1-D over tokens (the paper pools the 2-D image grid); the agent bias
/// (position biases added to both softmax steps) and the depthwise-convolution term DWC(V) added to the output are
/// left out, as they are learned parts of the vision block, not of the attention; the method is non-causal like the
/// paper's (agents see the whole sequence), so it has no recurrent form and no state. Both softmax steps need
/// Dv = Dk (the softmax kernels' contract).</para>
/// </remarks>
public static class AgentAttention
{
    /// <summary>Agent tokens <c>[N·n, H, Dk]</c> (sequence-major) pooled from <paramref name="q"/>.</summary>
    public static void PoolAgents(ReadOnlySpan<float> q, LinearExtraShape shape, int agents, Span<float> agentTokens)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (agents < 1) throw new ArgumentOutOfRangeException(nameof(agents), agents, "Agent count must be at least 1.");
        int hd = shape.Heads * shape.KeyDim;
        if (agentTokens.Length != (long)shape.Sequences * agents * hd)
            throw new ArgumentException($"agentTokens holds {agentTokens.Length} floats; [N·n, H, Dk] needs {(long)shape.Sequences * agents * hd}.", nameof(agentTokens));
        agentTokens.Clear();
        for (int n = 0; n < shape.Sequences; n++)
        {
            int length = shape.Length(n);
            if (length == 0) continue;
            for (int a = 0; a < agents; a++)
            {
                int t0 = (int)((long)a * length / agents), t1 = (int)(((long)(a + 1) * length + agents - 1) / agents);
                Span<float> agent = agentTokens.Slice((n * agents + a) * hd, hd);
                for (int t = t0; t < t1; t++) TensorPrimitives.Add(agent, q.Slice((int)shape.Q(shape.Start(n) + t, 0), hd), agent);
                TensorPrimitives.Multiply(agent, 1f / (t1 - t0), agent);
            }
        }
    }

    /// <summary>Agent attention of <paramref name="q"/>, <paramref name="k"/>, <paramref name="v"/> into <paramref name="output"/> <c>[B, T, H, Dv]</c>.</summary>
    /// <exception cref="ArgumentException">Mis-sized spans, Dv ≠ Dk, or a bad option; the message names it.</exception>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        AgentAttentionOptions? options, Span<float> output)
    {
        ArgumentNullException.ThrowIfNull(shape);
        options ??= new AgentAttentionOptions();
        int agents = options.Agents ?? 64;
        if (agents < 1) throw new ArgumentOutOfRangeException(nameof(options), agents, "Agents must be at least 1.");
        shape.Validate(q.Length, k.Length, v.Length, output.Length);
        if (shape.ValueDim != shape.KeyDim)
            throw new ArgumentException($"Agent attention runs both steps on the softmax kernels, which need Dv = Dk; got Dv = {shape.ValueDim}, Dk = {shape.KeyDim}.", nameof(v));
        if (shape.Tokens == 0) return;
        int nSeq = shape.Sequences, h = shape.Heads, hkv = shape.KvHeads, d = shape.KeyDim;
        var agentTokens = new float[(long)nSeq * agents * h * d];
        var agentValues = new float[agentTokens.Length];
        PoolAgents(q, shape, agents, agentTokens);

        // Padded batch: agents are [B, n, H, D]; varlen: one packed batch [1, N·n, H, D] with offsets n·i.
        int ab = shape.Offsets is null ? shape.Batch : 1, at = shape.Offsets is null ? agents : nSeq * agents;
        SeqOffsets? agentOffsets = null;
        if (shape.Offsets is not null)
        {
            var lengths = new int[nSeq];
            for (int n = 0; n < nSeq; n++) lengths[n] = shape.Length(n) == 0 ? 0 : agents;
            agentOffsets = SeqOffsets.FromLengths(lengths);
        }
        var aggregate = new AttentionOptions { Scale = options.Scale, Variant = options.Variant, QueryOffsets = agentOffsets, KeyOffsets = shape.Offsets };
        var broadcast = new AttentionOptions { Scale = options.Scale, Variant = options.Variant, QueryOffsets = shape.Offsets, KeyOffsets = agentOffsets };
        int b = shape.Batch, t = shape.Tokens;
        // ReadOnlySpan → TensorSpan views need writable spans; the kernels only read q, k, v.
        Attention.Forward<float>(
            AttentionLayout.Bthd<float>(agentTokens, ab, at, h, d),
            AttentionLayout.Bthd(AsWritable(k), b, t, hkv, d),
            AttentionLayout.Bthd(AsWritable(v), b, t, hkv, d),
            aggregate,
            AttentionLayout.Bthd<float>(agentValues, ab, at, h, d));
        Attention.Forward<float>(
            AttentionLayout.Bthd(AsWritable(q), b, t, h, d),
            AttentionLayout.Bthd<float>(agentTokens, ab, at, h, d),
            AttentionLayout.Bthd<float>(agentValues, ab, at, h, d),
            broadcast,
            AttentionLayout.Bthd(output, b, t, h, d));
    }

    /// <summary>
    /// Gradients of Σ dO ⊙ AgentAttention(q, k, v): the forward is recomputed (with its LSEs), then both softmax steps
    /// run backward through <see cref="Attention.Backward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{float}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T})"/>
    /// (broadcast: dQ, dA, dV_A; aggregate with dV_A as its output gradient: dA, dK, dV), and the agents' gradient
    /// flows back to the queries through the pooling's adjoint.
    /// </summary>
    /// <param name="q">Queries <c>[B, T, H, D]</c>.</param>
    /// <param name="k">Keys <c>[B, T, Hkv, D]</c>.</param>
    /// <param name="v">Values <c>[B, T, Hkv, D]</c>.</param>
    /// <param name="shape">Dimensions (and varlen offsets).</param>
    /// <param name="options">The forward's options.</param>
    /// <param name="outputGradient">dO <c>[B, T, H, D]</c>.</param>
    /// <param name="dq">dQ, overwritten.</param>
    /// <param name="dk">dK, overwritten (query heads of a group add up).</param>
    /// <param name="dv">dV, overwritten.</param>
    /// <exception cref="ArgumentException">Mis-sized spans, Dv ≠ Dk, or a bad option; the message names it.</exception>
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape,
        AgentAttentionOptions? options, ReadOnlySpan<float> outputGradient, Span<float> dq, Span<float> dk, Span<float> dv)
    {
        ArgumentNullException.ThrowIfNull(shape);
        options ??= new AgentAttentionOptions();
        int agents = options.Agents ?? 64;
        if (agents < 1) throw new ArgumentOutOfRangeException(nameof(options), agents, "Agents must be at least 1.");
        shape.Validate(q.Length, k.Length, v.Length, outputGradient.Length);
        if (shape.ValueDim != shape.KeyDim)
            throw new ArgumentException($"Agent attention runs both steps on the softmax kernels, which need Dv = Dk; got Dv = {shape.ValueDim}, Dk = {shape.KeyDim}.", nameof(v));
        if (dq.Length != q.Length) throw new ArgumentException($"dq holds {dq.Length} floats; q has {q.Length}.", nameof(dq));
        if (dk.Length != k.Length) throw new ArgumentException($"dk holds {dk.Length} floats; k has {k.Length}.", nameof(dk));
        if (dv.Length != v.Length) throw new ArgumentException($"dv holds {dv.Length} floats; v has {v.Length}.", nameof(dv));
        dq.Clear();
        dk.Clear();
        dv.Clear();
        if (shape.Tokens == 0) return;
        int nSeq = shape.Sequences, h = shape.Heads, hkv = shape.KvHeads, d = shape.KeyDim, b = shape.Batch, t = shape.Tokens;
        long agentCount = (long)nSeq * agents * h * d;
        var agentTokens = new float[agentCount];
        var agentValues = new float[agentCount];
        var output = new float[shape.OutputCount];
        PoolAgents(q, shape, agents, agentTokens);
        int ab = shape.Offsets is null ? b : 1, at = shape.Offsets is null ? agents : nSeq * agents;
        SeqOffsets? agentOffsets = null;
        if (shape.Offsets is not null)
        {
            var lengths = new int[nSeq];
            for (int n = 0; n < nSeq; n++) lengths[n] = shape.Length(n) == 0 ? 0 : agents;
            agentOffsets = SeqOffsets.FromLengths(lengths);
        }
        var aggregate = new AttentionOptions { Scale = options.Scale, Variant = options.Variant, QueryOffsets = agentOffsets, KeyOffsets = shape.Offsets };
        var broadcast = new AttentionOptions { Scale = options.Scale, Variant = options.Variant, QueryOffsets = shape.Offsets, KeyOffsets = agentOffsets };
        var lse1 = new float[(long)ab * h * at];
        var lse2 = new float[(long)b * h * t];
        Span<float> kK = AsWritable(k), kV = AsWritable(v), kQ = AsWritable(q);
        Attention.Forward<float>(AttentionLayout.Bthd<float>(agentTokens, ab, at, h, d), AttentionLayout.Bthd(kK, b, t, hkv, d),
            AttentionLayout.Bthd(kV, b, t, hkv, d), aggregate, AttentionLayout.Bthd<float>(agentValues, ab, at, h, d), AttentionLayout.Lse(lse1, ab, h, at));
        Attention.Forward<float>(AttentionLayout.Bthd(kQ, b, t, h, d), AttentionLayout.Bthd<float>(agentTokens, ab, at, h, d),
            AttentionLayout.Bthd<float>(agentValues, ab, at, h, d), broadcast, AttentionLayout.Bthd<float>(output, b, t, h, d), AttentionLayout.Lse(lse2, b, h, t));

        var dAgents = new float[agentCount];
        var dAgentValues = new float[agentCount];
        var dAgentsFromAggregate = new float[agentCount];
        Attention.Backward<float>(AttentionLayout.Bthd(kQ, b, t, h, d), AttentionLayout.Bthd<float>(agentTokens, ab, at, h, d),
            AttentionLayout.Bthd<float>(agentValues, ab, at, h, d), AttentionLayout.Bthd<float>(output, b, t, h, d),
            AttentionLayout.Bthd(AsWritable(outputGradient), b, t, h, d), AttentionLayout.Lse(lse2, b, h, t), broadcast,
            AttentionLayout.Bthd(dq, b, t, h, d), AttentionLayout.Bthd<float>(dAgents, ab, at, h, d), AttentionLayout.Bthd<float>(dAgentValues, ab, at, h, d));
        Attention.Backward<float>(AttentionLayout.Bthd<float>(agentTokens, ab, at, h, d), AttentionLayout.Bthd(kK, b, t, hkv, d),
            AttentionLayout.Bthd(kV, b, t, hkv, d), AttentionLayout.Bthd<float>(agentValues, ab, at, h, d),
            AttentionLayout.Bthd<float>(dAgentValues, ab, at, h, d), AttentionLayout.Lse(lse1, ab, h, at), aggregate,
            AttentionLayout.Bthd<float>(dAgentsFromAggregate, ab, at, h, d), AttentionLayout.Bthd(dk, b, t, hkv, d), AttentionLayout.Bthd(dv, b, t, hkv, d));
        TensorPrimitives.Add(dAgents, dAgentsFromAggregate, dAgents);

        // The pooling's adjoint: agent a averaged tokens [t0, t1), so each of them gets dA_a / (t1 − t0).
        int hd = h * d;
        for (int n = 0; n < nSeq; n++)
        {
            int length = shape.Length(n);
            if (length == 0) continue;
            for (int a = 0; a < agents; a++)
            {
                int t0 = (int)((long)a * length / agents), t1 = (int)(((long)(a + 1) * length + agents - 1) / agents);
                ReadOnlySpan<float> dA = dAgents.AsSpan((n * agents + a) * hd, hd);
                for (int x = t0; x < t1; x++)
                {
                    Span<float> row = dq.Slice((int)shape.Q(shape.Start(n) + x, 0), hd);
                    TensorPrimitives.MultiplyAdd(dA, 1f / (t1 - t0), row, row);
                }
            }
        }
    }

    private static Span<float> AsWritable(ReadOnlySpan<float> span) =>
        System.Runtime.InteropServices.MemoryMarshal.CreateSpan(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(span), span.Length);
}

/// <summary>The float64 definition of <see cref="AgentAttention"/> (pooling, then the two softmax steps, directly).</summary>
public static class AgentAttentionReference
{
    /// <summary>Output <c>[B, T, H, Dv]</c> in float64.</summary>
    public static double[] Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, LinearExtraShape shape, int agents, float? scale)
    {
        ArgumentNullException.ThrowIfNull(shape);
        int h = shape.Heads, dk = shape.KeyDim, dv = shape.ValueDim;
        double sc = scale ?? 1.0 / Math.Sqrt(dk);
        var output = new double[shape.OutputCount];
        for (int n = 0; n < shape.Sequences; n++)
        {
            int length = shape.Length(n), start = shape.Start(n);
            if (length == 0) continue;
            for (int head = 0; head < h; head++)
            {
                int g = head / shape.Group;
                var a = new double[agents, dk];
                for (int i = 0; i < agents; i++)
                {
                    int t0 = (int)((long)i * length / agents), t1 = (int)(((long)(i + 1) * length + agents - 1) / agents);
                    for (int t = t0; t < t1; t++)
                        for (int x = 0; x < dk; x++) a[i, x] += q[(int)shape.Q(start + t, head) + x];
                    for (int x = 0; x < dk; x++) a[i, x] /= t1 - t0;
                }
                var va = new double[agents, dv];
                var p = new double[length];
                for (int i = 0; i < agents; i++)
                {
                    for (int j = 0; j < length; j++)
                    {
                        double s = 0;
                        for (int x = 0; x < dk; x++) s += a[i, x] * k[(int)shape.K(start + j, g) + x];
                        p[j] = sc * s;
                    }
                    Softmax(p);
                    for (int j = 0; j < length; j++)
                        for (int x = 0; x < dv; x++) va[i, x] += p[j] * v[(int)shape.V(start + j, g) + x];
                }
                var pa = new double[agents];
                for (int t = 0; t < length; t++)
                {
                    for (int i = 0; i < agents; i++)
                    {
                        double s = 0;
                        for (int x = 0; x < dk; x++) s += (double)q[(int)shape.Q(start + t, head) + x] * a[i, x];
                        pa[i] = sc * s;
                    }
                    Softmax(pa);
                    long o = shape.O(start + t, head);
                    for (int i = 0; i < agents; i++)
                        for (int x = 0; x < dv; x++) output[o + x] += pa[i] * va[i, x];
                }
            }
        }
        return output;
    }

    internal static void Softmax(Span<double> x)
    {
        double m = double.NegativeInfinity;
        foreach (double e in x) m = Math.Max(m, e);
        double sum = 0;
        for (int i = 0; i < x.Length; i++) sum += x[i] = Math.Exp(x[i] - m);
        for (int i = 0; i < x.Length; i++) x[i] /= sum;
    }
}

/// <summary>
/// <see cref="AgentAttention"/> as a runnable method (forms naive and chunked; non-causal, so no recurrent form and no
/// state). Inputs: <c>q</c>, <c>k</c>, <c>v</c> (Dv = Dk).
/// </summary>
public sealed class AgentAttentionMethod : IAttentionMethod
{
    /// <summary>The name under which <c>attend run --method</c> finds it.</summary>
    public const string Name = "agent-attention";

    /// <inheritdoc />
    public MethodInfo Info { get; } = new(Name, "linear", "method",
        "Agent Attention: On the Integration of Softmax and Linear Attention (Han et al., 2024)", ["cpu"], "implemented",
        "n agent tokens pooled from Q: softmax(A·Kᵀ)·V, then softmax(Q·Aᵀ)·V_A (non-causal, O(T·n·D))")
    {
        Parameters =
        [
            LinearExtraMethods.FormParameter("chunked", "naive", "chunked"),
            new MethodParameter("agents", "int", "64", "agent tokens per sequence"),
            new MethodParameter("scale", "float", "1/sqrt(D)", "score scale of both softmax steps"),
        ],
    };

    /// <inheritdoc />
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        LinearExtraShape shape = LinearExtraShape.Of(inputs);
        string form = LinearExtraMethods.Form(arguments, "chunked", "naive", "chunked");
        int agents = arguments.GetInt("agents", 64, min: 1);
        float? scale = arguments.Has("scale") ? (float)arguments.GetDouble("scale", 0) : null;
        arguments.ThrowIfUnused(Name);
        var output = new float[shape.OutputCount];
        if (form == "naive")
        {
            double[] o = AgentAttentionReference.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, agents, scale);
            for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
        }
        else AgentAttention.Forward(inputs.Q.Data, inputs.K.Data, inputs.V.Data, shape, new AgentAttentionOptions { Agents = agents, Scale = scale }, output);
        var result = new MethodResult(new MethodTensor(output, shape.Batch, shape.Tokens, shape.Heads, shape.ValueDim));
        result.Report.Add(new("form", form));
        result.Report.Add(new("agents", agents.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }
}
