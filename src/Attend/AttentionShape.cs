using System.Numerics.Tensors;

namespace Attend;

/// <summary>
/// The validated geometry of one attention call: sequences (batch entries or varlen sequences), heads, head dim and
/// where each sequence's tokens live. Built once per call by <see cref="Validate{T}"/>, which is the single place
/// where argument errors are raised.
/// </summary>
internal sealed class AttentionShape
{
    public int Batch { get; private init; }
    public int Heads { get; private init; }
    public int KvHeads { get; private init; }
    public int Dim { get; private init; }
    public int QueryTokens { get; private init; }
    public int KeyTokens { get; private init; }
    public bool IsVarlen { get; private init; }

    /// <summary>Per sequence: batch index in the tensors, first query token, query count, first key token, key count.</summary>
    public int[] SeqBatch { get; private init; } = [];
    public int[] QStart { get; private init; } = [];
    public int[] QLen { get; private init; } = [];
    public int[] KStart { get; private init; } = [];
    public int[] KLen { get; private init; } = [];

    public int Sequences => QLen.Length;
    public int GroupSize => Heads / KvHeads;

    public int MaxQueryLength
    {
        get { int m = 0; foreach (int t in QLen) m = Math.Max(m, t); return m; }
    }

    public int MaxKeyLength
    {
        get { int m = 0; foreach (int t in KLen) m = Math.Max(m, t); return m; }
    }

    public static void ReadDims<T>(in ReadOnlyTensorSpan<T> t, string name, out int b, out int tokens, out int h, out int d)
    {
        ReadOnlySpan<nint> l = t.Lengths;
        if (t.Rank == 4)
        {
            (b, tokens, h, d) = ((int)l[0], (int)l[1], (int)l[2], (int)l[3]);
        }
        else if (t.Rank == 3)
        {
            (b, tokens, h, d) = (1, (int)l[0], (int)l[1], (int)l[2]);
        }
        else
        {
            throw new ArgumentException($"{name} must have rank 4 [B, T, H, D] (or rank 3 [T, H, D] for a packed batch); got rank {t.Rank}.", name);
        }
        if (t.Rank > 0 && t.Strides[t.Rank - 1] != 1 && d > 1 && !t.IsEmpty) // an empty tensor addresses nothing
            throw new ArgumentException($"{name}: the head dimension (last) must be contiguous (stride 1); got stride {t.Strides[t.Rank - 1]}.", name);
    }

    public static void RequireDims<T>(in ReadOnlyTensorSpan<T> t, string name, int b, int tokens, int h, int d, string what)
    {
        ReadDims(t, name, out int tb, out int tt, out int th, out int td);
        if (tb != b || tt != tokens || th != h || td != d)
            throw new ArgumentException($"{name} must have shape [{b}, {tokens}, {h}, {d}] ({what}); got [{tb}, {tt}, {th}, {td}].", name);
    }

    public static AttentionShape Validate<T>(in ReadOnlyTensorSpan<T> q, in ReadOnlyTensorSpan<T> k, in ReadOnlyTensorSpan<T> v, AttentionOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ReadDims(q, "q", out int b, out int tq, out int h, out int d);
        ReadDims(k, "k", out int kb, out int tk, out int hkv, out int kd);
        ReadDims(v, "v", out int vb, out int vt, out int vh, out int vd);
        if (q.Rank != k.Rank || q.Rank != v.Rank)
            throw new ArgumentException($"q, k and v must have the same rank; got {q.Rank}, {k.Rank}, {v.Rank}.", nameof(k));
        if (h < 1) throw new ArgumentException($"q must have at least one head (dimension 2); got {h}.", nameof(q));
        if (d < 1) throw new ArgumentException($"q must have a head dim ≥ 1 (dimension 3); got {d}.", nameof(q));
        if (kb != b) throw new ArgumentException($"k has batch {kb} (dimension 0); q has {b}.", nameof(k));
        if (vb != b) throw new ArgumentException($"v has batch {vb} (dimension 0); q has {b}.", nameof(v));
        if (kd != d) throw new ArgumentException($"k has head dim {kd} (last dimension); q has {d}.", nameof(k));
        if (vd != d) throw new ArgumentException($"v has head dim {vd} (last dimension); q has {d} (a different value head dim is not supported yet).", nameof(v));
        if (hkv < 1 || h % hkv != 0)
            throw new ArgumentException($"k has {hkv} heads (dimension 2), which must divide q's {h} heads (grouped-query attention).", nameof(k));
        if (vh != hkv) throw new ArgumentException($"v has {vh} heads (dimension 2); k has {hkv}.", nameof(v));
        if (vt != tk) throw new ArgumentException($"v has {vt} tokens (dimension 1); k has {tk}.", nameof(v));
        if (options.Scale is float s && !float.IsFinite(s))
            throw new ArgumentException($"options.Scale must be finite; got {s}.", nameof(options));
        if (options.Softcap is float c && (!float.IsFinite(c) || c <= 0))
            throw new ArgumentException($"options.Softcap must be finite and > 0; got {c}.", nameof(options));

        SeqOffsets? qo = options.QueryOffsets;
        SeqOffsets? ko = options.KeyOffsets ?? qo;
        if (options.KeyOffsets is not null && qo is null)
            throw new ArgumentException("options.KeyOffsets is set but options.QueryOffsets is not; give both (or only QueryOffsets for self-attention).", nameof(options));
        if (qo is null)
        {
            var batchIndex = new int[b];
            for (int i = 0; i < b; i++) batchIndex[i] = i;
            return new AttentionShape
            {
                Batch = b, Heads = h, KvHeads = hkv, Dim = d, QueryTokens = tq, KeyTokens = tk,
                SeqBatch = batchIndex, QStart = new int[b], QLen = Filled(b, tq), KStart = new int[b], KLen = Filled(b, tk),
            };
        }
        if (b != 1)
            throw new ArgumentException($"With sequence offsets, q, k and v hold one packed batch (dimension 0 must be 1); got {b}.", nameof(q));
        if (qo.TotalTokens != tq)
            throw new ArgumentException($"options.QueryOffsets covers {qo.TotalTokens} tokens but q has {tq} (dimension 1).", nameof(options));
        if (ko!.TotalTokens != tk)
            throw new ArgumentException($"options.KeyOffsets covers {ko.TotalTokens} tokens but k has {tk} (dimension 1).", nameof(options));
        if (ko.Count != qo.Count)
            throw new ArgumentException($"options.KeyOffsets has {ko.Count} sequences; options.QueryOffsets has {qo.Count}.", nameof(options));
        int n = qo.Count;
        var shape = new AttentionShape
        {
            Batch = 1, Heads = h, KvHeads = hkv, Dim = d, QueryTokens = tq, KeyTokens = tk, IsVarlen = true,
            SeqBatch = new int[n], QStart = new int[n], QLen = new int[n], KStart = new int[n], KLen = new int[n],
        };
        for (int i = 0; i < n; i++)
        {
            shape.QStart[i] = qo.Start(i);
            shape.QLen[i] = qo.Length(i);
            shape.KStart[i] = ko.Start(i);
            shape.KLen[i] = ko.Length(i);
        }
        return shape;
    }

    private static int[] Filled(int n, int value)
    {
        var a = new int[n];
        Array.Fill(a, value);
        return a;
    }

    /// <summary>Checks an output tensor against q's shape.</summary>
    public void RequireLike<T>(in ReadOnlyTensorSpan<T> t, string name, int tokens, int heads)
    {
        RequireDims(t, name, Batch, tokens, heads, Dim, "like the matching input");
    }

    /// <summary>Checks an LSE tensor: [B, H, Tq] (rank 3) or [H, Tq] for a packed batch (rank 2).</summary>
    public void RequireLse(in ReadOnlyTensorSpan<float> lse, string name)
    {
        ReadOnlySpan<nint> l = lse.Lengths;
        bool ok = lse.Rank == 3 ? l[0] == Batch && l[1] == Heads && l[2] == QueryTokens
            : lse.Rank == 2 && Batch == 1 && l[0] == Heads && l[1] == QueryTokens;
        if (!ok)
            throw new ArgumentException($"{name} must have shape [{Batch}, {Heads}, {QueryTokens}] ([B, H, Tq]); got [{string.Join(", ", l.ToArray())}].", name);
    }

    /// <summary>The block structure for this call: the given one (validated) or one built from the mask.</summary>
    public BlockMask ResolveBlockMask(AttentionOptions options, IMaskMod mask, int queryBlock, int keyBlock)
    {
        BlockMask? given = options.BlockMask;
        if (given is null)
        {
            return IsVarlen
                ? BlockMask.Create(mask, options.QueryOffsets!, options.KeyOffsets ?? options.QueryOffsets!, Heads, queryBlock, keyBlock)
                : BlockMask.Create(mask, QueryTokens, KeyTokens, Batch, Heads, queryBlock, keyBlock);
        }
        if (given.QueryBlockSize != queryBlock || given.KeyBlockSize != keyBlock)
            throw new ArgumentException($"options.BlockMask has blocks of {given.QueryBlockSize}x{given.KeyBlockSize}; this kernel needs {queryBlock}x{keyBlock}.", nameof(options));
        if (given.Heads != 1 && given.Heads != Heads)
            throw new ArgumentException($"options.BlockMask has {given.Heads} heads; the call has {Heads} (or use a head-independent mask).", nameof(options));
        if (given.PerSequence ? given.Sequences != Sequences : Sequences > 0 && given.Sequences != 1)
            throw new ArgumentException($"options.BlockMask describes {given.Sequences} sequences; the call has {Sequences}.", nameof(options));
        for (int s = 0; s < Sequences; s++)
        {
            int e = given.PerSequence ? s : 0;
            if (given.QueryLength(e) != QLen[s] || given.KeyLength(e) != KLen[s])
                throw new ArgumentException($"options.BlockMask was built for {given.QueryLength(e)} queries x {given.KeyLength(e)} keys; sequence {s} has {QLen[s]} x {KLen[s]}.", nameof(options));
        }
        if (options.Mask is not null && !ReferenceEquals(options.Mask, given.Mask) && !options.Mask.Equals(given.Mask))
            throw new ArgumentException("options.Mask differs from the mask options.BlockMask was built from; leave Mask out or pass the same one.", nameof(options));
        return given;
    }
}
