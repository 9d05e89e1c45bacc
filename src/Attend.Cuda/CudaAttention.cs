namespace Attend.Cuda;

/// <summary>
/// Exact attention on device-resident tensors (<see cref="CudaTensor"/>): the same options as <see cref="Attention"/>
/// (scale, masks of any kind, block masks, soft cap, ALiBi, variable-length offsets, grouped-query heads), bf16 or fp16
/// in, float32 accumulation, output in the input type and the natural-log LSE as float32.
/// </summary>
/// <remarks>
/// <see cref="Plan"/> does the host work once (block structure, mask bits, uploads, kernel load); <see cref="CudaAttentionPlan.Run"/>
/// launches. The backward pass runs through <see cref="Attention.Backward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{float}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T})"/>
/// with <c>Backend = "cuda"</c> (host tensors; a correct but slow CUDA-core version, docs/CUDA-KERNELS.md); decode
/// against a paged cache is <see cref="CudaDecode"/>.
/// </remarks>
public static class CudaAttention
{
    /// <summary>Prepares a forward call for tensors shaped like <paramref name="q"/>, <paramref name="k"/>, <paramref name="v"/>.</summary>
    /// <exception cref="ArgumentException">Shapes that do not agree; the message names the argument and the dimension.</exception>
    /// <exception cref="NotSupportedException">A head dim or score mod without a CUDA kernel; the message says why.</exception>
    public static CudaAttentionPlan Plan(CudaTensor q, CudaTensor k, CudaTensor v, AttentionOptions? options = null, CudaContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        options ??= AttentionOptions.Default;
        context ??= CudaContext.Default;
        CudaGeometry geometry = Validate(q, k, v, options);
        if (!CudaFlashForward.IsSupportedHeadDim(q.Dim)) throw new NotSupportedException(CudaFlashForward.SupportReason(q.Dim));
        IMaskMod mask = options.Mask ?? options.BlockMask?.Mask ?? new FullMask();
        BlockMask blocks = ResolveBlocks(options, mask, geometry);
        var builder = new PlanBuilder(blocks);
        FlashBlockPlan flat = mask.Accept<PlanBuilder, FlashBlockPlan>(ref builder);
        CudaScoreForm score = CudaScoreForm.Of(options.Softcap, options.ScoreMod);
        float scale = options.Scale ?? 1f / MathF.Sqrt(q.Dim);
        return new CudaAttentionPlan(context, geometry, q.ElementType, flat, score, scale);
    }

    /// <summary>Plans and runs one forward (synchronous on <paramref name="stream"/>); for repeated calls keep a <see cref="Plan"/>.</summary>
    public static void Forward(CudaTensor q, CudaTensor k, CudaTensor v, AttentionOptions? options, CudaTensor output, DeviceBuffer? lse = null, CudaStream? stream = null)
    {
        using CudaAttentionPlan plan = Plan(q, k, v, options);
        plan.Run(q, k, v, output, lse, stream);
        if (stream is null) CudaContext.Default.Synchronize();
        else stream.Synchronize();
    }

    private readonly struct PlanBuilder(BlockMask blocks) : IMaskVisitor<FlashBlockPlan>
    {
        public FlashBlockPlan Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask> => FlashBlockPlan.Build(blocks, mask);
    }

    private static BlockMask ResolveBlocks(AttentionOptions options, IMaskMod mask, CudaGeometry g)
    {
        const int bq = FlashBlockPlan.QueryBlock, bk = FlashBlockPlan.KeyBlock;
        if (options.BlockMask is { } given)
        {
            if (given.QueryBlockSize != bq || given.KeyBlockSize != bk)
                throw new ArgumentException($"options.BlockMask has blocks of {given.QueryBlockSize}x{given.KeyBlockSize}; the CUDA kernel needs {bq}x{bk}.", nameof(options));
            if (given.Heads != 1 && given.Heads != g.Heads)
                throw new ArgumentException($"options.BlockMask has {given.Heads} heads; the call has {g.Heads}.", nameof(options));
            return given;
        }
        return options.QueryOffsets is { } qo
            ? BlockMask.Create(mask, qo, options.KeyOffsets ?? qo, g.Heads, bq, bk)
            : BlockMask.Create(mask, g.TokensQ, g.TokensK, g.Batch, g.Heads, bq, bk);
    }

    private static CudaGeometry Validate(CudaTensor q, CudaTensor k, CudaTensor v, AttentionOptions options)
    {
        if (k.ElementType != q.ElementType || v.ElementType != q.ElementType)
            throw new ArgumentException($"q, k and v must have one element type; got {q.ElementType.ShortName()}, {k.ElementType.ShortName()}, {v.ElementType.ShortName()}.", nameof(k));
        if (q.Heads < 1) throw new ArgumentException($"q must have at least one head (dimension 2); got {q.Heads}.", nameof(q));
        if (k.Batch != q.Batch) throw new ArgumentException($"k has batch {k.Batch} (dimension 0); q has {q.Batch}.", nameof(k));
        if (v.Batch != q.Batch) throw new ArgumentException($"v has batch {v.Batch} (dimension 0); q has {q.Batch}.", nameof(v));
        if (k.Dim != q.Dim) throw new ArgumentException($"k has head dim {k.Dim} (last dimension); q has {q.Dim}.", nameof(k));
        if (v.Dim != q.Dim) throw new ArgumentException($"v has head dim {v.Dim} (last dimension); q has {q.Dim}.", nameof(v));
        if (k.Heads < 1 || q.Heads % k.Heads != 0)
            throw new ArgumentException($"k has {k.Heads} heads (dimension 2), which must divide q's {q.Heads} heads (grouped-query attention).", nameof(k));
        if (v.Heads != k.Heads) throw new ArgumentException($"v has {v.Heads} heads (dimension 2); k has {k.Heads}.", nameof(v));
        if (v.Tokens != k.Tokens) throw new ArgumentException($"v has {v.Tokens} tokens (dimension 1); k has {k.Tokens}.", nameof(v));
        if (options.Scale is float s && !float.IsFinite(s)) throw new ArgumentException($"options.Scale must be finite; got {s}.", nameof(options));
        if (options.Softcap is float c && (!float.IsFinite(c) || c <= 0)) throw new ArgumentException($"options.Softcap must be finite and > 0; got {c}.", nameof(options));
        SeqOffsets? qo = options.QueryOffsets;
        if (qo is null)
        {
            if (options.KeyOffsets is not null) throw new ArgumentException("options.KeyOffsets is set but options.QueryOffsets is not.", nameof(options));
            var table = new int[q.Batch * 5];
            for (int b = 0; b < q.Batch; b++)
            {
                table[5 * b] = b;
                table[5 * b + 2] = q.Tokens;
                table[5 * b + 4] = k.Tokens;
            }
            return new CudaGeometry(q.Batch, q.Tokens, k.Tokens, q.Heads, k.Heads, q.Dim, table);
        }
        SeqOffsets ko = options.KeyOffsets ?? qo;
        if (q.Batch != 1) throw new ArgumentException($"With sequence offsets, q, k and v hold one packed batch (dimension 0 must be 1); got {q.Batch}.", nameof(q));
        if (qo.TotalTokens != q.Tokens) throw new ArgumentException($"options.QueryOffsets covers {qo.TotalTokens} tokens but q has {q.Tokens} (dimension 1).", nameof(options));
        if (ko.TotalTokens != k.Tokens) throw new ArgumentException($"options.KeyOffsets covers {ko.TotalTokens} tokens but k has {k.Tokens} (dimension 1).", nameof(options));
        if (ko.Count != qo.Count) throw new ArgumentException($"options.KeyOffsets has {ko.Count} sequences; options.QueryOffsets has {qo.Count}.", nameof(options));
        var seqs = new int[qo.Count * 5];
        for (int i = 0; i < qo.Count; i++)
        {
            seqs[5 * i + 1] = qo.Start(i);
            seqs[5 * i + 2] = qo.Length(i);
            seqs[5 * i + 3] = ko.Start(i);
            seqs[5 * i + 4] = ko.Length(i);
        }
        return new CudaGeometry(1, q.Tokens, k.Tokens, q.Heads, k.Heads, q.Dim, seqs);
    }
}
