using Attend.Linear;

namespace Attend.Methods.Linear;

/// <summary>
/// Hedgehog attention's backward with the gradient of its learnable feature map (<see cref="HedgehogMethod"/> is the
/// adapter; the paper and deviations are in its header): besides dq, dk, dv and the initial state's gradient, the
/// gradients of the map weights W <c>[H, F, Dk]</c> and b <c>[H, F]</c> through the attention output, for end-to-end
/// training after (or instead of) <see cref="HedgehogDistillation"/>.
/// </summary>
/// <remarks>
/// The features φ(q), φ(k) are computed once, <see cref="LinearAttention.Backward"/> runs on them with the identity
/// map (so it returns dφ), and the map is then reversed row by row: with y = W_h x + b_h and φ = [e^y, e^{−y}],
/// g = dφ⁺ ⊙ e^y − dφ⁻ ⊙ e^{−y}, dx = W_hᵀ g, dW_h += g xᵀ, db_h += g. A key of key/value head g uses the map of query
/// head g·(H/Hkv), as in the forward, so its weight gradient goes there.
/// </remarks>
public static class HedgehogAttention
{
    /// <summary>The forward options Hedgehog runs with: its map and the running denominator, on top of <paramref name="options"/>.</summary>
    public static LinearAttentionOptions Options(HedgehogWeights weights, LinearAttentionOptions? options = null) =>
        (options ?? new LinearAttentionOptions()) with { FeatureMap = new HedgehogFeatureMap(weights), Normalization = LinearNormalization.Denominator };

    /// <summary>
    /// Gradients of <c>L = Σ outputGradient·O + Σ finalStateGradient·S_T</c> for <c>O = LinearAttention.Forward(inputs,
    /// Options(weights, options))</c>.
    /// </summary>
    /// <param name="inputs">q, k, v <c>[B, T, H(kv), Dk]</c>, optional initial state and varlen offsets.</param>
    /// <param name="weights">The map weights.</param>
    /// <param name="options">Form, chunk, scale, threads (the map and the normalisation are Hedgehog's).</param>
    /// <param name="outputGradient">dL/dO <c>[B, T, H, Dv]</c>.</param>
    /// <param name="finalStateGradient">dL/dS_T, or empty.</param>
    /// <param name="gradients">dq, dk, dv, the initial state's gradient (an empty span: not wanted).</param>
    /// <param name="weightGradient">Receives dL/dW <c>[H, F, Dk]</c> (overwritten), or null.</param>
    /// <param name="biasGradient">Receives dL/db <c>[H, F]</c> (overwritten), or null.</param>
    /// <exception cref="ArgumentException">Mis-shaped inputs or gradients; the message names them.</exception>
    public static void Backward(in LinearInputs inputs, HedgehogWeights weights, LinearAttentionOptions? options, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> finalStateGradient, in LinearGradients gradients, double[]? weightGradient, double[]? biasGradient)
    {
        ArgumentNullException.ThrowIfNull(weights);
        LinearShape s = inputs.Shape;
        int f = weights.Features, dk = weights.InputDim, df = 2 * f, heads = s.Heads, kvHeads = s.KvHeads;
        // Checks the call as the forward would (shapes, the map's input width, the state).
        LinearConfig.Resolve(inputs, Options(weights, options));
        if (weights.Heads != heads) throw new ArgumentException($"Hedgehog weights have {weights.Heads} heads; q has H = {heads}.", nameof(weights));
        if (weightGradient != null && weightGradient.LongLength != weights.W.LongLength)
            throw new ArgumentException($"weightGradient has {weightGradient.Length} values; [H, F, Dk] needs {weights.W.Length}.", nameof(weightGradient));
        if (biasGradient != null && biasGradient.LongLength != weights.B.LongLength)
            throw new ArgumentException($"biasGradient has {biasGradient.Length} values; [H, F] needs {weights.B.Length}.", nameof(biasGradient));
        LinearConfig.CheckOutput("gradients.Q", gradients.Q.Length, inputs.Q.Length, "q's shape", optional: true);
        LinearConfig.CheckOutput("gradients.K", gradients.K.Length, inputs.K.Length, "k's shape", optional: true);

        long rows = (long)s.Batch * s.Tokens;
        int group = heads / kvHeads;
        var map = new HedgehogFeatureMap(weights);
        float[] phiQ = new float[rows * heads * df], phiK = new float[rows * kvHeads * df];
        for (long r = 0; r < rows; r++)
        {
            for (int h = 0; h < heads; h++)
                map.Apply<float>(h, false, inputs.Q.Slice((int)((r * heads + h) * dk), dk), phiQ.AsSpan((int)((r * heads + h) * df), df));
            for (int g = 0; g < kvHeads; g++)
                map.Apply<float>(g * group, true, inputs.K.Slice((int)((r * kvHeads + g) * dk), dk), phiK.AsSpan((int)((r * kvHeads + g) * df), df));
        }

        // The attention on the features: the identity map returns dφ(q) (times nothing: the scale is applied to φ(q)
        // and its gradient inside) and dφ(k).
        float[] dPhiQ = new float[phiQ.Length], dPhiK = new float[phiK.Length];
        var featureInputs = new LinearInputs
        {
            Shape = s with { KeyDim = df }, Q = phiQ, K = phiK, V = inputs.V, Gate = inputs.Gate, Beta = inputs.Beta,
            InitialState = inputs.InitialState, Offsets = inputs.Offsets,
        };
        LinearAttentionOptions featureOptions = (options ?? new LinearAttentionOptions()) with
        {
            FeatureMap = FeatureMaps.Identity, Normalization = LinearNormalization.Denominator,
        };
        LinearAttention.Backward(featureInputs, featureOptions, outputGradient, finalStateGradient, new LinearGradients
        {
            Q = dPhiQ, K = dPhiK, V = gradients.V, Gate = gradients.Gate, Beta = gradients.Beta, InitialState = gradients.InitialState,
        });

        if (weightGradient != null) Array.Clear(weightGradient);
        if (biasGradient != null) Array.Clear(biasGradient);
        if (!gradients.Q.IsEmpty) gradients.Q.Clear();
        if (!gradients.K.IsEmpty) gradients.K.Clear();
        var g2 = new double[f];
        for (long r = 0; r < rows; r++)
        {
            for (int h = 0; h < heads; h++)
                Reverse(weights, h, false, inputs.Q.Slice((int)((r * heads + h) * dk), dk), dPhiQ.AsSpan((int)((r * heads + h) * df), df),
                    gradients.Q.IsEmpty ? default : gradients.Q.Slice((int)((r * heads + h) * dk), dk), weightGradient, biasGradient, g2);
            for (int g = 0; g < kvHeads; g++)
                Reverse(weights, g * group, true, inputs.K.Slice((int)((r * kvHeads + g) * dk), dk), dPhiK.AsSpan((int)((r * kvHeads + g) * df), df),
                    gradients.K.IsEmpty ? default : gradients.K.Slice((int)((r * kvHeads + g) * dk), dk), weightGradient, biasGradient, g2);
        }
    }

    // One row through φ = [e^y, e^{−y}], y = W_h x + b_h (float64), with the map's query scale and key clip
    // (HedgehogFeatureMap): dx += W_hᵀ g, dW_h += g xᵀ, db_h += g.
    private static void Reverse(HedgehogWeights weights, int head, bool isKey, ReadOnlySpan<float> x, ReadOnlySpan<float> dphi, Span<float> dx,
        double[]? dW, double[]? dB, double[] g)
    {
        int f = weights.Features, dk = weights.InputDim;
        double shift = 0, limit = HedgehogFeatureMap.KeyExponentLimit;
        for (int i = 0; i < f; i++)
        {
            long row = ((long)head * f + i) * dk;
            double y = weights.B[(long)head * f + i];
            for (int j = 0; j < dk; j++) y += weights.W[row + j] * x[j];
            g[i] = y;
            shift = Math.Max(shift, Math.Abs(y));
        }
        shift = isKey ? 0 : HedgehogFeatureMap.QueryShift(shift);
        for (int i = 0; i < f; i++)
        {
            double y = g[i];
            double up = isKey ? (y < limit ? Math.Exp(y) : 0) : Math.Exp(y - shift);
            double down = isKey ? (-y < limit ? Math.Exp(-y) : 0) : Math.Exp(-y - shift);
            g[i] = dphi[i] * up - dphi[f + i] * down;
        }
        for (int i = 0; i < f; i++)
        {
            long row = ((long)head * f + i) * dk;
            if (dB != null) dB[(long)head * f + i] += g[i];
            for (int j = 0; j < dk; j++)
            {
                if (!dx.IsEmpty) dx[j] += (float)(g[i] * weights.W[row + j]);
                if (dW != null) dW[row + j] += g[i] * x[j];
            }
        }
    }
}
