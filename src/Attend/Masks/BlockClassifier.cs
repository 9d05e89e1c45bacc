namespace Attend;

/// <summary>Helpers for classifying blocks.</summary>
public static class BlockClassifier
{
    /// <summary>
    /// Classifies a block by evaluating the mask on its pairs, stopping as soon as both a visible and a hidden
    /// pair have been seen. Costs up to one evaluation per pair of the block, never a T×T allocation.
    /// </summary>
    public static BlockKind ByEvaluation<TMask>(in TMask mask, int batch, int head, int qStart, int qEnd, int kStart, int kEnd)
        where TMask : struct, IMaskMod
    {
        bool anyVisible = false, anyHidden = false;
        for (int q = qStart; q < qEnd; q++)
        {
            for (int k = kStart; k < kEnd; k++)
            {
                if (mask.IsVisible(batch, head, q, k)) anyVisible = true; else anyHidden = true;
                if (anyVisible && anyHidden) return BlockKind.Partial;
            }
        }
        return anyVisible ? BlockKind.Full : BlockKind.Empty;
    }
}
