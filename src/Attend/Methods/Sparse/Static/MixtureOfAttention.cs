namespace Attend.Methods.Sparse.Static;

/// <summary>
/// MoA (Fu et al., "MoA: Mixture of Sparse Attention for Automatic Large Language Model Compression", 2024): every head
/// has its own sliding window (plus the sink tokens), from a per-head profile. MoA's elastic rule sets head h's span
/// to αₕ + βₕ·N for a sequence of N tokens; the profile is found offline by measuring each head's sensitivity on
/// calibration data under a density budget (<see cref="MoaProfile.Fit"/> does that search on given Q and K).
/// </summary>
/// <remarks>
/// Deviation: MoA's profiler uses gradients of the model loss; <see cref="MoaProfile.Fit"/> instead measures, per head,
/// the exact attention mass each candidate window keeps on calibration rows and picks windows greedily by mass gained per
/// pair under the budget. The spans here are (α, β) per head or plain windows.
/// </remarks>
public readonly struct PerHeadWindowMask : IMaskMod<PerHeadWindowMask>
{
    private readonly int[] _windows;

    /// <summary>Head h sees keys within <paramref name="windows"/>[h] positions (self included) and the first <paramref name="sinks"/> keys.</summary>
    /// <exception cref="ArgumentException">An empty profile or a window below 1; negative sinks.</exception>
    public PerHeadWindowMask(int[] windows, int sinks)
    {
        ArgumentNullException.ThrowIfNull(windows);
        if (windows.Length == 0) throw new ArgumentException("The profile needs one window per head.", nameof(windows));
        foreach (int w in windows) ArgumentOutOfRangeException.ThrowIfLessThan(w, 1, nameof(windows));
        ArgumentOutOfRangeException.ThrowIfNegative(sinks);
        _windows = (int[])windows.Clone();
        Sinks = sinks;
    }

    /// <summary>The window of each head (head h uses entry h mod count).</summary>
    public IReadOnlyList<int> Windows => _windows;

    /// <summary>Sink keys.</summary>
    public int Sinks { get; }

    private SinkWindowMask Of(int head) => new(Sinks, _windows[head % _windows.Length]);

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k) => Of(head).IsVisible(batch, head, q, k);

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) => Of(head).ClassifyBlock(batch, head, qStart, qEnd, kStart, kEnd);

    /// <inheritdoc/>
    public bool DependsOnHead => _windows.Length > 1;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"moa([{string.Join(",", _windows)}], sinks {Sinks})";
}

/// <summary>MoA's per-head profile: windows from the elastic rule, or fitted on calibration Q and K.</summary>
public static class MoaProfile
{
    /// <summary>The elastic rule: head h's window is round(αₕ + βₕ·<paramref name="length"/>), at least 1.</summary>
    /// <exception cref="ArgumentException">Lists of different lengths, or empty.</exception>
    public static int[] Elastic(IReadOnlyList<double> alpha, IReadOnlyList<double> beta, int length)
    {
        ArgumentNullException.ThrowIfNull(alpha);
        ArgumentNullException.ThrowIfNull(beta);
        if (alpha.Count == 0 || alpha.Count != beta.Count)
            throw new ArgumentException($"alpha and beta need one entry per head each (got {alpha.Count} and {beta.Count}).", nameof(beta));
        var w = new int[alpha.Count];
        for (int h = 0; h < w.Length; h++) w[h] = (int)Math.Max(1, Math.Round(alpha[h] + beta[h] * length));
        return w;
    }

    /// <summary>
    /// Fits one window per head from <paramref name="candidates"/> on calibration inputs (Q <c>[T, H, D]</c>, K
    /// <c>[T, Hkv, D]</c> of one sequence, causal) so that the mean window is at most <paramref name="meanWindow"/>:
    /// every head starts at the smallest candidate, then the step with the most exact attention mass gained per extra
    /// key (measured on <paramref name="sampleRows"/> rows per head in float64) is taken while the budget allows.
    /// </summary>
    /// <exception cref="ArgumentException">Mis-sized inputs, no candidates, or a budget below the smallest candidate.</exception>
    public static int[] Fit(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int length, int heads, int kvHeads, int headDim,
        IReadOnlyList<int> candidates, double meanWindow, int sinks = 4, int sampleRows = 32)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        if (q.Length != (long)length * heads * headDim) throw new ArgumentException($"q has {q.Length} values; [T={length}, H={heads}, D={headDim}] needs {(long)length * heads * headDim}.", nameof(q));
        if (k.Length != (long)length * kvHeads * headDim) throw new ArgumentException($"k has {k.Length} values; [T={length}, Hkv={kvHeads}, D={headDim}] needs {(long)length * kvHeads * headDim}.", nameof(k));
        if (candidates.Count == 0) throw new ArgumentException("At least one candidate window is needed.", nameof(candidates));
        if (kvHeads < 1 || heads % kvHeads != 0) throw new ArgumentException($"kvHeads {kvHeads} must divide heads {heads}.", nameof(kvHeads));
        int[] sorted = [.. candidates.Distinct().Order()];
        if (sorted[0] < 1) throw new ArgumentException("Candidate windows must be ≥ 1.", nameof(candidates));
        if (meanWindow < sorted[0]) throw new ArgumentException($"The budget {meanWindow} is below the smallest candidate {sorted[0]}.", nameof(meanWindow));

        // mass[h, c]: mean exact attention mass that window sorted[c] (plus sinks) keeps on the sampled rows of head h.
        var mass = new double[heads, sorted.Length];
        var logits = new double[length];
        double scale = 1 / Math.Sqrt(headDim);
        int group = heads / kvHeads, rows = Math.Min(sampleRows, length);
        for (int h = 0; h < heads; h++)
        {
            for (int r = 0; r < rows; r++)
            {
                int row = length - 1 - (int)((long)r * length / rows); // spread over the sequence, latest first
                double max = double.NegativeInfinity;
                for (int j = 0; j <= row; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += q[(row * heads + h) * headDim + d] * k[(j * kvHeads + h / group) * headDim + d];
                    logits[j] = dot * scale;
                    max = Math.Max(max, logits[j]);
                }
                double total = 0;
                for (int j = 0; j <= row; j++) total += Math.Exp(logits[j] - max);
                for (int c = 0; c < sorted.Length; c++)
                {
                    double kept = 0;
                    for (int j = 0; j <= row; j++) if (j < sinks || row - j < sorted[c]) kept += Math.Exp(logits[j] - max);
                    mass[h, c] += kept / total / rows;
                }
            }
        }
        var choice = new int[heads];
        double budget = meanWindow * heads, used = heads * (double)sorted[0];
        while (true)
        {
            int bestHead = -1;
            double bestGain = 0;
            for (int h = 0; h < heads; h++)
            {
                int c = choice[h];
                if (c + 1 >= sorted.Length || used - sorted[c] + sorted[c + 1] > budget) continue;
                double gain = (mass[h, c + 1] - mass[h, c]) / (sorted[c + 1] - sorted[c]);
                if (gain > bestGain) { bestGain = gain; bestHead = h; }
            }
            if (bestHead < 0) break;
            used += sorted[choice[bestHead] + 1] - sorted[choice[bestHead]];
            choice[bestHead]++;
        }
        var windows = new int[heads];
        for (int h = 0; h < heads; h++) windows[h] = sorted[choice[h]];
        return windows;
    }
}

/// <summary>The <c>moa</c> method: <see cref="PerHeadWindowMask"/> on the exact kernel.</summary>
public sealed class MoaMethod : StaticPatternMethod
{
    /// <inheritdoc/>
    public override MethodInfo Info { get; } = new("moa", "sparse", "static",
        "MoA: Mixture of Sparse Attention for Automatic Large Language Model Compression (Fu et al., 2024)", ["cpu", "cuda"], "implemented",
        "a different sliding window per head (plus sinks), from a per-head profile")
    {
        Parameters =
        [
            new("windows", "list", "", "one window per head (cycled); default: geometric from T/64 to T/8 over the heads"),
            new("alpha", "list", "", "elastic rule: per-head α (with beta)"), new("beta", "list", "", "elastic rule: per-head β, window = α + β·T"),
            new("sinks", "int", "64", "sink keys"), CausalParameter,
        ],
    };

    /// <inheritdoc/>
    public override IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal)
    {
        int[]? windows = IntList(arguments, "windows", 1);
        string alpha = arguments.GetString("alpha", ""), beta = arguments.GetString("beta", "");
        int sinks = arguments.GetInt("sinks", 64, 0);
        if (alpha.Length > 0 || beta.Length > 0)
        {
            if (windows is not null) throw new ArgumentException("Give either windows or alpha/beta, not both.", "windows");
            windows = MoaProfile.Elastic(Reals(alpha, "alpha"), Reals(beta, "beta"), keyLength);
        }
        windows ??= DefaultProfile(keyLength, heads);
        return new PerHeadWindowMask(windows, sinks);
    }

    /// <summary>Windows spread geometrically from T/64 to T/8 over the heads (at least 1 each).</summary>
    public static int[] DefaultProfile(int keyLength, int heads)
    {
        var w = new int[heads];
        for (int h = 0; h < heads; h++)
        {
            double f = heads == 1 ? 0.5 : (double)h / (heads - 1);
            w[h] = Math.Max(1, (int)Math.Round(keyLength / 64.0 * Math.Pow(8, f)));
        }
        return w;
    }

    private static double[] Reals(string text, string name)
    {
        string[] parts = text.Split(',');
        var values = new double[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!double.TryParse(parts[i].Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out values[i]) || !double.IsFinite(values[i]))
                throw new ArgumentException($"Parameter '{name}' must list numbers separated by ','; got '{text}'.", name);
        return values;
    }
}
