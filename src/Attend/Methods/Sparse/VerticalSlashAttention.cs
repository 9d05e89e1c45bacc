using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Sparse;

/// <summary>
/// Exact softmax attention over a token-level <see cref="VerticalSlashPlan"/>: gathered key columns plus diagonal
/// bands, output and LSE, on the CPU (the kernel path MInference calls <c>vertical_slash_sparse_attention</c>). The
/// shared tile code computes it (<c>ColumnSparseForward</c>); <see cref="Reference{T}"/> is its float64 oracle.
/// </summary>
/// <remarks>
/// Layout [B, T, H, D] with any strides in the first three dimensions, grouped-query K/V, varlen through
/// <see cref="AttentionOptions.QueryOffsets"/>. The plan is causal by definition; <see cref="AttentionOptions.Mask"/>,
/// score mods, soft cap and a block mask are not supported here (an exception says so). Forward only. On another
/// backend (<see cref="AttentionOptions.Backend"/> or the <see cref="AttentionBackend"/> scope) the call goes to its
/// registered <see cref="ColumnSparseKernel"/> (CUDA: <c>column_sparse_forward.cu</c>).
/// </remarks>
public static class VerticalSlashAttention
{
    /// <summary>Forward attention over <paramref name="plan"/> into caller-owned buffers.</summary>
    /// <param name="q">Queries [B, Tq, H, D].</param>
    /// <param name="k">Keys [B, Tk, Hkv, D].</param>
    /// <param name="v">Values [B, Tk, Hkv, D].</param>
    /// <param name="plan">The columns and diagonals per sequence and head; its lengths and heads must match the call.</param>
    /// <param name="options">Scale, offsets, threads (null: defaults).</param>
    /// <param name="output">Output [B, Tq, H, D].</param>
    /// <param name="lse">Log-sum-exp [B, H, Tq] (natural log), or empty.</param>
    /// <exception cref="ArgumentException">Shapes that disagree, a plan for another shape, or an unsupported option.</exception>
    public static unsafe void Forward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v, VerticalSlashPlan plan,
        AttentionOptions? options, TensorSpan<T> output, TensorSpan<float> lse = default)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(plan);
        options ??= AttentionOptions.Default;
        AttentionShape shape = Validate(q, k, v, plan, options);
        shape.RequireLike<T>(output, nameof(output), shape.QueryTokens, shape.Heads);
        if (!lse.IsEmpty) shape.RequireLse(lse, nameof(lse));
        if (options.MaxThreads is int n && n < 1)
            throw new ArgumentOutOfRangeException(nameof(options), n, "options.MaxThreads must be ≥ 1.");
        int threads = Math.Min(options.MaxThreads ?? Environment.ProcessorCount, Environment.ProcessorCount);
        float scale = options.Scale ?? 1f / MathF.Sqrt(shape.Dim);
        if (OtherBackend(options, shape.Dim, ElementTypes.Of<T>()) is { } device)
        {
            fixed (T* pq = &q.GetPinnableReference())
            fixed (T* pk = &k.GetPinnableReference())
            fixed (T* pv = &v.GetPinnableReference())
            fixed (T* po = &output.GetPinnableReference())
            fixed (float* pl = &lse.GetPinnableReference())
                device.Forward(shape, Views.Of(q, pq), Views.Of(k, pk), Views.Of(v, pv), Views.Of<T>(output, po), Views.Lse(lse, pl), plan, scale);
            return;
        }
        fixed (T* pq = &q.GetPinnableReference())
        fixed (T* pk = &k.GetPinnableReference())
        fixed (T* pv = &v.GetPinnableReference())
        fixed (T* po = &output.GetPinnableReference())
        fixed (float* pl = &lse.GetPinnableReference())
        {
            TensorView<T> vq = Views.Of(q, pq), vk = Views.Of(k, pk), vv = Views.Of(v, pv), vo = Views.Of<T>(output, po);
            LseView vl = Views.Lse(lse, pl);
            if (Isa512.IsSupported)
                ColumnSparseForward<T, Isa512, System.Runtime.Intrinsics.Vector512<float>>.Run(shape, vq, vk, vv, vo, vl, plan, scale, threads);
            else if (Isa256.IsSupported)
                ColumnSparseForward<T, Isa256, System.Runtime.Intrinsics.Vector256<float>>.Run(shape, vq, vk, vv, vo, vl, plan, scale, threads);
            else
                ColumnSparseForward<T, Isa128, System.Runtime.Intrinsics.Vector128<float>>.Run(shape, vq, vk, vv, vo, vl, plan, scale, threads);
        }
    }

    /// <summary>
    /// The same definition in float64, naive: for each row, softmax over exactly the keys the plan covers. Output
    /// [B, Tq, H, D] and LSE [B, H, Tq], dense; rows that cover nothing have output 0 and LSE −∞.
    /// </summary>
    public static unsafe ReferenceForwardResult Reference<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        VerticalSlashPlan plan, AttentionOptions? options = null)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(plan);
        options ??= AttentionOptions.Default;
        AttentionShape sh = Validate(q, k, v, plan, options);
        int d = sh.Dim, g = sh.GroupSize;
        double scale = options.Scale ?? 1.0 / Math.Sqrt(d);
        var result = new ReferenceForwardResult(new double[(long)sh.Batch * sh.QueryTokens * sh.Heads * d], new double[(long)sh.Batch * sh.Heads * sh.QueryTokens]);
        fixed (T* pq = &q.GetPinnableReference())
        fixed (T* pk = &k.GetPinnableReference())
        fixed (T* pv = &v.GetPinnableReference())
        {
            TensorView<T> vq = Views.Of(q, pq), vk = Views.Of(k, pk), vv = Views.Of(v, pv);
            for (int s = 0; s < sh.Sequences; s++)
            {
                int b = sh.SeqBatch[s], tk = sh.KLen[s];
                var covered = new bool[tk];
                var scores = new double[tk];
                for (int h = 0; h < sh.Heads; h++)
                {
                    int hk = h / g;
                    for (int i = 0; i < sh.QLen[s]; i++)
                    {
                        int token = sh.QStart[s] + i;
                        long lseAt = ((long)b * sh.Heads + h) * sh.QueryTokens + token;
                        long outAt = (((long)b * sh.QueryTokens + token) * sh.Heads + h) * d;
                        plan.CoveredKeys(s, h, i, covered);
                        double max = double.NegativeInfinity;
                        for (int j = 0; j < tk; j++)
                        {
                            if (!covered[j]) continue;
                            double dot = 0;
                            for (int x = 0; x < d; x++)
                                dot += (double)ElementConvert.ToSingle(vq.Row(b, token, h)[x]) * ElementConvert.ToSingle(vk.Row(b, sh.KStart[s] + j, hk)[x]);
                            scores[j] = dot * scale;
                            max = Math.Max(max, scores[j]);
                        }
                        if (double.IsNegativeInfinity(max))
                        {
                            result.Lse[lseAt] = double.NegativeInfinity;
                            continue;
                        }
                        double sum = 0;
                        for (int j = 0; j < tk; j++)
                        {
                            if (!covered[j]) continue;
                            double e = Math.Exp(scores[j] - max);
                            sum += e;
                            for (int x = 0; x < d; x++) result.Output[outAt + x] += e * ElementConvert.ToSingle(vv.Row(b, sh.KStart[s] + j, hk)[x]);
                        }
                        for (int x = 0; x < d; x++) result.Output[outAt + x] /= sum;
                        result.Lse[lseAt] = max + Math.Log(sum);
                    }
                }
            }
        }
        return result;
    }

    // The registered kernel of the call's backend (options, else the AttentionBackend scope), or null for the CPU.
    private static ColumnSparseKernel? OtherBackend(AttentionOptions options, int headDim, ElementType type)
    {
        string? backend = AttentionBackend.Resolve(options);
        if (backend is null || string.Equals(backend, KernelRegistry.DefaultBackend, StringComparison.OrdinalIgnoreCase)) return null;
        ColumnSparseKernel kernel = ColumnSparseKernels.Find(backend)
            ?? throw new ArgumentException($"No token-level sparse kernel of backend '{backend}' is registered.", "options.Backend");
        if (!kernel.IsSupported(type, headDim, out string why))
            throw new NotSupportedException($"The token-level sparse kernel of backend '{backend}' cannot run this call: {why}");
        return kernel;
    }

    private static AttentionShape Validate<T>(in ReadOnlyTensorSpan<T> q, in ReadOnlyTensorSpan<T> k, in ReadOnlyTensorSpan<T> v,
        VerticalSlashPlan plan, AttentionOptions options)
    {
        if (options.Mask is not null || options.BlockMask is not null)
            throw new ArgumentException("A vertical-slash plan is causal by definition; options.Mask and options.BlockMask must be null.", nameof(options));
        if (options.ScoreMod is not null || options.Softcap is not null)
            throw new ArgumentException("Score mods and soft caps are not supported on the token-level sparse path.", nameof(options));
        AttentionShape sh = AttentionShape.Validate(q, k, v, options);
        if (plan.Heads != sh.Heads)
            throw new ArgumentException($"The plan has {plan.Heads} heads; q has {sh.Heads} (dimension 2).", nameof(plan));
        if (plan.Sequences != sh.Sequences)
            throw new ArgumentException($"The plan describes {plan.Sequences} sequences; the call has {sh.Sequences}.", nameof(plan));
        for (int s = 0; s < sh.Sequences; s++)
        {
            if (plan.QueryLength(s) != sh.QLen[s] || plan.KeyLength(s) != sh.KLen[s])
                throw new ArgumentException($"The plan was made for {plan.QueryLength(s)} queries x {plan.KeyLength(s)} keys in sequence {s}; the call has {sh.QLen[s]} x {sh.KLen[s]}.", nameof(plan));
        }
        return sh;
    }
}
