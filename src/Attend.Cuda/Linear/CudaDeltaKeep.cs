namespace Attend.Cuda.Linear;

/// <summary>
/// What <see cref="CudaDeltaRulePlan.Run"/> keeps for <see cref="CudaDeltaRulePlan.Backward"/>
/// (<see cref="CudaDeltaRulePlan.KeepForBackward"/>).
/// </summary>
public enum CudaDeltaKeep
{
    /// <summary>Nothing: the backward recomputes the forward (T, w, u, A, the state at each chunk's start and δ).</summary>
    None,

    /// <summary>
    /// T = (I + L)⁻¹ (<c>[B, T, H, 64]</c>, element type), as flash-linear-attention's forward saves its A: the backward
    /// recomputes w, u, A and the chain from it, without K Kᵀ and the triangular solve.
    /// </summary>
    Inverse,

    /// <summary>
    /// T, the state at each chunk's start (<c>[chunks, H, Dk, Dv]</c>) and δ (<c>[B, T, H, Dv]</c>), beside w, u and A in
    /// the plan's scratch: the backward recomputes nothing.
    /// </summary>
    All,
}
