namespace Attend.Kernels.Cpu;

/// <summary>A set of independent work items a kernel hands to <see cref="ParallelWork.Run"/>.</summary>
internal interface IWorkItems
{
    /// <summary>Runs item <paramref name="index"/>; called exactly once per item, from any worker.</summary>
    void Execute(int index);
}
