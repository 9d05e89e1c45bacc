using System.Numerics.Tensors;

namespace Attend;

/// <summary>Builds kernel views from pinned tensor spans (rank 4 [B, T, H, D] or rank 3 [T, H, D]).</summary>
internal static unsafe class Views
{
    public static TensorView<T> Of<T>(in ReadOnlyTensorSpan<T> t, T* pinned) where T : unmanaged
    {
        ReadOnlySpan<nint> l = t.Lengths, s = t.Strides;
        return t.Rank == 4
            ? new TensorView<T>(pinned, (int)l[0], (int)l[1], (int)l[2], (int)l[3], s[0], s[1], s[2])
            : new TensorView<T>(pinned, 1, (int)l[0], (int)l[1], (int)l[2], 0, s[0], s[1]);
    }

    public static LseView Lse(in ReadOnlyTensorSpan<float> t, float* pinned)
    {
        if (t.IsEmpty) return default;
        ReadOnlySpan<nint> s = t.Strides;
        return t.Rank == 3 ? new LseView(pinned, s[0], s[1], s[2]) : new LseView(pinned, 0, s[0], s[1]);
    }
}
