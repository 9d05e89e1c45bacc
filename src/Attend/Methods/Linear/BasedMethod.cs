using System.Globalization;
using Attend.Linear;
using Attend.Methods.Softmax;

namespace Attend.Methods.Linear;

/// <summary>
/// Based (Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra, Ré, "Simple linear attention language models
/// balance the recall-throughput tradeoff", ICML 2024): linear attention with the 2nd-order Taylor feature map of
/// exp(q·k/√d) (<see cref="FeatureMaps.Taylor2"/>: width 1 + d + d², so the state is (1 + d + d²) × Dv and d is kept
/// small, 16 in the paper), normalised by its running denominator, combined with exact sliding-window softmax attention
/// (the softmax family's kernel, mask <c>window:W−1,0</c>) for precise local recall.
/// Deviations: in the Based model the linear and sliding-window attentions are separate layers with their own
/// projections; here both branches run on the same q, k, v: the output is the Taylor linear branch, the window branch
/// is returned as <c>Extras["window"]</c> (<c>combine=sum</c> adds it to the output instead). The feature projection to
/// d = 16 belongs to the layer (pass projected q/k). The window branch sees only the tokens of the call (it keeps no KV
/// cache of its own): a decode step carries the window's last W − 1 keys and values as the input <c>window_state</c>
/// <c>[N, W − 1, Hkv, 2·Dk + 1]</c> (per slot: key, value, and 1 for a filled slot, 0 for an empty one; the filled slots
/// are the most recent, at the end), which every call with W &gt; 1 returns updated as <c>Extras["window_state"]</c>, so a
/// prefix run followed by decode steps gives the whole run's window branch (a call without it starts the window empty).
/// </summary>
public sealed class BasedMethod : LinearMethod
{
    /// <summary>The method's name.</summary>
    public const string Name = "based";

    /// <summary>The paper.</summary>
    public const string Paper = "Simple linear attention language models balance the recall-throughput tradeoff (Arora et al., 2024)";

    /// <inheritdoc />
    public override MethodInfo Info { get; } = new(Name, "linear", "method", Paper, ["cpu"], "implemented",
        "Taylor (2nd-order) feature-map linear attention + exact sliding-window softmax branch (input/Extras window_state carries the window between calls)")
    {
        Parameters =
        [
            FormParameter, ChunkParameter,
            new MethodParameter("window", "int", "64", "sliding-window size W of the softmax branch (0: no branch)"),
            new MethodParameter("combine", "none|sum", "none", "none: window branch in Extras[\"window\"]; sum: added to the output"),
        ],
    };

    /// <summary>The input (and <see cref="MethodResult.Extras"/> entry) holding the window branch's last W − 1 keys and values.</summary>
    public const string WindowStateName = "window_state";

    /// <inheritdoc />
    protected override LinearCall Configure(MethodInputs inputs, MethodArguments arguments, LinearShape shape)
    {
        int window = arguments.GetInt("window", 64, 0);
        bool sum = arguments.GetChoice("combine", "none", "none", "sum") == "sum";
        if (shape.KeyDim > 64)
            throw new ArgumentException($"Based's Taylor map widens Dk = {shape.KeyDim} to {1 + shape.KeyDim + shape.KeyDim * shape.KeyDim} features; project q/k to a small dim (16 in the paper, at most 64 here).", "q");
        MethodTensor? cache = inputs.Find(WindowStateName);
        if (cache is not null)
        {
            if (window <= 1) throw new ArgumentException($"Input '{WindowStateName}' is given but the window W = {window} keeps no earlier keys.", WindowStateName);
            CheckCache(inputs, cache, shape, window);
        }
        return new LinearCall(new LinearAttentionOptions { FeatureMap = FeatureMaps.Taylor2, Normalization = LinearNormalization.Denominator })
        {
            After = window == 0 ? null : (i, s, r) => AddWindow(i, s, r, window, sum, cache),
        };
    }

    private static void CheckCache(MethodInputs inputs, MethodTensor cache, LinearShape shape, int window)
    {
        int d = shape.KeyDim, sequences = Sequences(inputs, shape);
        if (shape.ValueDim != d) throw new ArgumentException($"The window branch needs Dk = Dv; got Dk = {d}, Dv = {shape.ValueDim}.", "v");
        string want = $"[N = {sequences}, W − 1 = {window - 1}, Hkv = {shape.KvHeads}, 2·Dk + 1 = {2 * d + 1}]";
        if (cache.Shape.Count != 4 || cache.Dim(0) != sequences || cache.Dim(1) != window - 1 || cache.Dim(2) != shape.KvHeads || cache.Dim(3) != 2 * d + 1)
            throw new ArgumentException($"Input '{WindowStateName}' {cache} must be {want}.", WindowStateName);
        int slots = window - 1, row = shape.KvHeads * (2 * d + 1);
        for (int s = 0; s < cache.Dim(0); s++)
        {
            bool filled = false;
            for (int j = 0; j < slots; j++)
                for (int h = 0; h < shape.KvHeads; h++)
                {
                    float flag = cache.Data[((long)s * slots + j) * row + h * (2 * d + 1) + 2 * d];
                    if (flag is not (0f or 1f) || (filled && flag == 0f) || (h > 0 && flag != cache.Data[((long)s * slots + j) * row + 2 * d]))
                        throw new ArgumentException($"Input '{WindowStateName}': sequence {s} slot {j} head {h} has flag {flag}; flags must be 0 (empty) or 1 (filled), the same for every head, and the filled slots must come last.", WindowStateName);
                    if (h == 0) filled |= flag == 1f;
                }
        }
    }

    private static void AddWindow(MethodInputs inputs, LinearShape shape, MethodResult result, int window, bool sum, MethodTensor? cache)
    {
        MethodResult local;
        if (cache is null)
        {
            string mask = "window:" + (window - 1).ToString(CultureInfo.InvariantCulture) + ",0";
            local = new ExactAttentionMethod().Run(inputs, MethodArguments.Parse([$"mask={mask}"]));
        }
        else local = new MethodResult(WindowAfterCache(inputs, shape, window, cache));
        if (window > 1) result.Extras[WindowStateName] = NextCache(inputs, shape, window, cache);
        if (sum)
        {
            float[] o = result.Output.Data, w = local.Output.Data;
            for (int i = 0; i < o.Length; i++) o[i] += w[i];
        }
        else result.Extras["window"] = local.Output;
        result.Report.Add(new("window", $"{window} ({(sum ? "summed into the output" : "Extras[window]")})"));
    }

    // Sequence n's rows of the packed [rows, heads, D] inputs: [start, start + length).
    private static (int Start, int Length) Rows(MethodInputs inputs, LinearShape shape, int n) =>
        inputs.Offsets is { } o ? (o.Start(n), o.Length(n)) : (n * shape.Tokens, shape.Tokens);

    private static int Sequences(MethodInputs inputs, LinearShape shape) => inputs.Offsets?.Count ?? shape.Batch;

    // Filled slots of sequence n's cache (they are the last ones).
    private static int Filled(MethodTensor cache, LinearShape shape, int window, int n)
    {
        int slots = window - 1, width = 2 * shape.KeyDim + 1, row = shape.KvHeads * width, count = 0;
        for (int j = 0; j < slots; j++) if (cache.Data[((long)n * slots + j) * row + 2 * shape.KeyDim] == 1f) count++;
        return count;
    }

    /// <summary>
    /// The window branch when earlier keys are cached: per sequence, its filled cache slots followed by its tokens form the
    /// keys and values of a packed batch, and the softmax kernel's bottom-right alignment places each query after them.
    /// </summary>
    private static MethodTensor WindowAfterCache(MethodInputs inputs, LinearShape shape, int window, MethodTensor cache)
    {
        int n = Sequences(inputs, shape), hkv = shape.KvHeads, d = shape.KeyDim, width = 2 * d + 1, slots = window - 1;
        int rowKv = hkv * d;
        var queryLengths = new int[n];
        var keyLengths = new int[n];
        for (int s = 0; s < n; s++)
        {
            queryLengths[s] = Rows(inputs, shape, s).Length;
            keyLengths[s] = Filled(cache, shape, window, s) + queryLengths[s];
        }
        var keyOffsets = SeqOffsets.FromLengths(keyLengths);
        var k = new float[(long)keyOffsets.TotalTokens * rowKv];
        var v = new float[k.Length];
        for (int s = 0; s < n; s++)
        {
            int filled = keyLengths[s] - queryLengths[s], at = keyOffsets.Start(s);
            for (int j = slots - filled; j < slots; j++, at++)
                for (int h = 0; h < hkv; h++)
                {
                    long from = (((long)s * slots + j) * hkv + h) * width;
                    Array.Copy(cache.Data, from, k, ((long)at * hkv + h) * d, d);
                    Array.Copy(cache.Data, from + d, v, ((long)at * hkv + h) * d, d);
                }
            (int start, int length) = Rows(inputs, shape, s);
            Array.Copy(inputs.K.Data, (long)start * rowKv, k, (long)at * rowKv, (long)length * rowKv);
            Array.Copy(inputs.V.Data, (long)start * rowKv, v, (long)at * rowKv, (long)length * rowKv);
        }
        int rows = shape.Batch * shape.Tokens;
        var output = new float[(long)rows * shape.Heads * d];
        var options = new AttentionOptions
        {
            Mask = new SlidingWindowMask(window - 1, 0), QueryOffsets = SeqOffsets.FromLengths(queryLengths), KeyOffsets = keyOffsets,
        };
        Attention.Forward<float>(AttentionLayout.Bthd(inputs.Q.Data.AsSpan(), 1, rows, shape.Heads, d), AttentionLayout.Bthd(k.AsSpan(), 1, keyOffsets.TotalTokens, hkv, d),
            AttentionLayout.Bthd(v.AsSpan(), 1, keyOffsets.TotalTokens, hkv, d), options, AttentionLayout.Bthd(output.AsSpan(), 1, rows, shape.Heads, d), default);
        return new MethodTensor(output, shape.Batch, shape.Tokens, shape.Heads, d);
    }

    /// <summary>The last W − 1 keys and values of every sequence (its cache, then its tokens), filled slots last.</summary>
    private static MethodTensor NextCache(MethodInputs inputs, LinearShape shape, int window, MethodTensor? cache)
    {
        int n = Sequences(inputs, shape), hkv = shape.KvHeads, d = shape.KeyDim, width = 2 * d + 1, slots = window - 1;
        var next = new float[(long)n * slots * hkv * width];
        for (int s = 0; s < n; s++)
        {
            (int start, int length) = Rows(inputs, shape, s);
            int filled = cache is null ? 0 : Filled(cache, shape, window, s);
            int total = filled + length, keep = Math.Min(slots, total);
            for (int j = slots - keep, i = total - keep; j < slots; j++, i++)
                for (int h = 0; h < hkv; h++)
                {
                    long to = (((long)s * slots + j) * hkv + h) * width;
                    if (i < filled)
                        Array.Copy(cache!.Data, (((long)s * slots + (slots - filled + i)) * hkv + h) * width, next, to, width);
                    else
                    {
                        long row = ((long)(start + i - filled) * hkv + h) * d;
                        Array.Copy(inputs.K.Data, row, next, to, d);
                        Array.Copy(inputs.V.Data, row, next, to + d, d);
                        next[to + 2 * d] = 1f;
                    }
                }
        }
        return new MethodTensor(next, n, slots, hkv, width);
    }
}
