namespace Attend;

/// <summary>How a block of (query, key) pairs relates to a mask.</summary>
public enum BlockKind : byte
{
    /// <summary>No pair is visible: the block is never visited.</summary>
    Empty = 0,

    /// <summary>Some pairs are visible: the kernel evaluates the mask per element.</summary>
    Partial = 1,

    /// <summary>Every pair is visible: the kernel skips the mask.</summary>
    Full = 2,
}
