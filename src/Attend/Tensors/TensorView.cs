using System.Runtime.CompilerServices;

namespace Attend;

/// <summary>
/// A pinned, strided [B, T, H, D] view used inside kernels. The last dimension is contiguous.
/// Built by the public entry points from a pinned <c>TensorSpan</c>; valid only while that pin lasts.
/// </summary>
internal readonly unsafe struct TensorView<T> where T : unmanaged
{
    public readonly T* Data;
    public readonly int Batch;
    public readonly int Tokens;
    public readonly int Heads;
    public readonly int Dim;
    public readonly nint StrideBatch;
    public readonly nint StrideToken;
    public readonly nint StrideHead;

    public TensorView(T* data, int batch, int tokens, int heads, int dim, nint strideBatch, nint strideToken, nint strideHead)
    {
        Data = data;
        Batch = batch;
        Tokens = tokens;
        Heads = heads;
        Dim = dim;
        StrideBatch = strideBatch;
        StrideToken = strideToken;
        StrideHead = strideHead;
    }

    /// <summary>Pointer to the D contiguous elements of (b, t, h).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public T* Row(int batch, int token, int head) => Data + batch * StrideBatch + token * StrideToken + head * StrideHead;
}
