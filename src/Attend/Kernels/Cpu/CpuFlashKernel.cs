namespace Attend.Kernels.Cpu;

/// <summary>
/// FlashAttention-2 on the CPU (Dao, 2023): query tiles × key tiles with the online softmax in float32, never a T×T
/// matrix; full blocks skip the mask, empty blocks are never visited; all cores, heaviest tiles first. Forward
/// (output + LSE) and backward (dQ, dK, dV from the saved LSE; deterministic on request). Generic over the vector
/// width, registered as <c>CpuFlashVector512</c> and <c>CpuFlashVector256</c>.
/// </summary>
internal sealed class CpuFlashKernel<TIsa, TVec> : AttentionKernel
    where TIsa : struct, IVectorIsa<TVec>
    where TVec : unmanaged
{
    /// <summary>Query rows per tile (and per block of the block mask this variant runs on).</summary>
    public const int QueryRows = 64;

    public override string Name => "CpuFlash" + TIsa.Name;

    public override int QueryBlockSize => QueryRows;

    public override string Backend => "cpu";

    public override string Summary => $"FlashAttention-2 tiles (64x64) with {TIsa.Name}, float32 online softmax, all cores";

    public override bool IsSupported(in KernelProblem problem, out string reason)
    {
        if (!TIsa.IsSupported)
        {
            reason = $"{TIsa.Name} is not hardware-accelerated on this machine";
            return false;
        }
        reason = "";
        return true;
    }

    internal override void Forward<T, TMask, TScore>(ForwardCall<T> call, TMask mask, TScore score) =>
        FlashForward<T, TMask, TScore, TIsa, TVec>.Run(call, mask, score);

    internal override void Backward<T, TMask, TScore>(BackwardCall<T> call, TMask mask, TScore score) =>
        FlashBackward<T, TMask, TScore, TIsa, TVec>.Run(call, mask, score);

    /// <summary>The head dim rounded up to a whole number of vectors.</summary>
    public static int PaddedDim(int dim) => (dim + TIsa.Width - 1) / TIsa.Width * TIsa.Width;

    /// <summary>
    /// Splits the (sequence, KV head) units into consecutive chunks whose packed panels fit a memory budget, so long
    /// contexts do not pack every head at once. Each chunk holds at least one unit.
    /// </summary>
    public static List<(int Start, int Count)> Chunks(AttentionShape shape, List<(int Seq, int KvHead)> units, long floatsPerBlock)
    {
        const long budget = 8L << 20; // floats (32 MB)
        var chunks = new List<(int, int)>();
        int start = 0;
        long used = 0;
        for (int u = 0; u < units.Count; u++)
        {
            long need = KvPanels<float>.BlocksOf(shape, units[u].Seq) * floatsPerBlock;
            if (u > start && used + need > budget)
            {
                chunks.Add((start, u - start));
                start = u;
                used = 0;
            }
            used += need;
        }
        if (start < units.Count) chunks.Add((start, units.Count - start));
        return chunks;
    }

    /// <summary>All (sequence, KV head) units with at least one key.</summary>
    public static List<(int Seq, int KvHead)> Units(AttentionShape shape)
    {
        var units = new List<(int, int)>();
        for (int s = 0; s < shape.Sequences; s++)
            for (int hk = 0; hk < shape.KvHeads; hk++)
                units.Add((s, hk));
        return units;
    }
}
