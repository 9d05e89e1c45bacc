using System.Buffers;
using Attend.Kernels.Cpu.Linear;
using Attend.Reference;

namespace Attend.Linear;

/// <summary>
/// The linear / recurrent attention family's entry point. Per query head a matrix state
/// <c>S_t = decay_t ⊙ S_{t-1} + update(φ(k_t), v_t)</c> (<c>[Df, Dv]</c>, float32) is read with φ(q_t):
/// <c>o_t = normalise(S_tᵀ φ(q_t))</c>. <see cref="LinearAttentionOptions"/> picks the feature map φ, the decay (none, a
/// fixed scalar per head, a data-dependent scalar or per-key-channel gate), the update (additive, delta, gated delta)
/// and the normalisation (denominator, RMS norm, none); <see cref="LinearForm"/> picks one of three forms that agree to
/// rounding: naive (float64 quadratic), chunked (parallel) and recurrent (decode). Every call takes an initial state and
/// returns the final state; a varlen batch carries one state per sequence.
/// </summary>
/// <remarks>
/// Methods of the family (Methods/Linear) call this and never a kernel class. The output of token t includes token t
/// itself (causal, inclusive). With a denominator the state holds the normaliser sum z as an extra last column.
/// </remarks>
public static partial class LinearAttention
{
    /// <summary>Computes the outputs <c>[B, T, H, Dv]</c> and, when <paramref name="finalState"/> is not empty, the final states.</summary>
    /// <param name="inputs">Q, K, V, optional gates, β, initial state and varlen offsets.</param>
    /// <param name="options">Feature map, decay, update, normalisation, form, chunk size; null for the defaults.</param>
    /// <param name="output">Receives o <c>[B, T, H, Dv]</c>.</param>
    /// <param name="finalState">Receives the final state <c>[N, H, Df, Dv']</c>, or empty when not wanted.</param>
    /// <exception cref="ArgumentException">A mis-shaped tensor or an invalid option; the message names it and the dimension.</exception>
    public static unsafe void Forward(in LinearInputs inputs, LinearAttentionOptions? options, Span<float> output, Span<float> finalState)
    {
        LinearConfig c = LinearConfig.Resolve(inputs, options);
        LinearShape s = c.Shape;
        LinearConfig.CheckOutput("output", output.Length, (long)s.Batch * s.Tokens * s.Heads * s.ValueDim, "[B, T, H, Dv]", optional: false);
        LinearConfig.CheckOutput("finalState", finalState.Length, c.StateLength, $"[N, H, Df = {c.FeatureDim}, Dv' = {c.StateColumns}]", optional: true);

        if (c.Form != LinearForm.Naive && IsOtherBackend(options))
        {
            LinearBackends.Get(options!.Backend!, "options.Backend").Forward(inputs, options, output, finalState);
            return;
        }

        if (c.Form == LinearForm.Naive)
        {
            (double[] o, double[] st) = ReferenceLinearAttention.Forward(inputs, options);
            for (int i = 0; i < o.Length; i++) output[i] = (float)o[i];
            if (!finalState.IsEmpty) for (int i = 0; i < st.Length; i++) finalState[i] = (float)st[i];
            return;
        }

        using var prepared = Prepared.Create(c, inputs);
        bool rawOut = c.Normalization != LinearNormalization.None;
        float[]? raw = rawOut ? ArrayPool<float>.Shared.Rent(checked((int)((long)s.Batch * s.Tokens * s.Heads * c.StateColumns))) : null;
        try
        {
            fixed (float* q = prepared.Q(inputs), k = prepared.K(inputs), v = prepared.V(inputs))
            fixed (float* gate = inputs.Gate, beta = inputs.Beta, s0 = inputs.InitialState)
            fixed (float* o = output, rawP = raw, sT = finalState)
            {
                var problem = new StateProblem
                {
                    Config = c, Q = q, K = k, V = v, Gate = gate, Beta = beta, InitialState = s0,
                    Output = rawOut ? rawP : o, FinalState = finalState.IsEmpty ? null : sT,
                };
                if (c.Form == LinearForm.Recurrent) RecurrentStateKernel.Forward(problem);
                else ChunkedStateKernel.Forward(problem);
            }
            if (raw != null) Normalise(c, raw, output);
        }
        finally
        {
            if (raw != null) ArrayPool<float>.Shared.Return(raw);
        }
    }

    /// <summary>
    /// Gradients of <c>L = Σ outputGradient·O + Σ finalStateGradient·S_T</c> with respect to q, k, v, the gates, β and
    /// the initial state (each written only when its span is not empty). <see cref="LinearForm.Chunked"/>: chunked
    /// matrix products (every rule and decay, except the delta rules with feature width below 64; a sequence and head
    /// whose channel gate's cumulative value inside a chunk falls below −60 takes the chunk-checkpointed reverse
    /// recurrence, float32, as do those delta rules); <see cref="LinearForm.Recurrent"/>: the reverse recurrence;
    /// <see cref="LinearForm.Naive"/>: the float64 reference. With <see cref="LinearAttentionOptions.Backend"/> naming a
    /// registered backend, that backend's backward runs (CUDA: the chunked form of the additive rule with no decay, a fixed
    /// decay, a scalar or a channel gate, the gate's gradient included, and of the delta and gated delta rules, β's and the
    /// scalar gate's gradients included; it throws <see cref="NotSupportedException"/> with the reason for the rest).
    /// </summary>
    /// <param name="inputs">The forward inputs.</param>
    /// <param name="options">The forward options.</param>
    /// <param name="outputGradient">dL/dO <c>[B, T, H, Dv]</c>.</param>
    /// <param name="finalStateGradient">dL/dS_T (the state's shape), or empty.</param>
    /// <param name="gradients">Where the gradients go.</param>
    /// <exception cref="ArgumentException">A mis-shaped tensor or an invalid option.</exception>
    /// <exception cref="NotSupportedException">The named backend has no backward for this configuration.</exception>
    public static unsafe void Backward(in LinearInputs inputs, LinearAttentionOptions? options, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> finalStateGradient, in LinearGradients gradients)
    {
        LinearConfig c = LinearConfig.Resolve(inputs, options);
        LinearShape s = c.Shape;
        int df = c.FeatureDim, dvs = c.StateColumns, H = s.Heads;
        long rows = (long)s.Batch * s.Tokens;
        LinearConfig.CheckOutput("outputGradient", outputGradient.Length, rows * H * s.ValueDim, "[B, T, H, Dv]", optional: false);
        LinearConfig.CheckOutput("finalStateGradient", finalStateGradient.Length, c.StateLength, "the state's shape", optional: true);
        LinearConfig.CheckOutput("gradients.Q", gradients.Q.Length, inputs.Q.Length, "q's shape", optional: true);
        LinearConfig.CheckOutput("gradients.K", gradients.K.Length, inputs.K.Length, "k's shape", optional: true);
        LinearConfig.CheckOutput("gradients.V", gradients.V.Length, inputs.V.Length, "v's shape", optional: true);
        LinearConfig.CheckOutput("gradients.Gate", gradients.Gate.Length, inputs.Gate.Length, "the gate's shape", optional: true);
        LinearConfig.CheckOutput("gradients.Beta", gradients.Beta.Length, inputs.Beta.Length, "β's shape", optional: true);
        LinearConfig.CheckOutput("gradients.InitialState", gradients.InitialState.Length, c.StateLength, "the state's shape", optional: true);

        if (c.Form != LinearForm.Naive && IsOtherBackend(options))
        {
            LinearBackends.Get(options!.Backend!, "options.Backend").Backward(inputs, options, outputGradient, finalStateGradient, gradients);
            return;
        }

        if (c.Form == LinearForm.Naive)
        {
            ReferenceLinearGradients r = ReferenceLinearAttention.Backward(inputs, options, outputGradient, finalStateGradient);
            Narrow(r.Q, gradients.Q); Narrow(r.K, gradients.K); Narrow(r.V, gradients.V);
            Narrow(r.Gate, gradients.Gate); Narrow(r.Beta, gradients.Beta); Narrow(r.InitialState, gradients.InitialState);
            return;
        }

        using var prepared = Prepared.Create(c, inputs);
        float[] dRaw = new float[rows * H * dvs];
        float[] dq = new float[rows * H * df], dk = new float[rows * H * df], dv = new float[rows * H * dvs];
        float[] dGate = new float[inputs.Gate.Length], dBeta = new float[inputs.Beta.Length], dS0 = new float[c.StateLength];
        fixed (float* q = prepared.Q(inputs), k = prepared.K(inputs), v = prepared.V(inputs))
        fixed (float* gate = inputs.Gate, beta = inputs.Beta, s0 = inputs.InitialState, dST = finalStateGradient)
        fixed (float* pdRaw = dRaw, pdq = dq, pdk = dk, pdv = dv, pdg = dGate, pdb = dBeta, pds0 = dS0)
        {
            if (c.Normalization == LinearNormalization.None)
                outputGradient.CopyTo(dRaw);
            else
            {
                // The normalisation needs the raw rows: recompute them with the chunked form.
                float[] raw = new float[rows * H * dvs];
                fixed (float* pr = raw)
                    ChunkedStateKernel.Forward(new StateProblem
                    {
                        Config = c, Q = q, K = k, V = v, Gate = gate, Beta = beta, InitialState = s0, Output = pr, FinalState = null,
                    });
                NormaliseBackward(c, raw, outputGradient, dRaw);
            }
            var problem = new StateProblem
            {
                Config = c, Q = q, K = k, V = v, Gate = gate, Beta = beta, InitialState = s0, Output = null, FinalState = null,
            };
            var targets = new StateGradients
            {
                OutputGradient = pdRaw, FinalStateGradient = finalStateGradient.IsEmpty ? null : dST,
                Q = pdq, K = pdk, V = pdv, Gate = inputs.Gate.IsEmpty ? null : pdg, Beta = inputs.Beta.IsEmpty ? null : pdb,
                InitialState = pds0,
            };
            // The chunked form's backward is a chain of matrix products: the additive rule with no or a fixed decay, then
            // gates and the delta rules (a channel gate only where it factorises, else per sequence and head the reverse
            // recurrence); the recurrent form reverses the recurrence.
            if (c.Form == LinearForm.Chunked && ChunkedBackwardKernel.Supports(c)) ChunkedBackwardKernel.Run(problem, targets);
            else if (c.Form == LinearForm.Chunked && ChunkedGatedBackwardKernel.Supports(c) && GatedBackward switch
                     {
                         GatedBackwardPath.MatrixProducts => true,
                         GatedBackwardPath.ReverseRecurrence => false,
                         _ => ChunkedGatedBackwardKernel.Preferred(c),
                     })
                ChunkedGatedBackwardKernel.Run(problem, targets);
            else StateBackwardKernel.Run(problem, targets);
        }

        // Through the feature map (and the scale), summing key/value groups.
        int dkIn = s.KeyDim, group = H / s.KvHeads;
        if (!gradients.Q.IsEmpty)
        {
            for (long r = 0; r < rows; r++)
                for (int h = 0; h < H; h++)
                {
                    Span<float> dphi = dq.AsSpan((int)((r * H + h) * df), df);
                    if (c.Scale != 1f) for (int i = 0; i < df; i++) dphi[i] *= c.Scale;
                    c.Map.Backward<float>(h, false, inputs.Q.Slice((int)((r * H + h) * dkIn), dkIn), dphi, gradients.Q.Slice((int)((r * H + h) * dkIn), dkIn));
                }
        }
        if (!gradients.K.IsEmpty)
        {
            var sum = new float[df];
            for (long r = 0; r < rows; r++)
                for (int hk = 0; hk < s.KvHeads; hk++)
                {
                    Array.Clear(sum);
                    for (int g = 0; g < group; g++)
                    {
                        ReadOnlySpan<float> part = dk.AsSpan((int)((r * H + hk * group + g) * df), df);
                        for (int i = 0; i < df; i++) sum[i] += part[i];
                    }
                    c.Map.Backward<float>(hk * group, true, inputs.K.Slice((int)((r * s.KvHeads + hk) * dkIn), dkIn), sum, gradients.K.Slice((int)((r * s.KvHeads + hk) * dkIn), dkIn));
                }
        }
        if (!gradients.V.IsEmpty)
        {
            int dvIn = s.ValueDim;
            gradients.V.Clear();
            for (long r = 0; r < rows; r++)
                for (int h = 0; h < H; h++)
                {
                    ReadOnlySpan<float> part = dv.AsSpan((int)((r * H + h) * dvs), dvIn);
                    Span<float> dst = gradients.V.Slice((int)((r * s.KvHeads + h / group) * dvIn), dvIn);
                    for (int j = 0; j < dvIn; j++) dst[j] += part[j];
                }
        }
        if (!gradients.Gate.IsEmpty) dGate.CopyTo(gradients.Gate);
        if (!gradients.Beta.IsEmpty) dBeta.CopyTo(gradients.Beta);
        if (!gradients.InitialState.IsEmpty) dS0.CopyTo(gradients.InitialState);
    }

    private static bool IsOtherBackend(LinearAttentionOptions? options) =>
        options?.Backend is { } name && !name.Equals("cpu", StringComparison.OrdinalIgnoreCase);

    private static void Narrow(double[] source, Span<float> destination)
    {
        if (destination.IsEmpty) return;
        for (int i = 0; i < source.Length; i++) destination[i] = (float)source[i];
    }

    /// <summary>Raw rows <c>[B, T, H, Dv']</c> → normalised output <c>[B, T, H, Dv]</c>.</summary>
    private static void Normalise(LinearConfig c, float[] raw, Span<float> output)
    {
        int dv = c.Shape.ValueDim, dvs = c.StateColumns;
        long rows = (long)c.Shape.Batch * c.Shape.Tokens * c.Shape.Heads;
        for (long r = 0; r < rows; r++)
        {
            ReadOnlySpan<float> x = raw.AsSpan((int)(r * dvs), dvs);
            Span<float> o = output.Slice((int)(r * dv), dv);
            if (c.Normalization == LinearNormalization.Denominator)
            {
                float inv = 1f / (x[dv] + c.Epsilon);
                for (int j = 0; j < dv; j++) o[j] = x[j] * inv;
            }
            else
            {
                float ms = 0;
                for (int j = 0; j < dv; j++) ms += x[j] * x[j];
                float inv = 1f / MathF.Sqrt(ms / dv + c.Epsilon);
                for (int j = 0; j < dv; j++) o[j] = x[j] * inv;
            }
        }
    }

    private static void NormaliseBackward(LinearConfig c, float[] raw, ReadOnlySpan<float> dOut, Span<float> dRaw)
    {
        int dv = c.Shape.ValueDim, dvs = c.StateColumns;
        long rows = (long)c.Shape.Batch * c.Shape.Tokens * c.Shape.Heads;
        for (long r = 0; r < rows; r++)
        {
            ReadOnlySpan<float> x = raw.AsSpan((int)(r * dvs), dvs), d = dOut.Slice((int)(r * dv), dv);
            Span<float> g = dRaw.Slice((int)(r * dvs), dvs);
            if (c.Normalization == LinearNormalization.Denominator)
            {
                float den = x[dv] + c.Epsilon, acc = 0;
                for (int j = 0; j < dv; j++) { g[j] = d[j] / den; acc += d[j] * x[j]; }
                g[dv] = -acc / (den * den);
            }
            else
            {
                float ms = 0, dot = 0;
                for (int j = 0; j < dv; j++) { ms += x[j] * x[j]; dot += x[j] * d[j]; }
                float inv = 1f / MathF.Sqrt(ms / dv + c.Epsilon);
                for (int j = 0; j < dv; j++) g[j] = inv * d[j] - inv * inv * inv * x[j] * dot / dv;
            }
        }
    }

    /// <summary>φ(q)·scale, φ(k) and the (augmented) values, or the caller's own spans when no transform is needed.</summary>
    private sealed class Prepared : IDisposable
    {
        private float[]? _q, _k, _v;

        public static Prepared Create(LinearConfig c, in LinearInputs inputs)
        {
            LinearShape s = c.Shape;
            var p = new Prepared();
            int df = c.FeatureDim, dk = s.KeyDim;
            long rows = (long)s.Batch * s.Tokens;
            bool identity = ReferenceEquals(c.Map, FeatureMaps.Identity);
            if (!identity || c.Scale != 1f)
            {
                p._q = ArrayPool<float>.Shared.Rent(checked((int)(rows * s.Heads * df)));
                MapRows(c, inputs.Q, p._q, rows * s.Heads, s.Heads, 1, isKey: false);
            }
            if (!identity)
            {
                p._k = ArrayPool<float>.Shared.Rent(checked((int)(rows * s.KvHeads * df)));
                MapRows(c, inputs.K, p._k, rows * s.KvHeads, s.KvHeads, s.Heads / s.KvHeads, isKey: true);
            }
            if (c.StateColumns != s.ValueDim)
            {
                int dv = s.ValueDim, dvs = c.StateColumns;
                p._v = ArrayPool<float>.Shared.Rent(checked((int)(rows * s.KvHeads * dvs)));
                for (long r = 0; r < rows * s.KvHeads; r++)
                {
                    inputs.V.Slice((int)(r * dv), dv).CopyTo(p._v.AsSpan((int)(r * dvs), dv));
                    p._v[r * dvs + dv] = 1f;
                }
            }
            return p;
        }

        /// <summary>φ (and, for queries, the scale) on every row, in parallel blocks of rows (maps are per-row pure functions).</summary>
        private static unsafe void MapRows(LinearConfig c, ReadOnlySpan<float> source, float[] target, long count, int heads, int group, bool isKey)
        {
            int dk = c.Shape.KeyDim, df = c.FeatureDim;
            float scale = isKey ? 1f : c.Scale;
            const int block = 1024;
            long blocks = (count + block - 1) / block;
            fixed (float* src = source)
            {
                float* srcP = src;
                void Block(long bi)
                {
                    long end = Math.Min(count, (bi + 1) * block);
                    for (long r = bi * block; r < end; r++)
                    {
                        Span<float> y = target.AsSpan((int)(r * df), df);
                        c.Map.Apply<float>((int)(r % heads) * group, isKey, new ReadOnlySpan<float>(srcP + r * dk, dk), y);
                        if (scale != 1f) System.Numerics.Tensors.TensorPrimitives.Multiply(y, scale, y);
                    }
                }
                if (blocks == 1 || c.Threads == 1) { for (long bi = 0; bi < blocks; bi++) Block(bi); }
                else Parallel.For(0L, blocks, new ParallelOptions { MaxDegreeOfParallelism = c.Threads }, Block);
            }
        }

        public ReadOnlySpan<float> Q(in LinearInputs inputs) => _q ?? inputs.Q;
        public ReadOnlySpan<float> K(in LinearInputs inputs) => _k ?? inputs.K;
        public ReadOnlySpan<float> V(in LinearInputs inputs) => _v ?? inputs.V;

        public void Dispose()
        {
            if (_q != null) ArrayPool<float>.Shared.Return(_q);
            if (_k != null) ArrayPool<float>.Shared.Return(_k);
            if (_v != null) ArrayPool<float>.Shared.Return(_v);
        }
    }
}
