namespace Attend;

/// <summary>Which computation a kernel variant is asked for.</summary>
public enum AttentionPass
{
    /// <summary>Output and log-sum-exp.</summary>
    Forward,

    /// <summary>dQ, dK, dV from the saved log-sum-exp.</summary>
    Backward,
}
