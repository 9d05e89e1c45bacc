namespace Attend;

/// <summary>
/// Document masking for several documents packed into one sequence: a query sees only keys of its own document.
/// Combine with <see cref="CausalMask"/> (<see cref="Masks.And{TA, TB}"/>) for packed causal training.
/// Positions outside [0, total) belong to no document and see nothing.
/// </summary>
/// <remarks>Holds one document id per token (O(T) memory), so the per-element test is two array reads.</remarks>
public readonly struct DocumentMask : IMaskMod<DocumentMask>
{
    private readonly int[] _documentOf;

    /// <summary>Creates a document mask from the documents' cumulative offsets.</summary>
    public DocumentMask(SeqOffsets documents)
    {
        ArgumentNullException.ThrowIfNull(documents);
        Documents = documents;
        _documentOf = new int[documents.TotalTokens];
        for (int d = 0; d < documents.Count; d++)
            Array.Fill(_documentOf, d, documents.Start(d), documents.Length(d));
    }

    /// <summary>The documents' offsets.</summary>
    public SeqOffsets Documents { get; }

    // −1 for positions outside [0, total) (negative ones too: they belong to no document).
    private int DocumentOf(int position)
    {
        int[] documentOf = _documentOf ?? throw new InvalidOperationException("default(DocumentMask) has no documents; create it with new DocumentMask(offsets).");
        return (uint)position < (uint)documentOf.Length ? documentOf[position] : -1;
    }

    /// <inheritdoc/>
    public bool IsVisible(int batch, int head, int q, int k)
    {
        int dq = DocumentOf(q);
        return dq >= 0 && dq == DocumentOf(k);
    }

    /// <inheritdoc/>
    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
    {
        int q0 = DocumentOf(qStart), q1 = DocumentOf(qEnd - 1), k0 = DocumentOf(kStart), k1 = DocumentOf(kEnd - 1);
        if (q0 >= 0 && q1 >= 0 && k0 >= 0 && k1 >= 0)
        {
            // Document ids increase with position, so each block spans a contiguous id range.
            if (q0 == q1 && k0 == k1 && q0 == k0) return BlockKind.Full;
            if (q1 < k0 || k1 < q0) return BlockKind.Empty;
            return BlockKind.Partial;
        }
        return BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd);
    }

    /// <inheritdoc/>
    public bool DependsOnHead => false;

    /// <inheritdoc/>
    public bool DependsOnBatch => false;

    /// <inheritdoc/>
    public override string ToString() => $"document({Documents.Count} docs)";
}
