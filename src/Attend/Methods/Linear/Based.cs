using System.Numerics.Tensors;
using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Based's two branches as one typed call, with its backward (<see cref="BasedMethod"/> is the runnable adapter and its
/// header lists the deviations from the paper): the Taylor linear branch (<see cref="FeatureMaps.Taylor2"/>, running
/// denominator) on <see cref="LinearAttention"/>, plus, for a window W &gt; 0, exact causal sliding-window softmax
/// attention (mask <c>window:W−1,0</c>, scale 1/√Dk) on <see cref="Attention"/>: <c>o = linear(q, k, v) + window(q, k, v)</c>
/// (the adapter's <c>combine=sum</c>).
/// </summary>
public static class Based
{
    /// <summary>The linear branch's options (Taylor map, denominator) with the given form and chunk.</summary>
    public static LinearAttentionOptions LinearOptions(LinearForm form = LinearForm.Chunked, int chunk = 64) =>
        new() { FeatureMap = FeatureMaps.Taylor2, Normalization = LinearNormalization.Denominator, Form = form, ChunkSize = chunk };

    /// <summary>The window branch's options: causal sliding window of <paramref name="window"/> tokens (the token itself included).</summary>
    public static AttentionOptions WindowOptions(int window, SeqOffsets? offsets) =>
        new() { Mask = new SlidingWindowMask(window - 1, 0), QueryOffsets = offsets, KeyOffsets = offsets };

    /// <summary>o = linear branch + window branch into <paramref name="output"/> <c>[B, T, H, Dv]</c>.</summary>
    /// <param name="inputs">q, k, v <c>[B, T, H(kv), D]</c> (Dk = Dv when there is a window branch), optional initial state and varlen offsets.</param>
    /// <param name="window">W ≥ 0 (0: the linear branch alone).</param>
    /// <param name="output">Receives o.</param>
    /// <param name="linearOptions">The linear branch's options; null for <see cref="LinearOptions"/>().</param>
    /// <exception cref="ArgumentException">Mis-shaped inputs, a negative window, or a window branch with Dk ≠ Dv.</exception>
    public static void Forward(in LinearInputs inputs, int window, Span<float> output, LinearAttentionOptions? linearOptions = null)
    {
        LinearShape s = Check(inputs, window);
        LinearAttention.Forward(inputs, linearOptions ?? LinearOptions(), output, []);
        if (window == 0) return;
        float[] local = new float[output.Length];
        WindowForward(inputs, s, window, local, []);
        for (int i = 0; i < output.Length; i++) output[i] += local[i];
    }

    /// <summary>
    /// dq, dk, dv of <c>L = Σ outputGradient·o</c> (and dS₀ of the linear branch's initial state): the linear branch's
    /// chunked backward plus the window branch's flash backward (the window's forward is recomputed for its LSE).
    /// </summary>
    /// <param name="inputs">As in the forward.</param>
    /// <param name="window">As in the forward.</param>
    /// <param name="outputGradient">dL/do <c>[B, T, H, Dv]</c>.</param>
    /// <param name="gradients">Where dq, dk, dv (and the initial state's gradient) go; an empty span is not wanted.</param>
    /// <param name="linearOptions">As in the forward.</param>
    /// <exception cref="ArgumentException">As in the forward, or mis-sized gradients.</exception>
    public static void Backward(in LinearInputs inputs, int window, ReadOnlySpan<float> outputGradient, in LinearGradients gradients,
        LinearAttentionOptions? linearOptions = null)
    {
        LinearShape s = Check(inputs, window);
        if (!gradients.Gate.IsEmpty || !gradients.Beta.IsEmpty)
            throw new ArgumentException("Based has no gates and no β: pass empty gradients.Gate and gradients.Beta.", nameof(gradients));
        LinearAttention.Backward(inputs, linearOptions ?? LinearOptions(), outputGradient, [], gradients);
        if (window == 0) return;
        float[] o = new float[(long)s.Batch * s.Tokens * s.Heads * s.ValueDim];
        float[] lse = new float[(long)s.Batch * s.Heads * s.Tokens];
        WindowForward(inputs, s, window, o, lse);
        float[] dq = new float[inputs.Q.Length], dk = new float[inputs.K.Length], dv = new float[inputs.V.Length];
        Attention.Backward<float>(Bthd(inputs.Q, s, s.Heads), Bthd(inputs.K, s, s.KvHeads), Bthd(inputs.V, s, s.KvHeads),
            AttentionLayout.Bthd<float>(o, s.Batch, s.Tokens, s.Heads, s.ValueDim), Bthd(outputGradient, s, s.Heads),
            AttentionLayout.Lse(lse, s.Batch, s.Heads, s.Tokens), WindowOptions(window, inputs.Offsets),
            AttentionLayout.Bthd<float>(dq, s.Batch, s.Tokens, s.Heads, s.KeyDim), AttentionLayout.Bthd<float>(dk, s.Batch, s.Tokens, s.KvHeads, s.KeyDim),
            AttentionLayout.Bthd<float>(dv, s.Batch, s.Tokens, s.KvHeads, s.ValueDim));
        Add(dq, gradients.Q);
        Add(dk, gradients.K);
        Add(dv, gradients.V);
    }

    private static LinearShape Check(in LinearInputs inputs, int window)
    {
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(window), window, "The window must be ≥ 0 (0: no window branch).");
        LinearShape s = inputs.Shape;
        if (window > 0 && s.KeyDim != s.ValueDim)
            throw new ArgumentException($"The window branch needs Dk = Dv; got Dk = {s.KeyDim}, Dv = {s.ValueDim}.", nameof(inputs));
        return s;
    }

    private static void WindowForward(in LinearInputs inputs, LinearShape s, int window, float[] output, float[] lse) =>
        Attention.Forward<float>(Bthd(inputs.Q, s, s.Heads), Bthd(inputs.K, s, s.KvHeads), Bthd(inputs.V, s, s.KvHeads),
            WindowOptions(window, inputs.Offsets), AttentionLayout.Bthd<float>(output, s.Batch, s.Tokens, s.Heads, s.ValueDim),
            lse.Length == 0 ? default : AttentionLayout.Lse(lse, s.Batch, s.Heads, s.Tokens));

    // The attention API reads tensor spans; the linear inputs are dense [B, T, H, D] spans of the same layout.
    // (The kernels only read q, k, v, so a writable view of the caller's read-only span is safe.)
    private static ReadOnlyTensorSpan<float> Bthd(ReadOnlySpan<float> x, LinearShape s, int heads) =>
        AttentionLayout.Bthd(System.Runtime.InteropServices.MemoryMarshal.CreateSpan(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x), x.Length),
            s.Batch, s.Tokens, heads, s.KeyDim);

    private static void Add(float[] source, Span<float> destination)
    {
        if (destination.IsEmpty) return;
        for (int i = 0; i < source.Length; i++) destination[i] += source[i];
    }
}
