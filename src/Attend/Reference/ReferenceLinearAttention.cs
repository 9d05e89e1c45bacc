using Attend.Linear;

namespace Attend.Reference;

/// <summary>The float64 gradients of <see cref="ReferenceLinearAttention.Backward"/>, shaped like the inputs.</summary>
/// <param name="Q">dL/dq.</param>
/// <param name="K">dL/dk.</param>
/// <param name="V">dL/dv.</param>
/// <param name="Gate">dL/d(log gate), or empty without a gate.</param>
/// <param name="Beta">dL/dβ, or empty without β.</param>
/// <param name="InitialState">dL/d(initial state).</param>
public sealed record ReferenceLinearGradients(double[] Q, double[] K, double[] V, double[] Gate, double[] Beta, double[] InitialState);

/// <summary>
/// The float64 oracle of the linear / recurrent family (<see cref="LinearAttention"/>): the same definition computed
/// plainly, per sequence and head, in two independent ways — the quadratic (naive) form, in which every output is a
/// sum over earlier tokens weighted by products of decays and the delta rule's pseudo-values come from one triangular
/// solve over the whole sequence, and the step-by-step recurrence, whose reverse pass gives the gradients.
/// </summary>
public static class ReferenceLinearAttention
{
    /// <summary>The quadratic (naive) form: output <c>[B, T, H, Dv]</c> and final state <c>[N, H, Df, Dv']</c>.</summary>
    public static (double[] Output, double[] FinalState) Forward(in LinearInputs inputs, LinearAttentionOptions? options)
    {
        LinearConfig c = LinearConfig.Resolve(inputs, options);
        var output = new double[(long)c.Shape.Batch * c.Shape.Tokens * c.Shape.Heads * c.Shape.ValueDim];
        var final = new double[c.StateLength];
        for (int n = 0; n < c.Sequences; n++)
            for (int h = 0; h < c.Shape.Heads; h++)
            {
                Head head = Head.Gather(c, inputs, n, h);
                double[][] raw = head.Quadratic(out double[,] state);
                head.WriteOutput(c, raw, output);
                head.WriteState(c, state, final);
            }
        return (output, final);
    }

    /// <summary>The recurrent form in float64 (the second oracle, independent of the quadratic one).</summary>
    public static (double[] Output, double[] FinalState) ForwardRecurrent(in LinearInputs inputs, LinearAttentionOptions? options)
    {
        LinearConfig c = LinearConfig.Resolve(inputs, options);
        var output = new double[(long)c.Shape.Batch * c.Shape.Tokens * c.Shape.Heads * c.Shape.ValueDim];
        var final = new double[c.StateLength];
        for (int n = 0; n < c.Sequences; n++)
            for (int h = 0; h < c.Shape.Heads; h++)
            {
                Head head = Head.Gather(c, inputs, n, h);
                double[][] raw = head.Recurrent(null, out double[,] state);
                head.WriteOutput(c, raw, output);
                head.WriteState(c, state, final);
            }
        return (output, final);
    }

    /// <summary>
    /// Gradients of <c>L = Σ dO·O + Σ dS_T·S_T</c> with respect to every input, by the reverse of the recurrence.
    /// </summary>
    /// <param name="inputs">The forward inputs.</param>
    /// <param name="options">The forward options.</param>
    /// <param name="outputGradient">dL/dO <c>[B, T, H, Dv]</c>.</param>
    /// <param name="finalStateGradient">dL/dS_T (state shape), or empty.</param>
    public static ReferenceLinearGradients Backward(in LinearInputs inputs, LinearAttentionOptions? options,
        ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> finalStateGradient)
    {
        LinearConfig c = LinearConfig.Resolve(inputs, options);
        LinearShape s = c.Shape;
        var g = new ReferenceLinearGradients(
            new double[inputs.Q.Length], new double[inputs.K.Length], new double[inputs.V.Length],
            new double[inputs.Gate.Length], new double[inputs.Beta.Length], new double[c.StateLength]);
        for (int n = 0; n < c.Sequences; n++)
            for (int h = 0; h < s.Heads; h++)
            {
                Head head = Head.Gather(c, inputs, n, h);
                head.Backward(c, inputs, outputGradient, finalStateGradient, g);
            }
        return g;
    }

    /// <summary>One (sequence, head): its feature rows, values, gates and β in float64.</summary>
    private sealed class Head
    {
        public int Batch, Start, Length, H, KvHead, Sequence, Df, Dv;
        public double[][] Q = [], K = [], V = [], G = [];
        public double[] Beta = [];
        public double[,] S0 = new double[0, 0];

        public static Head Gather(LinearConfig c, in LinearInputs inputs, int n, int h)
        {
            LinearShape s = c.Shape;
            c.Range(n, out int b, out int start, out int end);
            int len = end - start, df = c.FeatureDim, dv = c.StateColumns, dk = s.KeyDim;
            int hk = h / (s.Heads / s.KvHeads);
            var head = new Head { Batch = b, Start = start, Length = len, H = h, KvHead = hk, Sequence = n, Df = df, Dv = dv, IsDelta = c.IsDelta };
            head.Q = new double[len][]; head.K = new double[len][]; head.V = new double[len][]; head.G = new double[len][];
            head.Beta = new double[len];
            var x = new double[dk];
            for (int t = 0; t < len; t++)
            {
                long tok = (long)b * s.Tokens + start + t;
                for (int i = 0; i < dk; i++) x[i] = inputs.Q[(int)((tok * s.Heads + h) * dk + i)];
                head.Q[t] = new double[df];
                c.Map.Apply<double>(h, false, x, head.Q[t]);
                for (int i = 0; i < df; i++) head.Q[t][i] *= c.Scale;
                for (int i = 0; i < dk; i++) x[i] = inputs.K[(int)((tok * s.KvHeads + hk) * dk + i)];
                head.K[t] = new double[df];
                c.Map.Apply<double>(hk * (s.Heads / s.KvHeads), true, x, head.K[t]);
                head.V[t] = new double[dv];
                for (int j = 0; j < s.ValueDim; j++) head.V[t][j] = inputs.V[(int)((tok * s.KvHeads + hk) * s.ValueDim + j)];
                if (dv > s.ValueDim) head.V[t][s.ValueDim] = 1;
                head.G[t] = new double[df];
                for (int i = 0; i < df; i++)
                    head.G[t][i] = c.Decay switch
                    {
                        LinearDecay.FixedPerHead => c.LogHeadDecay![h],
                        LinearDecay.ScalarGate => inputs.Gate[(int)(tok * s.Heads + h)],
                        LinearDecay.ChannelGate => inputs.Gate[(int)((tok * s.Heads + h) * df + i)],
                        _ => 0,
                    };
                head.Beta[t] = c.HasBeta ? inputs.Beta[(int)(tok * s.Heads + h)] : 1;
            }
            head.S0 = new double[df, dv];
            if (c.HasInitialState)
                for (int i = 0; i < df; i++)
                    for (int j = 0; j < dv; j++) head.S0[i, j] = inputs.InitialState[(int)((((long)n * s.Heads + h) * df + i) * dv + j)];
            return head;
        }

        /// <summary>The quadratic form: o_t = Σ_i q_ti e^{b_ti} S0_i + Σ_{s≤t} (Σ_i q_ti k_si e^{b_ti − b_si}) u_s.</summary>
        public double[][] Quadratic(out double[,] state)
        {
            int len = Length;
            var b = new double[len][];
            for (int t = 0; t < len; t++)
            {
                b[t] = new double[Df];
                for (int i = 0; i < Df; i++) b[t][i] = (t > 0 ? b[t - 1][i] : 0) + G[t][i];
            }
            // Pseudo-values u: v itself for the additive rule; for the delta rules the solution of
            // (I + diag(β) L) U = diag(β)(V − K̃ S0), L_ts = Σ_i k_ti k_si e^{b_ti − b_si} (s < t), by forward substitution.
            var u = new double[len][];
            for (int t = 0; t < len; t++)
            {
                if (IsDelta)
                {
                    var w = (double[])V[t].Clone();
                    for (int i = 0; i < Df; i++)
                    {
                        double ki = K[t][i] * Math.Exp(b[t][i]);
                        for (int j = 0; j < Dv; j++) w[j] -= ki * S0[i, j];
                    }
                    for (int s = 0; s < t; s++)
                    {
                        double l = 0;
                        for (int i = 0; i < Df; i++) l += K[t][i] * K[s][i] * Math.Exp(b[t][i] - b[s][i]);
                        for (int j = 0; j < Dv; j++) w[j] -= l * u[s][j];
                    }
                    for (int j = 0; j < Dv; j++) w[j] *= Beta[t];
                    u[t] = w;
                }
                else u[t] = V[t];
            }
            var o = new double[len][];
            for (int t = 0; t < len; t++)
            {
                var row = new double[Dv];
                for (int i = 0; i < Df; i++)
                {
                    double qi = Q[t][i] * Math.Exp(b[t][i]);
                    for (int j = 0; j < Dv; j++) row[j] += qi * S0[i, j];
                }
                for (int s = 0; s <= t; s++)
                {
                    double a = 0;
                    for (int i = 0; i < Df; i++) a += Q[t][i] * K[s][i] * Math.Exp(b[t][i] - b[s][i]);
                    for (int j = 0; j < Dv; j++) row[j] += a * u[s][j];
                }
                o[t] = row;
            }
            state = new double[Df, Dv];
            for (int i = 0; i < Df; i++)
            {
                double bl = len > 0 ? b[len - 1][i] : 0;
                for (int j = 0; j < Dv; j++) state[i, j] = Math.Exp(bl) * S0[i, j];
                for (int s = 0; s < len; s++)
                {
                    double ks = K[s][i] * Math.Exp(bl - b[s][i]);
                    for (int j = 0; j < Dv; j++) state[i, j] += ks * u[s][j];
                }
            }
            return o;
        }

        public bool IsDelta;

        /// <summary>
        /// The recurrence: S' = diag(α_t) S; u = β(v − S'ᵀk) (delta) or v; S = S' + k uᵀ; o = Sᵀq. When
        /// <paramref name="states"/> is given it receives S_{t-1} before each step (for the reverse pass).
        /// </summary>
        public double[][] Recurrent(double[][,]? states, out double[,] state)
        {
            var S = (double[,])S0.Clone();
            var o = new double[Length][];
            var p = new double[Dv];
            for (int t = 0; t < Length; t++)
            {
                if (states != null) states[t] = (double[,])S.Clone();
                for (int i = 0; i < Df; i++)
                {
                    double a = Math.Exp(G[t][i]);
                    for (int j = 0; j < Dv; j++) S[i, j] *= a;
                }
                var u = new double[Dv];
                if (IsDelta)
                {
                    Array.Clear(p);
                    for (int i = 0; i < Df; i++)
                        for (int j = 0; j < Dv; j++) p[j] += K[t][i] * S[i, j];
                    for (int j = 0; j < Dv; j++) u[j] = Beta[t] * (V[t][j] - p[j]);
                }
                else V[t].CopyTo(u, 0);
                for (int i = 0; i < Df; i++)
                    for (int j = 0; j < Dv; j++) S[i, j] += K[t][i] * u[j];
                var row = new double[Dv];
                for (int i = 0; i < Df; i++)
                    for (int j = 0; j < Dv; j++) row[j] += Q[t][i] * S[i, j];
                o[t] = row;
            }
            state = S;
            return o;
        }

        /// <summary>Applies the normalisation to raw rows (numerator and, with a denominator, the z column) and writes o.</summary>
        public void WriteOutput(LinearConfig c, double[][] raw, double[] output)
        {
            LinearShape s = c.Shape;
            int dv = s.ValueDim;
            for (int t = 0; t < Length; t++)
            {
                long at = (((long)Batch * s.Tokens + Start + t) * s.Heads + H) * dv;
                double[] r = raw[t];
                switch (c.Normalization)
                {
                    case LinearNormalization.Denominator:
                        for (int j = 0; j < dv; j++) output[at + j] = r[j] / (r[dv] + c.Epsilon);
                        break;
                    case LinearNormalization.RmsNorm:
                        double ms = 0;
                        for (int j = 0; j < dv; j++) ms += r[j] * r[j];
                        double inv = 1 / Math.Sqrt(ms / dv + c.Epsilon);
                        for (int j = 0; j < dv; j++) output[at + j] = r[j] * inv;
                        break;
                    default:
                        for (int j = 0; j < dv; j++) output[at + j] = r[j];
                        break;
                }
            }
        }

        public void WriteState(LinearConfig c, double[,] state, double[] final)
        {
            long at = ((long)Sequence * c.Shape.Heads + H) * Df * Dv;
            for (int i = 0; i < Df; i++)
                for (int j = 0; j < Dv; j++) final[at + (long)i * Dv + j] = state[i, j];
        }

        public void Backward(LinearConfig c, in LinearInputs inputs, ReadOnlySpan<float> dOut, ReadOnlySpan<float> dFinal, ReferenceLinearGradients grads)
        {
            LinearShape s = c.Shape;
            int dvOut = s.ValueDim, dk = s.KeyDim;
            var states = new double[Length][,];
            double[][] raw = Recurrent(states, out double[,] last);

            // dL/d(raw row) through the normalisation.
            var draw = new double[Length][];
            for (int t = 0; t < Length; t++)
            {
                long at = (((long)Batch * s.Tokens + Start + t) * s.Heads + H) * dvOut;
                var d = new double[Dv];
                double[] r = raw[t];
                switch (c.Normalization)
                {
                    case LinearNormalization.Denominator:
                    {
                        double den = r[dvOut] + c.Epsilon, acc = 0;
                        for (int j = 0; j < dvOut; j++) { d[j] = dOut[(int)(at + j)] / den; acc += dOut[(int)(at + j)] * r[j]; }
                        d[dvOut] = -acc / (den * den);
                        break;
                    }
                    case LinearNormalization.RmsNorm:
                    {
                        double ms = 0, dot = 0;
                        for (int j = 0; j < dvOut; j++) { ms += r[j] * r[j]; dot += r[j] * dOut[(int)(at + j)]; }
                        double inv = 1 / Math.Sqrt(ms / dvOut + c.Epsilon);
                        for (int j = 0; j < dvOut; j++) d[j] = inv * dOut[(int)(at + j)] - inv * inv * inv * r[j] * dot / dvOut;
                        break;
                    }
                    default:
                        for (int j = 0; j < dvOut; j++) d[j] = dOut[(int)(at + j)];
                        break;
                }
                draw[t] = d;
            }

            var dS = new double[Df, Dv];
            if (!dFinal.IsEmpty)
            {
                long at = ((long)Sequence * s.Heads + H) * Df * Dv;
                for (int i = 0; i < Df; i++)
                    for (int j = 0; j < Dv; j++) dS[i, j] = dFinal[(int)(at + (long)i * Dv + j)];
            }
            var dq = new double[Df];
            var dkf = new double[Df];
            var du = new double[Dv];
            var dx = new double[dk];
            var x = new double[dk];
            var Sp = new double[Df, Dv];
            var p = new double[Dv];
            var u = new double[Dv];
            for (int t = Length - 1; t >= 0; t--)
            {
                // Recompute the step's intermediates from S_{t-1}.
                double[,] prev = states[t];
                for (int i = 0; i < Df; i++)
                {
                    double a = Math.Exp(G[t][i]);
                    for (int j = 0; j < Dv; j++) Sp[i, j] = a * prev[i, j];
                }
                Array.Clear(p);
                if (IsDelta)
                {
                    for (int i = 0; i < Df; i++)
                        for (int j = 0; j < Dv; j++) p[j] += K[t][i] * Sp[i, j];
                    for (int j = 0; j < Dv; j++) u[j] = Beta[t] * (V[t][j] - p[j]);
                }
                else V[t].CopyTo(u, 0);
                // o = S_tᵀ q with S_t = S' + k uᵀ.
                Array.Clear(dq); Array.Clear(dkf); Array.Clear(du);
                for (int i = 0; i < Df; i++)
                    for (int j = 0; j < Dv; j++)
                    {
                        double st = Sp[i, j] + K[t][i] * u[j];
                        dq[i] += st * draw[t][j];
                        dS[i, j] += Q[t][i] * draw[t][j];
                    }
                for (int i = 0; i < Df; i++)
                    for (int j = 0; j < Dv; j++) { dkf[i] += dS[i, j] * u[j]; du[j] += dS[i, j] * K[t][i]; }
                long tok = (long)Batch * s.Tokens + Start + t;
                double dbeta = 0;
                var dv = new double[Dv];
                if (IsDelta)
                {
                    for (int j = 0; j < Dv; j++) { dv[j] = Beta[t] * du[j]; dbeta += du[j] * (V[t][j] - p[j]); }
                    // p = S'ᵀk contributes −β du through u.
                    for (int i = 0; i < Df; i++)
                        for (int j = 0; j < Dv; j++)
                        {
                            double dp = -Beta[t] * du[j];
                            dS[i, j] += K[t][i] * dp;
                            dkf[i] += Sp[i, j] * dp;
                        }
                }
                else du.CopyTo(dv, 0);
                // S' = diag(α) S_{t-1}: dlogα_i = Σ_j S'_ij dS'_ij; dS_{t-1} = diag(α) dS'.
                var dg = new double[Df];
                for (int i = 0; i < Df; i++)
                {
                    double a = Math.Exp(G[t][i]);
                    for (int j = 0; j < Dv; j++) { dg[i] += Sp[i, j] * dS[i, j]; dS[i, j] *= a; }
                }

                // Scatter into the input gradients (through φ and the scale).
                int dvIn = s.ValueDim;
                for (int j = 0; j < dvIn; j++) grads.V[(tok * s.KvHeads + KvHead) * dvIn + j] += dv[j];
                for (int i = 0; i < Df; i++) dq[i] *= c.Scale;
                for (int i = 0; i < dk; i++) x[i] = inputs.Q[(int)((tok * s.Heads + H) * dk + i)];
                c.Map.Backward<double>(H, false, x, dq, dx);
                for (int i = 0; i < dk; i++) grads.Q[(tok * s.Heads + H) * dk + i] += dx[i];
                for (int i = 0; i < dk; i++) x[i] = inputs.K[(int)((tok * s.KvHeads + KvHead) * dk + i)];
                c.Map.Backward<double>(KvHead * (s.Heads / s.KvHeads), true, x, dkf, dx);
                for (int i = 0; i < dk; i++) grads.K[(tok * s.KvHeads + KvHead) * dk + i] += dx[i];
                if (c.HasBeta) grads.Beta[tok * s.Heads + H] += dbeta;
                if (c.Decay == LinearDecay.ScalarGate) { double sum = 0; foreach (double d in dg) sum += d; grads.Gate[tok * s.Heads + H] += sum; }
                if (c.Decay == LinearDecay.ChannelGate)
                    for (int i = 0; i < Df; i++) grads.Gate[(tok * s.Heads + H) * Df + i] += dg[i];
            }
            long st0 = ((long)Sequence * s.Heads + H) * Df * Dv;
            for (int i = 0; i < Df; i++)
                for (int j = 0; j < Dv; j++) grads.InitialState[st0 + (long)i * Dv + j] += dS[i, j];
        }
    }
}
