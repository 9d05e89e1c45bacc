using System.Buffers;

namespace Attend.Linear;

/// <summary>
/// The inputs of one linear-attention call in a 16-bit element type (<see cref="Half"/> or <see cref="BFloat16"/>;
/// float also works): q, k, v in <typeparamref name="T"/>; gates, β and the initial state stay float32, like the state
/// the kernel keeps. An empty span means absent, as in <see cref="LinearInputs"/>.
/// </summary>
/// <typeparam name="T">Half, BFloat16 or float.</typeparam>
public readonly ref struct LinearInputs<T> where T : unmanaged
{
    /// <summary>The dimensions.</summary>
    public required LinearShape Shape { get; init; }

    /// <summary>Queries <c>[B, T, H, Dk]</c>.</summary>
    public required ReadOnlySpan<T> Q { get; init; }

    /// <summary>Keys <c>[B, T, Hkv, Dk]</c>.</summary>
    public required ReadOnlySpan<T> K { get; init; }

    /// <summary>Values <c>[B, T, Hkv, Dv]</c>.</summary>
    public required ReadOnlySpan<T> V { get; init; }

    /// <summary>Log decay gates (float32), as <see cref="LinearInputs.Gate"/>.</summary>
    public ReadOnlySpan<float> Gate { get; init; }

    /// <summary>β (float32), as <see cref="LinearInputs.Beta"/>.</summary>
    public ReadOnlySpan<float> Beta { get; init; }

    /// <summary>The initial state (float32), as <see cref="LinearInputs.InitialState"/>.</summary>
    public ReadOnlySpan<float> InitialState { get; init; }

    /// <summary>Varlen offsets, as <see cref="LinearInputs.Offsets"/>.</summary>
    public SeqOffsets? Offsets { get; init; }
}

/// <summary>The gradients one low-precision <see cref="LinearAttention.Backward{T}"/> call writes (an empty span: not wanted).</summary>
/// <typeparam name="T">The element type of q, k, v.</typeparam>
public readonly ref struct LinearGradients<T> where T : unmanaged
{
    /// <summary>dL/dq <c>[B, T, H, Dk]</c> in <typeparamref name="T"/>.</summary>
    public Span<T> Q { get; init; }

    /// <summary>dL/dk <c>[B, T, Hkv, Dk]</c> in <typeparamref name="T"/>.</summary>
    public Span<T> K { get; init; }

    /// <summary>dL/dv <c>[B, T, Hkv, Dv]</c> in <typeparamref name="T"/>.</summary>
    public Span<T> V { get; init; }

    /// <summary>dL/d(log gate), float32.</summary>
    public Span<float> Gate { get; init; }

    /// <summary>dL/dβ, float32.</summary>
    public Span<float> Beta { get; init; }

    /// <summary>dL/d(initial state), float32.</summary>
    public Span<float> InitialState { get; init; }
}

public static partial class LinearAttention
{
    /// <summary>
    /// <see cref="Forward(in LinearInputs, LinearAttentionOptions?, Span{float}, Span{float})"/> on 16-bit q, k, v: they
    /// are widened to float32 once (exactly: every Half and BFloat16 is a float), the state and every product accumulate
    /// in float32, and the output is rounded to <typeparamref name="T"/> (round to nearest even). The final state stays
    /// float32. So the output equals the float32 call on the widened inputs, rounded once.
    /// </summary>
    /// <typeparam name="T">Half, BFloat16 or float.</typeparam>
    /// <param name="inputs">q, k, v in <typeparamref name="T"/>; gates, β, initial state in float32.</param>
    /// <param name="options">As for float32.</param>
    /// <param name="output">Receives o <c>[B, T, H, Dv]</c> in <typeparamref name="T"/>.</param>
    /// <param name="finalState">Receives the final state (float32), or empty.</param>
    /// <exception cref="ArgumentException">As for float32.</exception>
    /// <exception cref="NotSupportedException"><typeparamref name="T"/> is not Half, BFloat16 or float.</exception>
    public static unsafe void Forward<T>(in LinearInputs<T> inputs, LinearAttentionOptions? options, Span<T> output, Span<float> finalState)
        where T : unmanaged
    {
        ElementTypes.Of<T>();
        float[] q = Widen(inputs.Q), k = Widen(inputs.K), v = Widen(inputs.V);
        float[] o = ArrayPool<float>.Shared.Rent(output.Length);
        try
        {
            LinearInputs wide = Widened(inputs, q, k, v);
            Forward(wide, options, o.AsSpan(0, output.Length), finalState);
            Narrow(o, output);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(q); ArrayPool<float>.Shared.Return(k); ArrayPool<float>.Shared.Return(v); ArrayPool<float>.Shared.Return(o);
        }
    }

    /// <summary>
    /// <see cref="Backward(in LinearInputs, LinearAttentionOptions?, ReadOnlySpan{float}, ReadOnlySpan{float}, in LinearGradients)"/>
    /// on 16-bit q, k, v and output gradient: widened once, every gradient accumulated in float32, dq, dk, dv rounded to
    /// <typeparamref name="T"/> at the end; the gate, β and initial-state gradients stay float32.
    /// </summary>
    /// <typeparam name="T">Half, BFloat16 or float.</typeparam>
    /// <param name="inputs">The forward inputs.</param>
    /// <param name="options">The forward options.</param>
    /// <param name="outputGradient">dL/dO <c>[B, T, H, Dv]</c> in <typeparamref name="T"/>.</param>
    /// <param name="finalStateGradient">dL/dS_T (float32), or empty.</param>
    /// <param name="gradients">Where the gradients go.</param>
    /// <exception cref="ArgumentException">As for float32.</exception>
    /// <exception cref="NotSupportedException"><typeparamref name="T"/> is not Half, BFloat16 or float.</exception>
    public static unsafe void Backward<T>(in LinearInputs<T> inputs, LinearAttentionOptions? options, ReadOnlySpan<T> outputGradient,
        ReadOnlySpan<float> finalStateGradient, in LinearGradients<T> gradients)
        where T : unmanaged
    {
        ElementTypes.Of<T>();
        float[] q = Widen(inputs.Q), k = Widen(inputs.K), v = Widen(inputs.V), dO = Widen(outputGradient);
        float[]? dq = gradients.Q.IsEmpty ? null : ArrayPool<float>.Shared.Rent(gradients.Q.Length);
        float[]? dk = gradients.K.IsEmpty ? null : ArrayPool<float>.Shared.Rent(gradients.K.Length);
        float[]? dv = gradients.V.IsEmpty ? null : ArrayPool<float>.Shared.Rent(gradients.V.Length);
        try
        {
            LinearInputs wide = Widened(inputs, q, k, v);
            var g = new LinearGradients
            {
                Q = dq.AsSpan(0, gradients.Q.Length), K = dk.AsSpan(0, gradients.K.Length), V = dv.AsSpan(0, gradients.V.Length),
                Gate = gradients.Gate, Beta = gradients.Beta, InitialState = gradients.InitialState,
            };
            Backward(wide, options, dO.AsSpan(0, outputGradient.Length), finalStateGradient, g);
            if (dq != null) Narrow(dq, gradients.Q);
            if (dk != null) Narrow(dk, gradients.K);
            if (dv != null) Narrow(dv, gradients.V);
        }
        finally
        {
            foreach (float[]? a in (float[]?[])[q, k, v, dO, dq, dk, dv])
                if (a != null) ArrayPool<float>.Shared.Return(a);
        }
    }

    // The pooled arrays are longer than asked for: the spans below cut them to the caller's lengths.
    private static LinearInputs Widened<T>(in LinearInputs<T> inputs, float[] q, float[] k, float[] v) where T : unmanaged => new()
    {
        Shape = inputs.Shape, Q = q.AsSpan(0, inputs.Q.Length), K = k.AsSpan(0, inputs.K.Length), V = v.AsSpan(0, inputs.V.Length),
        Gate = inputs.Gate, Beta = inputs.Beta, InitialState = inputs.InitialState, Offsets = inputs.Offsets,
    };

    private static unsafe float[] Widen<T>(ReadOnlySpan<T> source) where T : unmanaged
    {
        float[] wide = ArrayPool<float>.Shared.Rent(Math.Max(1, source.Length));
        fixed (T* s = source)
        fixed (float* d = wide)
            ElementConvert.ToSingle(s, d, source.Length);
        return wide;
    }

    private static unsafe void Narrow<T>(float[] source, Span<T> destination) where T : unmanaged
    {
        fixed (float* s = source)
        fixed (T* d = destination)
            ElementConvert.FromSingle(s, d, destination.Length);
    }
}
