using System.Diagnostics;

namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// What a dynamic selector decided, frozen: a mask (the base mask, causal or none, intersected with the selector's
/// choice), its <see cref="BlockMask"/> for the CPU flash kernel's 64 × 64 tiles, and the figures the bench reports
/// (density, selector time). Every routing/retrieval method returns one; <see cref="Forward"/> runs the exact
/// kernel on it, and <see cref="Options"/> gives the same plan to <see cref="Attention.Backward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{float}, AttentionOptions, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T}, System.Numerics.Tensors.TensorSpan{T})"/>
/// and to <see cref="ReferenceAttention"/>, so the three compute the same sparse attention.
/// </summary>
/// <remarks>Plans are immutable and may be reused across calls (layers) with the same shapes.</remarks>
public sealed class SparsePlan
{
    /// <summary>Tile sizes of the CPU flash kernel the prebuilt <see cref="Blocks"/> matches.</summary>
    public const int KernelBlockSize = 64;

    private readonly long? _computedPairs;
    private double? _density;

    internal SparsePlan(SelectorInput input, IMaskMod mask, bool causal, double selectorMilliseconds, long? computedPairs = null)
    {
        Input = input;
        Mask = mask;
        Causal = causal;
        Blocks = input.Offsets is SeqOffsets o
            ? BlockMask.Create(mask, o, o, input.Heads, KernelBlockSize, KernelBlockSize)
            : BlockMask.Create(mask, input.TotalQueryLength, input.TotalKeyLength, input.Batch, input.Heads, KernelBlockSize, KernelBlockSize);
        SelectorMilliseconds = selectorMilliseconds;
        _computedPairs = computedPairs;
    }

    /// <summary>The inputs the plan was built for.</summary>
    public SelectorInput Input { get; }

    /// <summary>The sparse mask: what each (sequence, head, query, key) computes.</summary>
    public IMaskMod Mask { get; }

    /// <summary>The block structure of <see cref="Mask"/> at the CPU kernel's tile sizes.</summary>
    public BlockMask Blocks { get; }

    /// <summary>Whether the plan lies inside the causal mask (else inside the full mask).</summary>
    public bool Causal { get; }

    /// <summary>Wall time of the selection and of building the plan, in milliseconds.</summary>
    public double SelectorMilliseconds { get; internal set; }

    /// <summary>Computed (query, key) pairs over all sequences and heads.</summary>
    public long ComputedPairs =>
        // A block mask stores one head (one sequence) when the mask does not depend on it: scale to all of them.
        _computedPairs ?? Blocks.VisiblePairs() * (Input.Heads / Blocks.Heads) * (Blocks.PerSequence ? 1 : Input.Sequences);

    /// <summary>Visible pairs of the base mask (causal or full) over all sequences and heads.</summary>
    public long BasePairs
    {
        get
        {
            long total = 0;
            for (int s = 0; s < Input.Sequences; s++)
                total += Causal ? CausalPairs(Input.QueryLength(s), Input.KeyLength(s)) : (long)Input.QueryLength(s) * Input.KeyLength(s);
            return total * Input.Heads;
        }
    }

    /// <summary>Computed pairs over the base mask's visible pairs (1 when nothing is visible).</summary>
    public double Density
    {
        get
        {
            if (_density is double d) return d;
            long basePairs = BasePairs;
            _density = basePairs == 0 ? 1.0 : (double)ComputedPairs / basePairs;
            return _density.Value;
        }
    }

    /// <summary>Attention options that run this plan (mask, prebuilt blocks, the offsets of a packed batch).</summary>
    public AttentionOptions Options(float? scale = null) => new()
    {
        Mask = Mask, BlockMask = Blocks, Scale = scale,
        QueryOffsets = Input.Offsets, KeyOffsets = Input.Offsets,
    };

    /// <summary>Method-specific state the plan carries for later calls (Recycled Attention's pattern, …), or null.</summary>
    public object? Tag { get; internal init; }

    /// <summary>Which pairs the plan computes exactly, for recall.</summary>
    public IPairCoverage Coverage => new PlanCoverage(this);

    /// <summary>
    /// Runs the exact kernel on the plan: <paramref name="output"/> <c>[B, Tq, H, Dv]</c> and, when not empty,
    /// <paramref name="lse"/> <c>[B, H, Tq]</c>. The q and k must be those the plan was built from (or of the same shape).
    /// </summary>
    public AttentionKernel Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int valueDim,
        Span<float> output, Span<float> lse, float? scale = null)
    {
        SelectorInput x = Input;
        int b = x.Batch, tq = x.TotalQueryLength, tk = x.TotalKeyLength;
        return Attention.Forward<float>(
            AttentionLayout.Bthd(MemoryMarshalHelper.AsWritable(q), b, tq, x.Heads, x.Dim),
            AttentionLayout.Bthd(MemoryMarshalHelper.AsWritable(k), b, tk, x.KvHeads, x.Dim),
            AttentionLayout.Bthd(MemoryMarshalHelper.AsWritable(v), b, tk, x.KvHeads, valueDim),
            Options(scale),
            AttentionLayout.Bthd(output, b, tq, x.Heads, valueDim),
            lse.IsEmpty ? default : AttentionLayout.Lse(lse, b, x.Heads, tq));
    }

    /// <summary>Visible pairs of a causal (bottom-right aligned) tq × tk sequence.</summary>
    public static long CausalPairs(int tq, int tk)
    {
        long total = 0;
        int shift = tk - tq;
        for (int i = 0; i < tq; i++) total += Math.Clamp(i + shift + 1, 0, tk);
        return total;
    }

    /// <summary>Times <paramref name="select"/> and returns its plan with the elapsed time recorded.</summary>
    internal static SparsePlan Timed(Func<SparsePlan> select)
    {
        long start = Stopwatch.GetTimestamp();
        SparsePlan plan = select();
        plan.SelectorMilliseconds = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        return plan;
    }

    // Coverage in the dense or packed coordinates the method was called with.
    private sealed class PlanCoverage(SparsePlan plan) : IPairCoverage
    {
        public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
        {
            SelectorInput x = plan.Input;
            if (covered.Length != x.TotalKeyLength)
                throw new ArgumentException($"The span has {covered.Length} entries but there are {x.TotalKeyLength} keys.", nameof(covered));
            covered.Clear();
            int sequence = batch, row = query, keyStart = 0;
            if (x.Offsets is SeqOffsets o)
            {
                sequence = 0;
                while (sequence + 1 < o.Count && o.Start(sequence + 1) <= query) sequence++;
                row = query - o.Start(sequence);
                keyStart = o.Start(sequence);
            }
            int position = x.QueryPosition(sequence, row);
            for (int k = 0; k < x.KeyLength(sequence); k++)
                covered[keyStart + k] = plan.Mask.IsVisible(sequence, head, position, k);
        }
    }
}

// Attention.Forward takes ReadOnlyTensorSpan views; the layout helpers take Span. The views are read-only in use.
internal static class MemoryMarshalHelper
{
    public static Span<float> AsWritable(ReadOnlySpan<float> span) =>
        System.Runtime.InteropServices.MemoryMarshal.CreateSpan(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(span), span.Length);
}
