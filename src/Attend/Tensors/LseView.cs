using System.Runtime.CompilerServices;

namespace Attend;

/// <summary>A pinned, strided [B, H, T] float32 view of log-sum-exp values.</summary>
internal readonly unsafe struct LseView
{
    public readonly float* Data;
    public readonly nint StrideBatch;
    public readonly nint StrideHead;
    public readonly nint StrideToken;

    public LseView(float* data, nint strideBatch, nint strideHead, nint strideToken)
    {
        Data = data;
        StrideBatch = strideBatch;
        StrideHead = strideHead;
        StrideToken = strideToken;
    }

    public bool IsNull => Data == null;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float* At(int batch, int head, int token) => Data + batch * StrideBatch + head * StrideHead + token * StrideToken;
}
