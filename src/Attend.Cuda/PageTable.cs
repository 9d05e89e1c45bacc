namespace Attend.Cuda;

/// <summary>
/// Which cache pages hold each sequence's keys and values: FlashInfer's page table (a CSR matrix of sequences × pages).
/// Sequence <c>b</c> owns pages <c>PageIndices[PageIndptr[b] .. PageIndptr[b+1])</c> in order; every page but its last
/// is full (<see cref="PageSize"/> tokens) and the last holds <c>LastPageLength[b]</c> tokens (a sequence with no pages
/// is empty). Immutable and validated once; the same table serves every layer.
/// </summary>
public sealed class PageTable
{
    private readonly int[] _indptr, _indices, _last;

    /// <summary>Validates and copies a page table.</summary>
    /// <param name="pageIndptr">N + 1 non-decreasing offsets into <paramref name="pageIndices"/>, starting at 0.</param>
    /// <param name="pageIndices">Page numbers, each in [0, <paramref name="pageCount"/>).</param>
    /// <param name="lastPageLength">Per sequence with pages: tokens in its last page, in [1, <paramref name="pageSize"/>].</param>
    /// <param name="pageSize">Tokens per page (≥ 1).</param>
    /// <param name="pageCount">Pages in the cache (≥ 0).</param>
    /// <exception cref="ArgumentException">An inconsistent table; the message names the argument and the entry.</exception>
    public PageTable(ReadOnlySpan<int> pageIndptr, ReadOnlySpan<int> pageIndices, ReadOnlySpan<int> lastPageLength, int pageSize, int pageCount)
    {
        if (pageSize < 1) throw new ArgumentOutOfRangeException(nameof(pageSize), pageSize, "The page size must be ≥ 1.");
        if (pageCount < 0) throw new ArgumentOutOfRangeException(nameof(pageCount), pageCount, "The page count must be ≥ 0.");
        if (pageIndptr.Length < 1 || pageIndptr[0] != 0)
            throw new ArgumentException("pageIndptr must have N + 1 entries starting at 0.", nameof(pageIndptr));
        int n = pageIndptr.Length - 1;
        if (lastPageLength.Length != n)
            throw new ArgumentException($"lastPageLength has {lastPageLength.Length} entries; pageIndptr describes {n} sequences.", nameof(lastPageLength));
        for (int b = 0; b < n; b++)
        {
            if (pageIndptr[b + 1] < pageIndptr[b])
                throw new ArgumentException($"pageIndptr must not decrease; entry {b + 1} is {pageIndptr[b + 1]} after {pageIndptr[b]}.", nameof(pageIndptr));
            bool hasPages = pageIndptr[b + 1] > pageIndptr[b];
            if (hasPages ? lastPageLength[b] < 1 || lastPageLength[b] > pageSize : lastPageLength[b] != 0)
                throw new ArgumentException(hasPages
                    ? $"lastPageLength[{b}] is {lastPageLength[b]}; it must be in [1, {pageSize}]."
                    : $"lastPageLength[{b}] is {lastPageLength[b]} for a sequence with no pages; it must be 0.", nameof(lastPageLength));
        }
        if (pageIndptr[n] != pageIndices.Length)
            throw new ArgumentException($"pageIndptr ends at {pageIndptr[n]} but pageIndices has {pageIndices.Length} entries.", nameof(pageIndices));
        for (int i = 0; i < pageIndices.Length; i++)
            if ((uint)pageIndices[i] >= (uint)pageCount)
                throw new ArgumentException($"pageIndices[{i}] is {pageIndices[i]}; pages are numbered 0..{pageCount - 1}.", nameof(pageIndices));
        _indptr = pageIndptr.ToArray();
        _indices = pageIndices.ToArray();
        _last = lastPageLength.ToArray();
        PageSize = pageSize;
        PageCount = pageCount;
    }

    /// <summary>Tokens per page.</summary>
    public int PageSize { get; }

    /// <summary>Pages in the cache the table points into.</summary>
    public int PageCount { get; }

    /// <summary>Sequences.</summary>
    public int Sequences => _indptr.Length - 1;

    /// <summary>The CSR offsets.</summary>
    public ReadOnlySpan<int> PageIndptr => _indptr;

    /// <summary>The page numbers.</summary>
    public ReadOnlySpan<int> PageIndices => _indices;

    /// <summary>Tokens in each sequence's last page.</summary>
    public ReadOnlySpan<int> LastPageLength => _last;

    /// <summary>Tokens cached for sequence <paramref name="sequence"/>.</summary>
    public int Length(int sequence)
    {
        int pages = _indptr[sequence + 1] - _indptr[sequence];
        return pages == 0 ? 0 : (pages - 1) * PageSize + _last[sequence];
    }

    /// <summary>The longest sequence.</summary>
    public int MaxLength
    {
        get
        {
            int m = 0;
            for (int b = 0; b < Sequences; b++) m = Math.Max(m, Length(b));
            return m;
        }
    }

    /// <summary>Where token <paramref name="token"/> of <paramref name="sequence"/> lives: (page, slot in the page).</summary>
    public (int Page, int Slot) Locate(int sequence, int token)
    {
        if ((uint)token >= (uint)Length(sequence)) throw new ArgumentOutOfRangeException(nameof(token), token, $"Sequence {sequence} has {Length(sequence)} tokens.");
        return (_indices[_indptr[sequence] + token / PageSize], token % PageSize);
    }
}
