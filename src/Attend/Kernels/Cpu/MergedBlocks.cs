namespace Attend.Kernels.Cpu;

/// <summary>
/// Walks a block mask row (or column): its full and partial block lists merged in ascending order, so every kernel
/// visits blocks in the same fixed order (which keeps results reproducible) and knows which need the mask.
/// </summary>
internal ref struct MergedBlocks
{
    private readonly ReadOnlySpan<int> _full;
    private readonly ReadOnlySpan<int> _partial;
    private int _fi;
    private int _pi;

    public MergedBlocks(ReadOnlySpan<int> full, ReadOnlySpan<int> partial)
    {
        _full = full;
        _partial = partial;
    }

    /// <summary>The next block; false when both lists are exhausted.</summary>
    public bool Next(out int block, out bool partial)
    {
        if (_fi >= _full.Length && _pi >= _partial.Length)
        {
            block = 0;
            partial = false;
            return false;
        }
        partial = _fi >= _full.Length || (_pi < _partial.Length && _partial[_pi] < _full[_fi]);
        block = partial ? _partial[_pi++] : _full[_fi++];
        return true;
    }
}
