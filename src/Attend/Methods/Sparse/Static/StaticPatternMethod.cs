using System.Diagnostics;

namespace Attend.Methods.Sparse.Static;

/// <summary>
/// The shared adapter of the static sparse patterns: a pattern is a mask (a struct <see cref="IMaskMod"/> with a
/// closed-form or bounded-evaluation block classification), intersected with causal attention when <c>causal=true</c>
/// (the default: LLM prefill), frozen into a <see cref="BlockMask"/> (the "selector" time of a static pattern) and run
/// by the exact kernel. No pattern owns a softmax loop; the float64 check of a pattern is
/// <see cref="ReferenceAttention"/> with the same mask.
/// </summary>
public abstract class StaticPatternMethod : IAttentionMethod
{
    /// <summary>The parameter every static pattern takes: intersect with causal attention.</summary>
    protected static readonly MethodParameter CausalParameter = new("causal", "bool", "true", "intersect the pattern with causal attention (prefill)");

    /// <inheritdoc/>
    public abstract MethodInfo Info { get; }

    /// <summary>
    /// The pattern for sequences of <paramref name="keyLength"/> keys and <paramref name="heads"/> query heads, from
    /// <paramref name="arguments"/> (read every parameter the pattern takes; the caller checks for unused ones).
    /// </summary>
    /// <exception cref="ArgumentException">A bad parameter; the message names it.</exception>
    public abstract IMaskMod CreatePattern(MethodArguments arguments, int keyLength, int heads, bool causal);

    /// <summary>The pattern, intersected with causal attention when <paramref name="causal"/>.</summary>
    public IMaskMod CreateMask(MethodArguments arguments, int keyLength, int heads, bool causal)
    {
        IMaskMod pattern = CreatePattern(arguments, keyLength, heads, causal);
        return causal ? MaskSpec.Intersect(pattern, new CausalMask()) : pattern;
    }

    /// <inheritdoc/>
    public MethodResult Run(MethodInputs inputs, MethodArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        int b = q.Dim(0), tq = q.Dim(1), h = q.Dim(2), d = q.Dim(3);
        int tk = k.Dim(1), hkv = k.Dim(2), dv = v.Dim(3);
        SeqOffsets? offsets = inputs.Offsets;
        bool causal = arguments.GetBool("causal", true);
        IMaskMod mask = offsets is null ? CreateMask(arguments, tk, h, causal) : CreatePackedMask(arguments, offsets, h, causal);
        arguments.ThrowIfUnused(Info.Name);

        var clock = Stopwatch.StartNew();
        BlockMask blocks = offsets is null ? BlockMask.Create(mask, tq, tk, b, h) : BlockMask.Create(mask, offsets, offsets, h);
        double planMs = clock.Elapsed.TotalMilliseconds;

        var options = new AttentionOptions { Mask = mask, BlockMask = blocks, QueryOffsets = offsets, KeyOffsets = offsets };
        var o = new float[(long)b * tq * h * dv];
        var lse = new float[(long)b * h * tq];
        AttentionKernel kernel = Attention.Forward<float>(
            AttentionLayout.Bthd<float>(q.Data, b, tq, h, d),
            AttentionLayout.Bthd<float>(k.Data, k.Dim(0), tk, hkv, k.Dim(3)),
            AttentionLayout.Bthd<float>(v.Data, v.Dim(0), v.Dim(1), v.Dim(2), dv),
            options,
            AttentionLayout.Bthd<float>(o, b, tq, h, dv),
            AttentionLayout.Lse(lse, b, h, tq));
        var result = new MethodResult(new MethodTensor(o, b, tq, h, dv))
        {
            Density = Density(blocks, causal),
            SelectorMs = planMs,
            Coverage = offsets is null ? new MaskCoverage(mask, tq, tk) : null,
        };
        result.Extras["lse"] = new MethodTensor(lse, b, h, tq);
        result.Report.Add(new("kernel", kernel.Name));
        result.Report.Add(new("pattern", mask.ToString() ?? Info.Name));
        result.Report.Add(new("block density", blocks.Density.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)));
        return result;
    }

    /// <summary>Pairs the pattern lets through over the pairs of its base (causal or full), over the sequences and heads <paramref name="blocks"/> stores.</summary>
    public static double Density(BlockMask blocks, bool causal)
    {
        ArgumentNullException.ThrowIfNull(blocks);
        double basePairs = 0;
        for (int s = 0; s < blocks.Sequences; s++)
        {
            long tq = blocks.QueryLength(s), tk = blocks.KeyLength(s);
            basePairs += causal ? CausalPairs(tq, tk) : tq * tk;
        }
        basePairs *= blocks.Heads;
        return basePairs == 0 ? 0 : blocks.VisiblePairs() / basePairs;
    }

    // Σ over query rows i of the keys at positions ≤ i + tk − tq (bottom-right aligned causal).
    private static double CausalPairs(long tq, long tk)
    {
        double total = 0;
        for (long i = 0; i < tq; i++) total += Math.Clamp(i + tk - tq + 1, 0, tk);
        return total;
    }

    /// <summary>
    /// The pattern of a packed batch: each sequence's own pattern (built for its own length, so length-dependent
    /// defaults such as MoA's windows or the axial/MaxViT/HaloNet grid are per sequence), combined by sequence index
    /// (<see cref="PerSequenceMask{TMask}"/>); one mask when every sequence has the same length.
    /// </summary>
    /// <exception cref="ArgumentException">A bad parameter, or one (an explicit grid) that does not fit some sequence's length.</exception>
    public IMaskMod CreatePackedMask(MethodArguments arguments, SeqOffsets offsets, int heads, bool causal)
    {
        ArgumentNullException.ThrowIfNull(offsets);
        bool sameLength = true;
        for (int s = 1; s < offsets.Count; s++) sameLength &= offsets.Length(s) == offsets.Length(0);
        if (sameLength) return CreateMask(arguments, offsets.Length(0), heads, causal);
        var masks = new IMaskMod[offsets.Count];
        for (int s = 0; s < masks.Length; s++) masks[s] = CreateMask(arguments, offsets.Length(s), heads, causal);
        return PerSequenceMask.Create(masks);
    }

    /// <summary>A comma-separated list of integers ≥ <paramref name="min"/>, or null when the parameter is absent.</summary>
    /// <exception cref="ArgumentException">A malformed or out-of-range entry; the message names the parameter.</exception>
    protected static int[]? IntList(MethodArguments arguments, string name, int min)
    {
        string text = arguments.GetString(name, "");
        if (text.Length == 0) return null;
        string[] parts = text.Split(',', 'x', 'X');
        var values = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i].Trim(), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out values[i]) || values[i] < min)
                throw new ArgumentException($"Parameter '{name}' must list integers ≥ {min} separated by ',' or 'x'; got '{text}'.", name);
        }
        return values;
    }
}

/// <summary>Helpers shared by the pattern masks.</summary>
internal static class PatternBlocks
{
    /// <summary>
    /// Classifies a kernel block of a pattern defined on coarse blocks of <paramref name="size"/> tokens by looking at
    /// each coarse cell it overlaps (few when the pattern's blocks are at least a few tokens wide): Full when every
    /// overlapped cell is visible, Empty when none is, otherwise Partial.
    /// </summary>
    public static BlockKind ByCells<TCells>(in TCells cells, int head, int size, int qStart, int qEnd, int kStart, int kEnd)
        where TCells : struct, ICellPattern
    {
        if (qEnd <= qStart || kEnd <= kStart) return BlockKind.Empty;
        bool any = false, all = true;
        for (int qb = FloorDiv(qStart, size); qb <= FloorDiv(qEnd - 1, size); qb++)
        {
            for (int kb = FloorDiv(kStart, size); kb <= FloorDiv(kEnd - 1, size); kb++)
            {
                if (cells.CellVisible(head, qb, kb)) any = true; else all = false;
                if (any && !all) return BlockKind.Partial;
            }
        }
        return !any ? BlockKind.Empty : all ? BlockKind.Full : BlockKind.Partial;
    }

    /// <summary>Floor division (positions may be negative when Tq &gt; Tk).</summary>
    public static int FloorDiv(int a, int b) => a >= 0 ? a / b : -((-a + b - 1) / b);

    /// <summary>Empty when the key block lies outside [<paramref name="lo"/>, <paramref name="hi"/>] (a bound on every visible key of the block's queries), else by evaluation.</summary>
    public static BlockKind BoundedEvaluation<TMask>(in TMask mask, int batch, int head, int qStart, int qEnd, int kStart, int kEnd, long lo, long hi)
        where TMask : struct, IMaskMod
    {
        if (kEnd - 1 < lo || kStart > hi) return BlockKind.Empty;
        return BlockClassifier.ByEvaluation(mask, batch, head, qStart, qEnd, Math.Max(kStart, (int)Math.Max(lo, int.MinValue)), Math.Min(kEnd, (int)Math.Min(hi + 1, int.MaxValue))) switch
        {
            BlockKind.Full when kStart >= lo && kEnd - 1 <= hi => BlockKind.Full,
            BlockKind.Empty => BlockKind.Empty,
            _ => BlockKind.Partial,
        };
    }
}

/// <summary>A pattern decided per coarse (query block, key block) cell.</summary>
internal interface ICellPattern
{
    /// <summary>True when coarse query block <paramref name="queryBlock"/> sees coarse key block <paramref name="keyBlock"/> in head <paramref name="head"/>.</summary>
    bool CellVisible(int head, int queryBlock, int keyBlock);
}
