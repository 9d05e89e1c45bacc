namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// The queries and keys a dynamic sparse selector reads: float32, dense <c>[B, Tq, H, D]</c> and <c>[B, Tk, Hkv, D]</c>
/// (grouped-query when Hkv &lt; H), or a packed variable-length batch (B = 1 and <see cref="Offsets"/>). Selectors
/// see one sequence at a time through <see cref="QueryRow"/> and <see cref="KeyRow"/>, so none of them handles the
/// padded and the packed layouts separately.
/// </summary>
public sealed class SelectorInput
{
    private readonly float[] _q, _k;
    private readonly int[] _queryStart, _keyStart, _queryLength, _keyLength, _batchOf;

    /// <summary>Wraps (does not copy) queries and keys.</summary>
    /// <param name="q">Queries <c>[B, Tq, H, D]</c>, row-major.</param>
    /// <param name="k">Keys <c>[B, Tk, Hkv, D]</c>, row-major.</param>
    /// <param name="batch">B (1 when <paramref name="offsets"/> is given).</param>
    /// <param name="queryLength">Tq (the packed length with offsets).</param>
    /// <param name="keyLength">Tk (the packed length with offsets; then equal to Tq).</param>
    /// <param name="heads">H.</param>
    /// <param name="kvHeads">Hkv, a divisor of H.</param>
    /// <param name="dim">D.</param>
    /// <param name="offsets">Cumulative sequence offsets of a packed batch (queries and keys alike), or null.</param>
    /// <exception cref="ArgumentException">Sizes that do not agree; the message names the argument and dimension.</exception>
    public SelectorInput(float[] q, float[] k, int batch, int queryLength, int keyLength, int heads, int kvHeads, int dim, SeqOffsets? offsets = null)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(queryLength);
        ArgumentOutOfRangeException.ThrowIfNegative(keyLength);
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(kvHeads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        if (heads % kvHeads != 0)
            throw new ArgumentException($"The query heads ({heads}) must be a multiple of the key heads ({kvHeads}).", nameof(kvHeads));
        if (q.LongLength != (long)batch * queryLength * heads * dim)
            throw new ArgumentException($"q holds {q.LongLength} values; [B={batch}, Tq={queryLength}, H={heads}, D={dim}] needs {(long)batch * queryLength * heads * dim}.", nameof(q));
        if (k.LongLength != (long)batch * keyLength * kvHeads * dim)
            throw new ArgumentException($"k holds {k.LongLength} values; [B={batch}, Tk={keyLength}, Hkv={kvHeads}, D={dim}] needs {(long)batch * keyLength * kvHeads * dim}.", nameof(k));
        _q = q;
        _k = k;
        Batch = batch;
        Heads = heads;
        KvHeads = kvHeads;
        Dim = dim;
        Offsets = offsets;
        TotalQueryLength = queryLength;
        TotalKeyLength = keyLength;
        if (offsets is null)
        {
            _queryStart = new int[batch];
            _keyStart = new int[batch];
            _queryLength = new int[batch];
            _keyLength = new int[batch];
            _batchOf = new int[batch];
            for (int b = 0; b < batch; b++)
            {
                _queryLength[b] = queryLength;
                _keyLength[b] = keyLength;
                _batchOf[b] = b;
            }
        }
        else
        {
            if (batch != 1) throw new ArgumentException($"A packed batch has B = 1; got {batch}.", nameof(batch));
            if (offsets.TotalTokens != queryLength || queryLength != keyLength)
                throw new ArgumentException($"The offsets cover {offsets.TotalTokens} tokens; Tq = {queryLength} and Tk = {keyLength} must both equal it.", nameof(offsets));
            int n = offsets.Count;
            _queryStart = new int[n];
            _keyStart = new int[n];
            _queryLength = new int[n];
            _keyLength = new int[n];
            _batchOf = new int[n];
            for (int s = 0; s < n; s++)
            {
                _queryStart[s] = _keyStart[s] = offsets.Start(s);
                _queryLength[s] = _keyLength[s] = offsets.Length(s);
            }
        }
    }

    /// <summary>B of the dense layout (1 for a packed batch).</summary>
    public int Batch { get; }

    /// <summary>Query heads H.</summary>
    public int Heads { get; }

    /// <summary>Key/value heads Hkv.</summary>
    public int KvHeads { get; }

    /// <summary>Query heads per key head.</summary>
    public int GroupSize => Heads / KvHeads;

    /// <summary>Head dim D.</summary>
    public int Dim { get; }

    /// <summary>Tq of the dense layout (the packed length for a packed batch).</summary>
    public int TotalQueryLength { get; }

    /// <summary>Tk of the dense layout (the packed length for a packed batch).</summary>
    public int TotalKeyLength { get; }

    /// <summary>The packed batch's offsets, or null.</summary>
    public SeqOffsets? Offsets { get; }

    /// <summary>Number of sequences (B, or the number of packed sequences).</summary>
    public int Sequences => _queryLength.Length;

    /// <summary>Query count of sequence <paramref name="sequence"/>.</summary>
    public int QueryLength(int sequence) => _queryLength[sequence];

    /// <summary>Key count of sequence <paramref name="sequence"/>.</summary>
    public int KeyLength(int sequence) => _keyLength[sequence];

    /// <summary>The key-axis position of query row <paramref name="row"/> (bottom-right alignment, as masks see it).</summary>
    public int QueryPosition(int sequence, int row) => row + _keyLength[sequence] - _queryLength[sequence];

    /// <summary>The D values of query row <paramref name="row"/> of head <paramref name="head"/> in a sequence.</summary>
    public ReadOnlySpan<float> QueryRow(int sequence, int head, int row)
    {
        long t = (long)_batchOf[sequence] * TotalQueryLength + _queryStart[sequence] + row;
        return new ReadOnlySpan<float>(_q, checked((int)((t * Heads + head) * Dim)), Dim);
    }

    /// <summary>The D values of key <paramref name="key"/> of key head <paramref name="kvHead"/> in a sequence.</summary>
    public ReadOnlySpan<float> KeyRow(int sequence, int kvHead, int key)
    {
        long t = (long)_batchOf[sequence] * TotalKeyLength + _keyStart[sequence] + key;
        return new ReadOnlySpan<float>(_k, checked((int)((t * KvHeads + kvHead) * Dim)), Dim);
    }

    /// <summary>Inputs of a runnable-method call (<c>q</c>, <c>k</c> and the offsets).</summary>
    /// <exception cref="ArgumentException">Mis-shaped tensors.</exception>
    public static SelectorInput From(MethodInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        MethodTensor q = inputs.Q, k = inputs.K;
        if (k.Dim(0) != q.Dim(0)) throw new ArgumentException($"k has batch {k.Dim(0)}, q has {q.Dim(0)}.", "k");
        if (k.Dim(3) != q.Dim(3)) throw new ArgumentException($"k has head dim {k.Dim(3)}, q has {q.Dim(3)}.", "k");
        return new SelectorInput(q.Data, k.Data, q.Dim(0), q.Dim(1), k.Dim(1), q.Dim(2), k.Dim(2), q.Dim(3), inputs.Offsets);
    }
}
