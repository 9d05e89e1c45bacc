using System.Diagnostics;
using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Routing;

/// <summary>Options of <see cref="CCA"/>; null fields take the defaults given.</summary>
public sealed record CcaOptions
{
    /// <summary>Tokens per group (each complete group is pooled into one core token; default 64).</summary>
    public int? GroupSize { get; init; }

    /// <summary>Groups a query sees token by token: its own and the ones before it (default 2, at least 1).</summary>
    public int? LocalGroups { get; init; }
}

/// <summary>
/// The causal mask of <see cref="CCA"/> over the concatenated key axis <c>[core tokens; tokens]</c> of one sequence:
/// a query at position p sees the tokens of its own group and the <c>LocalGroups − 1</c> before it (causally), and
/// the core tokens of every earlier group.
/// </summary>
public readonly struct CcaMask : IMaskMod<CcaMask>
{
    private readonly int[]? _cores, _queryLengths, _keyLengths;
    private readonly int _group, _local;

    internal CcaMask(int[] cores, int[] queryLengths, int[] keyLengths, int group, int local)
    {
        _cores = cores;
        _queryLengths = queryLengths;
        _keyLengths = keyLengths;
        _group = group;
        _local = local;
    }

    private int[] Cores => _cores ?? throw new InvalidOperationException("default(CcaMask) is not a plan; build it with CCA.Plan.");

    // First group a query at position p sees token by token; cores of groups below it are visible.
    private int FirstLocalGroup(int p) => p / _group - _local + 1;

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        int e = Cores.Length == 1 ? 0 : batch, nc = Cores[e], tk = _keyLengths![e], tq = _queryLengths![e];
        int p = q - nc; // the query's position on the token axis (q counts on the concatenated axis)
        if (p < 0 || p - (tk - tq) < 0 || p >= tk || k < 0 || k >= nc + tk) return false;
        if (k < nc) return k < FirstLocalGroup(p);
        int key = k - nc;
        return key <= p && key >= FirstLocalGroup(p) * _group;
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int e = Cores.Length == 1 ? 0 : batch, nc = Cores[e], tk = _keyLengths![e], tq = _queryLengths![e];
        int p0 = Math.Max(qStart - nc, Math.Max(tk - tq, 0)), p1 = Math.Min(qEnd - nc, tk);
        if (p1 <= p0 || kEnd <= kStart) return BlockKind.Empty;
        bool rowsInside = p0 == qStart - nc && p1 == qEnd - nc;
        BlockKind core = BlockKind.Empty, local = BlockKind.Empty;
        bool hasCore = kStart < nc, hasLocal = kEnd > nc;
        if (hasCore)
        {
            int j0 = Math.Max(kStart, 0), j1 = Math.Min(kEnd, nc);
            if (j0 >= FirstLocalGroup(p1 - 1)) core = BlockKind.Empty;
            else core = j1 - 1 < FirstLocalGroup(p0) && j0 == kStart && rowsInside ? BlockKind.Full : BlockKind.Partial;
        }
        if (hasLocal)
        {
            int k0 = Math.Max(kStart, nc) - nc, k1 = Math.Min(kEnd, nc + tk) - nc;
            if (k1 <= k0 || k0 > p1 - 1 || k1 - 1 < FirstLocalGroup(p0) * _group) local = BlockKind.Empty;
            else local = k1 - 1 <= p0 && k0 >= FirstLocalGroup(p1 - 1) * _group && k1 == kEnd - nc && rowsInside ? BlockKind.Full : BlockKind.Partial;
        }
        if (hasCore && hasLocal)
        {
            if (core == BlockKind.Empty && local == BlockKind.Empty) return BlockKind.Empty;
            return core == BlockKind.Full && local == BlockKind.Full ? BlockKind.Full : BlockKind.Partial;
        }
        return hasCore ? core : local;
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => Cores.Length > 1;

    /// <inheritdoc/>
    public override string ToString() => $"cca(group {_group}, local {_local})";
}

/// <summary>
/// A frozen CCA plan: the core keys and values of every complete group, concatenated in front of the tokens
/// (<c>[B, cores + Tk, Hkv, D]</c>, or a packed batch with per-sequence key offsets), and the <see cref="CcaMask"/>
/// over that axis. <see cref="Forward"/> is one exact-kernel call; <see cref="Options"/> gives the same problem to
/// the float64 reference.
/// </summary>
public sealed class CcaPlan
{
    internal CcaPlan(SelectorInput input, float[] keys, float[] values, int valueDim, int concatLength, SeqOffsets? keyOffsets, CcaMask mask, long computed, long basePairs, long exactPairs)
    {
        Input = input;
        Keys = keys;
        Values = values;
        ValueDim = valueDim;
        ConcatLength = concatLength;
        KeyOffsets = keyOffsets;
        Mask = mask;
        ComputedPairs = computed;
        Density = basePairs == 0 ? 1 : (double)computed / basePairs;
        ExactFraction = basePairs == 0 ? 1 : (double)exactPairs / basePairs;
        Blocks = keyOffsets is not null
            ? BlockMask.Create(mask, input.Offsets!, keyOffsets, 1, SparsePlan.KernelBlockSize, SparsePlan.KernelBlockSize)
            : BlockMask.Create(mask, input.TotalQueryLength, concatLength, input.Batch, 1, SparsePlan.KernelBlockSize, SparsePlan.KernelBlockSize);
    }

    /// <summary>The queries and keys the plan was built from.</summary>
    public SelectorInput Input { get; }

    /// <summary>Core keys then tokens, <c>[B, ConcatLength, Hkv, D]</c> (packed by <see cref="KeyOffsets"/> for a varlen batch).</summary>
    public float[] Keys { get; }

    /// <summary>Core values then token values, <c>[B, ConcatLength, Hkv, Dv]</c>.</summary>
    public float[] Values { get; }

    /// <summary>Dv.</summary>
    public int ValueDim { get; }

    /// <summary>Length of the concatenated key axis (the packed total for a varlen batch).</summary>
    public int ConcatLength { get; }

    /// <summary>Key offsets of the concatenated axis of a packed batch, else null.</summary>
    public SeqOffsets? KeyOffsets { get; }

    /// <summary>The mask over the concatenated axis.</summary>
    public CcaMask Mask { get; }

    /// <summary>Its block structure for the kernel's tiles.</summary>
    public BlockMask Blocks { get; }

    /// <summary>Pairs computed (local tokens and cores) over all heads.</summary>
    public long ComputedPairs { get; }

    /// <summary>Computed pairs over the causal pairs of the original problem.</summary>
    public double Density { get; }

    /// <summary>The share of causal pairs computed exactly (the local tokens; cores stand in for the rest).</summary>
    public double ExactFraction { get; }

    /// <summary>Selector (pooling) time in milliseconds.</summary>
    public double SelectorMilliseconds { get; internal set; }

    /// <summary>Options that run the plan: its mask, blocks and offsets.</summary>
    public AttentionOptions Options(float? scale = null) => new()
    {
        Mask = Mask, BlockMask = Blocks, Scale = scale, QueryOffsets = Input.Offsets, KeyOffsets = KeyOffsets,
    };

    /// <summary>Attention of <paramref name="q"/> over the cores and local tokens: output <c>[B, Tq, H, Dv]</c>, LSE <c>[B, H, Tq]</c>.</summary>
    public AttentionKernel Forward(ReadOnlySpan<float> q, Span<float> output, Span<float> lse, float? scale = null)
    {
        SelectorInput x = Input;
        return Attention.Forward<float>(
            AttentionLayout.Bthd(MemoryMarshalHelper.AsWritable(q), x.Batch, x.TotalQueryLength, x.Heads, x.Dim),
            AttentionLayout.Bthd<float>(Keys, x.Batch, ConcatLength, x.KvHeads, x.Dim),
            AttentionLayout.Bthd<float>(Values, x.Batch, ConcatLength, x.KvHeads, ValueDim),
            Options(scale),
            AttentionLayout.Bthd(output, x.Batch, x.TotalQueryLength, x.Heads, ValueDim),
            lse.IsEmpty ? default : AttentionLayout.Lse(lse, x.Batch, x.Heads, x.TotalQueryLength));
    }
}

/// <summary>
/// CCA-Attention, core context aware attention (Chen et al., "Core Context Aware Transformers for Long Context
/// Language Modeling", 2024/25): globality-pooling attention — tokens are grouped and each group is merged into a
/// core token by significance-weighted pooling — plus locality-preserved attention to the neighbouring tokens, the
/// two fused. Here the core token of a group is the softmax-weighted sum of its keys and of its values, weighted by
/// the group's last query (its significance); a query attends in one softmax to the core tokens of earlier groups
/// and, exactly, to the tokens of its own and the preceding <c>LocalGroups − 1</c> groups. The plan concatenates the
/// cores in front of the keys (<see cref="CcaPlan"/>), so the exact kernel computes it in one call.
/// </summary>
/// <remarks>
/// Deviations: (1) the fusion is one softmax over [cores; local tokens] (what attending to a concatenated K/V
/// computes), where the paper fuses the two attentions' outputs, partly with learned weights; (2) significance is
/// the group's last query's attention to the group's keys, averaged over the query heads of a key head (the paper
/// takes it from the last token too); for a group with no query row (decode-style Tq &lt; Tk) its last key stands in;
/// (3) causal only; incomplete trailing groups have no core (their tokens are local to every query that sees them).
/// </remarks>
public static class CCA
{
    /// <summary>Pools the cores and freezes the plan.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A group size or local group count below 1 (the parameter is named).</exception>
    /// <exception cref="ArgumentException">Values of another shape than the keys.</exception>
    public static CcaPlan Plan(SelectorInput input, float[] values, int valueDim, CcaOptions? options = null, float? scale = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(values);
        options ??= new CcaOptions();
        int g = options.GroupSize ?? 64, local = options.LocalGroups ?? 2;
        if (g < 1) throw new ArgumentOutOfRangeException(nameof(CcaOptions.GroupSize), g, "The group size must be ≥ 1.");
        if (local < 1) throw new ArgumentOutOfRangeException(nameof(CcaOptions.LocalGroups), local, "At least the own group is local (≥ 1).");
        if (values.LongLength != (long)input.Batch * input.TotalKeyLength * input.KvHeads * valueDim)
            throw new ArgumentException($"values holds {values.LongLength} numbers; [B, Tk, Hkv, Dv={valueDim}] needs {(long)input.Batch * input.TotalKeyLength * input.KvHeads * valueDim}.", nameof(values));
        float sc = SelectorMath.Scale(scale, input.Dim);
        long start = Stopwatch.GetTimestamp();
        int n = input.Sequences, d = input.Dim, hkv = input.KvHeads;
        var cores = new int[n];
        var ql = new int[n];
        var kl = new int[n];
        for (int s = 0; s < n; s++) { cores[s] = input.KeyLength(s) / g; ql[s] = input.QueryLength(s); kl[s] = input.KeyLength(s); }
        bool packed = input.Offsets is not null;
        int maxCores = 0, sumCores = 0;
        foreach (int c in cores) { maxCores = Math.Max(maxCores, c); sumCores += c; }
        int concat = packed ? input.TotalKeyLength + sumCores : input.TotalKeyLength + maxCores;
        SeqOffsets? keyOffsets = null;
        var concatStart = new int[n];
        if (packed)
        {
            var lens = new int[n];
            for (int s = 0; s < n; s++) lens[s] = cores[s] + kl[s];
            keyOffsets = SeqOffsets.FromLengths(lens);
            for (int s = 0; s < n; s++) concatStart[s] = keyOffsets.Start(s);
        }
        var keys = new float[(long)input.Batch * concat * hkv * d];
        var vals = new float[(long)input.Batch * concat * hkv * valueDim];
        SelectorMath.ForEach(n * hkv, item =>
        {
            int s = item / hkv, kvh = item % hkv, tk = kl[s], tq = ql[s];
            int b = packed ? 0 : s, baseRow = packed ? concatStart[s] : 0;
            long Row(int r) => ((long)b * concat + baseRow + r) * hkv + kvh;
            long SourceRow(int t) => ((long)b * input.TotalKeyLength + (packed ? input.Offsets!.Start(s) : 0) + t) * hkv + kvh;
            for (int t = 0; t < tk; t++)
            {
                input.KeyRow(s, kvh, t).CopyTo(keys.AsSpan((int)(Row(cores[s] + t) * d), d));
                values.AsSpan((int)(SourceRow(t) * valueDim), valueDim).CopyTo(vals.AsSpan((int)(Row(cores[s] + t) * valueDim), valueDim));
            }
            var qbar = new float[d];
            var w = new float[g];
            for (int j = 0; j < cores[s]; j++)
            {
                int last = (j + 1) * g - 1, row = last - (tk - tq);
                qbar.AsSpan().Clear();
                if (row >= 0 && row < tq)
                {
                    for (int h = kvh * input.GroupSize; h < (kvh + 1) * input.GroupSize; h++) TensorPrimitives.Add(qbar, input.QueryRow(s, h, row), qbar);
                    TensorPrimitives.Multiply(qbar, sc / input.GroupSize, qbar);
                }
                else TensorPrimitives.Multiply(input.KeyRow(s, kvh, last), sc, qbar);
                for (int t = 0; t < g; t++) w[t] = TensorPrimitives.Dot(qbar, input.KeyRow(s, kvh, j * g + t));
                SelectorMath.SoftMaxInPlace(w);
                Span<float> ck = keys.AsSpan((int)(Row(j) * d), d), cv = vals.AsSpan((int)(Row(j) * valueDim), valueDim);
                for (int t = 0; t < g; t++)
                {
                    TensorPrimitives.MultiplyAdd(input.KeyRow(s, kvh, j * g + t), w[t], ck, ck);
                    TensorPrimitives.MultiplyAdd(values.AsSpan((int)(SourceRow(j * g + t) * valueDim), valueDim), w[t], cv, cv);
                }
            }
        });
        var mask = new CcaMask(cores, ql, kl, g, local);
        long computed = 0, basePairs = 0, exact = 0;
        for (int s = 0; s < n; s++)
            for (int r = 0; r < ql[s]; r++)
            {
                int p = r + kl[s] - ql[s];
                if (p < 0) continue;
                int first = p / g - local + 1;
                int localKeys = p - Math.Max(first, 0) * g + 1;
                computed += localKeys + Math.Max(first, 0);
                exact += localKeys;
                basePairs += Math.Min(p, kl[s] - 1) + 1;
            }
        var plan = new CcaPlan(input, keys, vals, valueDim, concat, keyOffsets, mask,
            computed * input.Heads, basePairs * input.Heads, exact * input.Heads);
        plan.SelectorMilliseconds = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        return plan;
    }
}

/// <summary><c>attend run --method cca</c>: <see cref="CCA"/> on named tensors.</summary>
public sealed class CcaMethod : IAttentionMethod
{
    /// <inheritdoc/>
    public MethodInfo Info { get; } = new("cca", "sparse", "method",
        "Core Context Aware Transformers for Long Context Language Modeling (CCA-Attention, Chen et al., 2024)", ["cpu", "cuda"], "implemented",
        "groups pooled into significance-weighted core tokens + exact local groups, one softmax over both (causal)")
    {
        Parameters =
        [
            new("group", "int", "64", "tokens per group (one core token each)"),
            new("local", "int", "2", "groups attended token by token (own + previous)"),
            RoutingAdapter.ScaleParameter,
        ],
    };

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        var options = new CcaOptions
        {
            GroupSize = RoutingAdapter.OptionalInt(arguments, "group", 1),
            LocalGroups = RoutingAdapter.OptionalInt(arguments, "local", 1),
        };
        float? scale = RoutingAdapter.Scale(arguments);
        arguments.ThrowIfUnused(Info.Name);
        MethodTensor q = inputs.Q, v = inputs.V;
        SelectorInput x = SelectorInput.From(inputs);
        CcaPlan plan = CCA.Plan(x, v.Data, v.Dim(3), options, scale);
        int b = q.Dim(0), tq = q.Dim(1), h = q.Dim(2), dv = v.Dim(3);
        var o = new float[(long)b * tq * h * dv];
        var lse = new float[(long)b * h * tq];
        AttentionKernel kernel = plan.Forward(q.Data, o, lse, scale);
        var result = new MethodResult(new MethodTensor(o, b, tq, h, dv))
        {
            Density = plan.Density,
            SelectorMs = plan.SelectorMilliseconds,
            Coverage = new LocalCoverage(x, options.GroupSize ?? 64, options.LocalGroups ?? 2),
        };
        result.Extras["lse"] = new MethodTensor(lse, b, h, tq);
        result.Report.Add(new("kernel", kernel.Name));
        result.Report.Add(new("exact-fraction", plan.ExactFraction.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }

    // The pairs CCA computes exactly: the local groups (cores only stand in for the far tokens).
    private sealed class LocalCoverage(SelectorInput x, int group, int local) : IPairCoverage
    {
        public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
        {
            covered.Clear();
            int s = batch, row = query, start = 0;
            if (x.Offsets is SeqOffsets o)
            {
                s = 0;
                while (s + 1 < o.Count && o.Start(s + 1) <= query) s++;
                row = query - o.Start(s);
                start = o.Start(s);
            }
            int p = x.QueryPosition(s, row);
            if (p < 0) return;
            int first = Math.Max(p / group - local + 1, 0) * group;
            for (int k = first; k <= Math.Min(p, x.KeyLength(s) - 1); k++) covered[start + k] = true;
        }
    }
}
