namespace Attend.Methods.Linear;

/// <summary>
/// The shape of one call of the extra linear-family methods (Aaren, Agent Attention, LLA, kernelized RPE, Titans,
/// GAM): queries <c>[B, T, H, Dk]</c>, keys <c>[B, T, Hkv, Dk]</c>, values <c>[B, T, Hkv, Dv]</c>, and optionally
/// varlen offsets (then B = 1 and T is the packed length). A "sequence" is one batch row, or one varlen segment.
/// </summary>
/// <param name="Batch">B.</param>
/// <param name="Tokens">T (tokens per batch row, or the packed length).</param>
/// <param name="Heads">Query heads H.</param>
/// <param name="KvHeads">Key/value heads Hkv (a divisor of H).</param>
/// <param name="KeyDim">Query/key head dim Dk.</param>
/// <param name="ValueDim">Value head dim Dv.</param>
/// <param name="Offsets">Varlen offsets (N+1 values ending at T), or null for a padded batch.</param>
public sealed record LinearExtraShape(int Batch, int Tokens, int Heads, int KvHeads, int KeyDim, int ValueDim, SeqOffsets? Offsets = null)
{
    /// <summary>Number of sequences N: B, or the number of varlen segments.</summary>
    public int Sequences => Offsets?.Count ?? Batch;

    /// <summary>Query heads per key/value head.</summary>
    public int Group => Heads / KvHeads;

    /// <summary>Row (index into the flattened [B·T] token axis) of the first token of sequence <paramref name="n"/>.</summary>
    public int Start(int n) => Offsets is null ? n * Tokens : Offsets.Start(n);

    /// <summary>Number of tokens of sequence <paramref name="n"/>.</summary>
    public int Length(int n) => Offsets is null ? Tokens : Offsets.Length(n);

    /// <summary>The longest sequence.</summary>
    public int MaxLength => Offsets?.MaxLength ?? Tokens;

    /// <summary>Floats in a query tensor.</summary>
    public long QueryCount => (long)Batch * Tokens * Heads * KeyDim;

    /// <summary>Floats in a key tensor.</summary>
    public long KeyCount => (long)Batch * Tokens * KvHeads * KeyDim;

    /// <summary>Floats in a value tensor.</summary>
    public long ValueCount => (long)Batch * Tokens * KvHeads * ValueDim;

    /// <summary>Floats in an output tensor <c>[B, T, H, Dv]</c>.</summary>
    public long OutputCount => (long)Batch * Tokens * Heads * ValueDim;

    /// <summary>Offset of query row (token row, head).</summary>
    public long Q(int row, int head) => ((long)row * Heads + head) * KeyDim;

    /// <summary>Offset of key row (token row, kv head).</summary>
    public long K(int row, int kvHead) => ((long)row * KvHeads + kvHead) * KeyDim;

    /// <summary>Offset of value row (token row, kv head).</summary>
    public long V(int row, int kvHead) => ((long)row * KvHeads + kvHead) * ValueDim;

    /// <summary>Offset of output row (token row, head).</summary>
    public long O(int row, int head) => ((long)row * Heads + head) * ValueDim;

    /// <summary>Checks the dimensions and the span lengths; messages name the argument and the dimension.</summary>
    /// <exception cref="ArgumentException">A non-positive dimension, H not a multiple of Hkv, offsets that do not cover T, or a span of the wrong length.</exception>
    public void Validate(int qLength, int kLength, int vLength, int outputLength)
    {
        if (Batch < 1) throw new ArgumentOutOfRangeException(nameof(Batch), Batch, "Batch B must be at least 1.");
        if (Tokens < 0) throw new ArgumentOutOfRangeException(nameof(Tokens), Tokens, "Tokens T must not be negative.");
        if (Heads < 1) throw new ArgumentOutOfRangeException(nameof(Heads), Heads, "Heads H must be at least 1.");
        if (KvHeads < 1 || Heads % KvHeads != 0)
            throw new ArgumentException($"Key/value heads Hkv = {KvHeads} must divide the query heads H = {Heads}.", "k");
        if (KeyDim < 1) throw new ArgumentOutOfRangeException(nameof(KeyDim), KeyDim, "Key head dim Dk must be at least 1.");
        if (ValueDim < 1) throw new ArgumentOutOfRangeException(nameof(ValueDim), ValueDim, "Value head dim Dv must be at least 1.");
        if (Offsets is not null)
        {
            if (Batch != 1) throw new ArgumentException($"Varlen offsets need B = 1 (packed tokens); got B = {Batch}.", "offsets");
            if (Offsets.TotalTokens != Tokens)
                throw new ArgumentException($"Varlen offsets end at {Offsets.TotalTokens} but T = {Tokens}.", "offsets");
        }
        if (qLength != QueryCount) throw new ArgumentException($"q holds {qLength} floats; [B, T, H, Dk] = [{Batch}, {Tokens}, {Heads}, {KeyDim}] needs {QueryCount}.", "q");
        if (kLength != KeyCount) throw new ArgumentException($"k holds {kLength} floats; [B, T, Hkv, Dk] = [{Batch}, {Tokens}, {KvHeads}, {KeyDim}] needs {KeyCount}.", "k");
        if (vLength != ValueCount) throw new ArgumentException($"v holds {vLength} floats; [B, T, Hkv, Dv] = [{Batch}, {Tokens}, {KvHeads}, {ValueDim}] needs {ValueCount}.", "v");
        if (outputLength != OutputCount) throw new ArgumentException($"output holds {outputLength} floats; [B, T, H, Dv] needs {OutputCount}.", "output");
    }

    /// <summary>The shape of the method inputs q, k, v (checking that the three agree).</summary>
    /// <exception cref="ArgumentException">Batch, token count or head dims disagree; the message names the tensor and dimension.</exception>
    public static LinearExtraShape Of(MethodInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        if (k.Dim(0) != q.Dim(0) || v.Dim(0) != q.Dim(0))
            throw new ArgumentException($"q, k and v must have the same batch (dim 0); got q {q}, k {k}, v {v}.", "k");
        if (k.Dim(1) != q.Dim(1) || v.Dim(1) != q.Dim(1))
            throw new ArgumentException($"q, k and v must have the same token count (dim 1); got q {q}, k {k}, v {v}.", "k");
        if (k.Dim(3) != q.Dim(3))
            throw new ArgumentException($"q and k must have the same head dim (dim 3); got q {q}, k {k}.", "k");
        if (v.Dim(2) != k.Dim(2))
            throw new ArgumentException($"k and v must have the same head count (dim 2); got k {k}, v {v}.", "v");
        var shape = new LinearExtraShape(q.Dim(0), q.Dim(1), q.Dim(2), k.Dim(2), q.Dim(3), v.Dim(3), inputs.Offsets);
        shape.Validate(q.Data.Length, k.Data.Length, v.Data.Length, (int)Math.Min(int.MaxValue, shape.OutputCount));
        return shape;
    }
}
