using System.Numerics.Tensors;

namespace Attend.Methods.Sparse.Dynamic;

/// <summary>
/// The plan of a selector that gives each head its own kind of sparsity (MInference, FlexPrefill): heads marked in
/// <see cref="BlockHeads"/> run their chosen (query block, key block) cells of <see cref="Blocks"/> on the block-sparse
/// exact kernel (<see cref="Attention.Forward{T}(ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, AttentionOptions, TensorSpan{T}, TensorSpan{float})"/>
/// with <c>Causal ∧ selection</c>); the others run their <see cref="Tokens"/> plan on the token-level path
/// (<see cref="VerticalSlashAttention"/>). Both are causal; each pair of a head is computed by one path only. The kind
/// is chosen per sequence and head (<see cref="SetBlockHead(int, int, bool)"/>), so a sequence of a batch gets the same
/// plan as alone.
/// </summary>
public sealed class HybridSparsePlan : IPairCoverage
{
    private readonly bool[] _blockHeads; // [sequence, head]
    private readonly int _heads;
    private readonly SeqOffsets? _offsets;
    private readonly int _queryLength;

    /// <summary>A plan with nothing chosen yet, for a regular batch or (with <paramref name="offsets"/>) a packed one.</summary>
    public HybridSparsePlan(int batch, int heads, int queryLength, int keyLength, SeqOffsets? offsets)
    {
        if (offsets is null)
        {
            Tokens = new VerticalSlashPlan(batch, heads, queryLength, keyLength);
            Blocks = new BlockSelection(batch, heads, queryLength, keyLength, BlockSize, BlockSize);
        }
        else
        {
            Tokens = new VerticalSlashPlan(offsets, offsets, heads);
            Blocks = new BlockSelection(offsets, offsets, heads, BlockSize, BlockSize);
        }
        _heads = heads;
        _offsets = offsets;
        _queryLength = queryLength;
        _blockHeads = new bool[(long)(offsets?.Count ?? batch) * heads];
    }

    /// <summary>Query and key block size of <see cref="Blocks"/> (the kernel's tile).</summary>
    public const int BlockSize = 64;

    /// <summary>The token-level part (columns and diagonals) of the heads not in <see cref="BlockHeads"/>.</summary>
    public VerticalSlashPlan Tokens { get; }

    /// <summary>The chosen cells of the heads in <see cref="BlockHeads"/>.</summary>
    public BlockSelection Blocks { get; }

    /// <summary>Per head: true when it runs on <see cref="Blocks"/> in every sequence.</summary>
    public IReadOnlyList<bool> BlockHeads
    {
        get
        {
            var all = new bool[_heads];
            for (int h = 0; h < _heads; h++)
            {
                all[h] = true;
                for (int s = 0; s < Sequences; s++) all[h] &= IsBlockHead(s, h);
            }
            return all;
        }
    }

    /// <summary>Sequences (batch entries, or varlen sequences) of the plan.</summary>
    public int Sequences => _blockHeads.Length / Math.Max(1, _heads);

    /// <summary>True when head <paramref name="head"/> of sequence <paramref name="sequence"/> runs on <see cref="Blocks"/>.</summary>
    public bool IsBlockHead(int sequence, int head) => _blockHeads[sequence * _heads + head];

    /// <summary>Marks head <paramref name="head"/> as a block-sparse head (or not) in every sequence.</summary>
    public void SetBlockHead(int head, bool isBlock)
    {
        for (int s = 0; s < Sequences; s++) _blockHeads[s * _heads + head] = isBlock;
    }

    /// <summary>Marks head <paramref name="head"/> of sequence <paramref name="sequence"/> as a block-sparse head (or not).</summary>
    public void SetBlockHead(int sequence, int head, bool isBlock) => _blockHeads[sequence * _heads + head] = isBlock;

    // The batch entry and query rows [first, end) of sequence s in the tensors.
    private (int Batch, int First, int End) Rows(int s) =>
        _offsets is SeqOffsets o ? (0, o.Start(s), o.Start(s) + o.Length(s)) : (s, 0, _queryLength);

    /// <summary>Runs the plan: output [B, Tq, H, D] and LSE [B, H, Tq] (or empty).</summary>
    public unsafe void Forward(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v, AttentionOptions options,
        TensorSpan<float> output, TensorSpan<float> lse)
    {
        ArgumentNullException.ThrowIfNull(options);
        bool anyBlock = false, anyToken = false;
        foreach (bool b in _blockHeads)
        {
            anyBlock |= b;
            anyToken |= !b;
        }
        AttentionShape sh = AttentionShape.Validate(q, k, v, options);
        var lseOwned = new float[(long)sh.Batch * sh.Heads * sh.QueryTokens];
        TensorSpan<float> lseAll = lse.IsEmpty ? AttentionLayout.Lse(lseOwned, sh.Batch, sh.Heads, sh.QueryTokens) : lse;
        if (anyToken) VerticalSlashAttention.Forward(q, k, v, Tokens, options, output, lseAll);
        if (!anyBlock) return;
        var blockOptions = options with { Mask = Masks.And(Masks.Causal, Blocks.ToMask()) };
        if (!anyToken)
        {
            Attention.Forward(q, k, v, blockOptions, output, lseAll);
            return;
        }
        var o2 = new float[(long)sh.Batch * sh.QueryTokens * sh.Heads * sh.Dim];
        var l2 = new float[(long)sh.Batch * sh.Heads * sh.QueryTokens];
        Attention.Forward<float>(q, k, v, blockOptions, AttentionLayout.Bthd<float>(o2, sh.Batch, sh.QueryTokens, sh.Heads, sh.Dim),
            AttentionLayout.Lse(l2, sh.Batch, sh.Heads, sh.QueryTokens));
        // Copy the block heads' rows over the (empty) rows the token path wrote for them.
        fixed (float* po = &output.GetPinnableReference())
        fixed (float* pl = &lseAll.GetPinnableReference())
        {
            TensorView<float> vo = Views.Of<float>(output, po);
            LseView vl = Views.Lse(lseAll, pl);
            for (int s = 0; s < Sequences; s++)
                for (int h = 0; h < sh.Heads; h++)
                {
                    if (!IsBlockHead(s, h)) continue;
                    (int b, int first, int end) = Rows(s);
                    for (int t = first; t < end; t++)
                    {
                        o2.AsSpan((int)((((long)b * sh.QueryTokens + t) * sh.Heads + h) * sh.Dim), sh.Dim).CopyTo(new Span<float>(vo.Row(b, t, h), sh.Dim));
                        *vl.At(b, h, t) = l2[((long)b * sh.Heads + h) * sh.QueryTokens + t];
                    }
                }
        }
    }

    /// <summary>The same computation in float64 (the oracle of the selector tests).</summary>
    public ReferenceForwardResult Reference(ReadOnlyTensorSpan<float> q, ReadOnlyTensorSpan<float> k, ReadOnlyTensorSpan<float> v, AttentionOptions options)
    {
        ReferenceForwardResult tokens = VerticalSlashAttention.Reference(q, k, v, Tokens, options);
        ReferenceForwardResult blocks = ReferenceAttention.Forward(q, k, v, options with { Mask = Masks.And(Masks.Causal, Blocks.ToMask()) });
        AttentionShape sh = AttentionShape.Validate(q, k, v, options);
        int d = sh.Dim;
        for (int s = 0; s < Sequences; s++)
            for (int h = 0; h < sh.Heads; h++)
            {
                if (!IsBlockHead(s, h)) continue;
                (int b, int first, int end) = Rows(s);
                for (int t = first; t < end; t++)
                {
                    long row = ((long)b * sh.QueryTokens + t) * sh.Heads + h;
                    Array.Copy(blocks.Output, row * d, tokens.Output, row * d, d);
                    long l = ((long)b * sh.Heads + h) * sh.QueryTokens + t;
                    tokens.Lse[l] = blocks.Lse[l];
                }
            }
        return tokens;
    }

    /// <inheritdoc/>
    public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
    {
        if (!IsBlockHead(batch, head))
        {
            Tokens.CoveredKeys(batch, head, query, covered);
            return;
        }
        int tq = Blocks.QueryLength(batch), tk = Blocks.KeyLength(batch);
        if (covered.Length != tk)
            throw new ArgumentException($"The span has {covered.Length} entries but sequence {batch} has {tk} keys.", nameof(covered));
        int p = query + tk - tq;
        for (int j = 0; j < tk; j++) covered[j] = j <= p && Blocks.IsSelected(batch, head, query / BlockSize, j / BlockSize);
    }

    /// <summary>Computed pairs over causally visible pairs.</summary>
    public double Density
    {
        get
        {
            long visible = Tokens.CausalPairs();
            if (visible == 0) return 1;
            long computed = Tokens.ComputedPairs();
            for (int s = 0; s < Blocks.Sequences; s++)
            {
                int tq = Blocks.QueryLength(s), tk = Blocks.KeyLength(s), shift = tk - tq;
                for (int h = 0; h < _heads; h++)
                {
                    if (!IsBlockHead(s, h)) continue;
                    for (int qb = 0; qb < Blocks.QueryBlocks(s); qb++)
                        for (int kb = 0; kb < Blocks.KeyBlocks(s); kb++)
                        {
                            if (!Blocks.IsSelected(s, h, qb, kb)) continue;
                            int k0 = kb * BlockSize, k1 = Math.Min(tk, k0 + BlockSize);
                            for (int i = qb * BlockSize; i < Math.Min(tq, (qb + 1) * BlockSize); i++)
                                computed += Math.Max(0, Math.Min(k1, i + shift + 1) - k0);
                        }
                }
            }
            return (double)computed / visible;
        }
    }
}
