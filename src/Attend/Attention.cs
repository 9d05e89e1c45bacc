using System.Numerics.Tensors;

namespace Attend;

/// <summary>
/// Exact softmax attention, <c>softmax(scale·QKᵀ + mods) V</c>, over [B, T, H, D] tensors with any strides in the
/// first three dimensions (so [B, H, T, D] storage works through <see cref="AttentionLayout"/> without copies).
/// Keys and values may have fewer heads than queries (grouped-query, any divisor). Variable-length batches are packed
/// along T with <see cref="AttentionOptions.QueryOffsets"/>.
/// </summary>
/// <remarks>
/// The log-sum-exp is in natural-log units, shaped [B, H, Tq]; a fully masked row has output 0 and LSE −∞.
/// The kernel variant is chosen by <see cref="KernelRegistry"/>.
/// </remarks>
public static class Attention
{
    /// <summary>
    /// Forward attention into caller-owned buffers; allocates no tensors. Returns the variant that ran.
    /// </summary>
    /// <param name="q">Queries [B, Tq, H, D].</param>
    /// <param name="k">Keys [B, Tk, Hkv, D].</param>
    /// <param name="v">Values [B, Tk, Hkv, D].</param>
    /// <param name="options">Scale, mask, score mod, soft cap, offsets.</param>
    /// <param name="output">Output [B, Tq, H, D].</param>
    /// <param name="lse">Log-sum-exp [B, H, Tq] (natural log), or empty when not wanted.</param>
    /// <exception cref="ArgumentException">Shapes that do not agree; the message names the argument and dimension.</exception>
    public static unsafe AttentionKernel Forward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        AttentionOptions options, TensorSpan<T> output, TensorSpan<float> lse = default)
        where T : unmanaged
    {
        AttentionShape shape = AttentionShape.Validate(q, k, v, options);
        shape.RequireLike<T>(output, nameof(output), shape.QueryTokens, shape.Heads);
        if (!lse.IsEmpty) shape.RequireLse(lse, nameof(lse));
        var problem = Problem<T>(shape, AttentionPass.Forward);
        AttentionKernel kernel = KernelRegistry.Select(problem, options.Variant, AttentionBackend.Resolve(options));
        IMaskMod mask = options.Mask ?? options.BlockMask?.Mask ?? new FullMask();
        BlockMask blocks = shape.ResolveBlockMask(options, mask, kernel.QueryBlockSize, kernel.KeyBlockSize);
        fixed (T* pq = &q.GetPinnableReference())
        fixed (T* pk = &k.GetPinnableReference())
        fixed (T* pv = &v.GetPinnableReference())
        fixed (T* po = &output.GetPinnableReference())
        fixed (float* pl = &lse.GetPinnableReference())
        {
            var call = new ForwardCall<T>
            {
                Shape = shape, Blocks = blocks,
                Q = Views.Of(q, pq), K = Views.Of(k, pk), V = Views.Of(v, pv), O = Views.Of<T>(output, po),
                Lse = Views.Lse(lse, pl),
                Scale = options.Scale ?? 1f / MathF.Sqrt(shape.Dim),
                Threads = Threads(options),
            };
            var dispatch = new ForwardDispatch<T>(kernel, call, options.ScoreMod ?? new IdentityScoreMod(), options.Softcap);
            mask.Accept<ForwardDispatch<T>, bool>(ref dispatch);
        }
        return kernel;
    }

    /// <summary>Forward attention into new tensors: output [B, Tq, H, D] and, when <see cref="AttentionOptions.ReturnLse"/>, LSE [B, H, Tq].</summary>
    public static AttentionResult<T> Forward<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, AttentionOptions? options = null)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        options ??= AttentionOptions.Default;
        AttentionShape shape = AttentionShape.Validate<T>(q, k, v, options);
        Tensor<T> output = Tensor.CreateFromShape<T>(q.Lengths);
        Tensor<float>? lse = options.ReturnLse ? Tensor.CreateFromShape<float>([shape.Batch, shape.Heads, shape.QueryTokens]) : null;
        AttentionKernel kernel = Forward<T>(q, k, v, options, output, lse is null ? default : lse.AsTensorSpan());
        return new AttentionResult<T>(output, lse, kernel.Name);
    }

    /// <summary>
    /// Backward attention: gradients of <c>Σ dO ⊙ O</c> with respect to q, k and v, from the forward output and its
    /// saved LSE (FlashAttention-2 style; scores are recomputed, never stored). Gradients of grouped K/V heads sum
    /// over their query heads. Returns the variant that ran.
    /// </summary>
    /// <param name="q">Queries [B, Tq, H, D].</param>
    /// <param name="k">Keys [B, Tk, Hkv, D].</param>
    /// <param name="v">Values [B, Tk, Hkv, D].</param>
    /// <param name="output">The forward output [B, Tq, H, D].</param>
    /// <param name="outputGradient">dO [B, Tq, H, D].</param>
    /// <param name="lse">The forward LSE [B, H, Tq].</param>
    /// <param name="options">The forward's options (and <see cref="AttentionOptions.Deterministic"/>).</param>
    /// <param name="dq">dQ [B, Tq, H, D], overwritten.</param>
    /// <param name="dk">dK [B, Tk, Hkv, D], overwritten.</param>
    /// <param name="dv">dV [B, Tk, Hkv, D], overwritten.</param>
    public static unsafe AttentionKernel Backward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        ReadOnlyTensorSpan<T> output, ReadOnlyTensorSpan<T> outputGradient, ReadOnlyTensorSpan<float> lse,
        AttentionOptions options, TensorSpan<T> dq, TensorSpan<T> dk, TensorSpan<T> dv)
        where T : unmanaged
    {
        AttentionShape shape = AttentionShape.Validate(q, k, v, options);
        shape.RequireLike(output, nameof(output), shape.QueryTokens, shape.Heads);
        shape.RequireLike(outputGradient, nameof(outputGradient), shape.QueryTokens, shape.Heads);
        // An empty LSE is legitimate only when there are no query rows at all (then every gradient is zero).
        if (lse.IsEmpty && (long)shape.Batch * shape.Heads * shape.QueryTokens > 0)
            throw new ArgumentException("The backward pass needs the forward's LSE [B, H, Tq].", nameof(lse));
        if (!lse.IsEmpty) shape.RequireLse(lse, nameof(lse));
        shape.RequireLike<T>(dq, nameof(dq), shape.QueryTokens, shape.Heads);
        shape.RequireLike<T>(dk, nameof(dk), shape.KeyTokens, shape.KvHeads);
        shape.RequireLike<T>(dv, nameof(dv), shape.KeyTokens, shape.KvHeads);
        var problem = Problem<T>(shape, AttentionPass.Backward);
        AttentionKernel kernel = KernelRegistry.Select(problem, options.Variant, AttentionBackend.Resolve(options));
        IMaskMod mask = options.Mask ?? options.BlockMask?.Mask ?? new FullMask();
        BlockMask blocks = shape.ResolveBlockMask(options, mask, kernel.QueryBlockSize, kernel.KeyBlockSize);
        fixed (T* pq = &q.GetPinnableReference())
        fixed (T* pk = &k.GetPinnableReference())
        fixed (T* pv = &v.GetPinnableReference())
        fixed (T* po = &output.GetPinnableReference())
        fixed (T* pdo = &outputGradient.GetPinnableReference())
        fixed (float* pl = &lse.GetPinnableReference())
        fixed (T* pdq = &dq.GetPinnableReference())
        fixed (T* pdk = &dk.GetPinnableReference())
        fixed (T* pdv = &dv.GetPinnableReference())
        {
            var call = new BackwardCall<T>
            {
                Shape = shape, Blocks = blocks,
                Q = Views.Of(q, pq), K = Views.Of(k, pk), V = Views.Of(v, pv), O = Views.Of(output, po), DO = Views.Of(outputGradient, pdo),
                Lse = Views.Lse(lse, pl),
                DQ = Views.Of<T>(dq, pdq), DK = Views.Of<T>(dk, pdk), DV = Views.Of<T>(dv, pdv),
                Scale = options.Scale ?? 1f / MathF.Sqrt(shape.Dim),
                Threads = Threads(options),
                Deterministic = options.Deterministic,
            };
            var dispatch = new BackwardDispatch<T>(kernel, call, options.ScoreMod ?? new IdentityScoreMod(), options.Softcap);
            mask.Accept<BackwardDispatch<T>, bool>(ref dispatch);
        }
        return kernel;
    }

    /// <summary>Backward attention into new tensors shaped like q, k and v.</summary>
    public static AttentionGradients<T> Backward<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<T> outputGradient,
        Tensor<float> lse, AttentionOptions? options = null)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(outputGradient);
        ArgumentNullException.ThrowIfNull(lse);
        options ??= AttentionOptions.Default;
        Tensor<T> dq = Tensor.CreateFromShape<T>(q.Lengths), dk = Tensor.CreateFromShape<T>(k.Lengths), dv = Tensor.CreateFromShape<T>(v.Lengths);
        AttentionKernel kernel = Backward<T>(q, k, v, output, outputGradient, lse, options, dq, dk, dv);
        return new AttentionGradients<T>(dq, dk, dv, kernel.Name);
    }

    private static int Threads(AttentionOptions options)
    {
        if (options.MaxThreads is int n && n < 1)
            throw new ArgumentOutOfRangeException(nameof(options), n, "options.MaxThreads must be ≥ 1.");
        return Math.Min(options.MaxThreads ?? Environment.ProcessorCount, Environment.ProcessorCount);
    }

    internal static KernelProblem Problem<T>(AttentionShape shape, AttentionPass pass) =>
        new(pass, ElementTypes.Of<T>(), shape.Sequences, shape.Heads, shape.KvHeads, shape.Dim, shape.MaxQueryLength, shape.MaxKeyLength);

    // Boxed mask → concrete TMask → boxed score mod → concrete TScore (with the soft cap composed in front).
    private readonly struct ForwardDispatch<T>(AttentionKernel kernel, ForwardCall<T> call, IScoreMod score, float? softcap) : IMaskVisitor<bool>
        where T : unmanaged
    {
        public bool Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask>
        {
            var stage = new ForwardScoreStage<T, TMask>(kernel, call, mask, softcap);
            return score.Accept<ForwardScoreStage<T, TMask>, bool>(ref stage);
        }
    }

    private readonly struct ForwardScoreStage<T, TMask>(AttentionKernel kernel, ForwardCall<T> call, TMask mask, float? softcap) : IScoreModVisitor<bool>
        where T : unmanaged
        where TMask : struct, IMaskMod<TMask>
    {
        public bool Visit<TScore>(TScore score) where TScore : struct, IScoreMod<TScore>
        {
            if (softcap is float cap)
                kernel.Forward(call, mask, new ComposedScoreMod<SoftcapScoreMod, TScore>(new SoftcapScoreMod(cap), score));
            else
                kernel.Forward(call, mask, score);
            return true;
        }
    }

    private readonly struct BackwardDispatch<T>(AttentionKernel kernel, BackwardCall<T> call, IScoreMod score, float? softcap) : IMaskVisitor<bool>
        where T : unmanaged
    {
        public bool Visit<TMask>(TMask mask) where TMask : struct, IMaskMod<TMask>
        {
            var stage = new BackwardScoreStage<T, TMask>(kernel, call, mask, softcap);
            return score.Accept<BackwardScoreStage<T, TMask>, bool>(ref stage);
        }
    }

    private readonly struct BackwardScoreStage<T, TMask>(AttentionKernel kernel, BackwardCall<T> call, TMask mask, float? softcap) : IScoreModVisitor<bool>
        where T : unmanaged
        where TMask : struct, IMaskMod<TMask>
    {
        public bool Visit<TScore>(TScore score) where TScore : struct, IScoreMod<TScore>
        {
            if (softcap is float cap)
                kernel.Backward(call, mask, new ComposedScoreMod<SoftcapScoreMod, TScore>(new SoftcapScoreMod(cap), score));
            else
                kernel.Backward(call, mask, score);
            return true;
        }
    }
}

/// <summary>Result of the allocating forward: output, LSE (when asked for) and the variant that ran.</summary>
public sealed record AttentionResult<T>(Tensor<T> Output, Tensor<float>? Lse, string Variant);

/// <summary>Result of the allocating backward: gradients and the variant that ran.</summary>
public sealed record AttentionGradients<T>(Tensor<T> DQ, Tensor<T> DK, Tensor<T> DV, string Variant);
