using System.Numerics.Tensors;

namespace Attend;

/// <summary>
/// Views of common storage layouts as the [B, T, H, D] tensors attention takes, by strides only (no copies).
/// </summary>
/// <remarks>
/// System.Numerics.Tensors requires the stride of a dimension of length 1 to be 0, so these helpers write 0 there
/// (and all strides are 0 for an empty tensor, which it otherwise rejects).
/// </remarks>
public static class AttentionLayout
{
    /// <summary>Dense [B, T, H, D] storage.</summary>
    public static TensorSpan<T> Bthd<T>(Span<T> data, int batch, int tokens, int heads, int dim) =>
        new(data, [batch, tokens, heads, dim], Strides([batch, tokens, heads, dim], [(nint)tokens * heads * dim, (nint)heads * dim, dim, 1]));

    /// <summary>Dense [B, H, T, D] storage (PyTorch SDPA's layout), seen as [B, T, H, D].</summary>
    public static TensorSpan<T> Bhtd<T>(Span<T> data, int batch, int heads, int tokens, int dim) =>
        new(data, [batch, tokens, heads, dim], Strides([batch, tokens, heads, dim], [(nint)heads * tokens * dim, dim, (nint)tokens * dim, 1]));

    /// <summary>Dense [B, H, T] LSE storage.</summary>
    public static TensorSpan<float> Lse(Span<float> data, int batch, int heads, int tokens) =>
        new(data, [batch, heads, tokens], Strides([batch, heads, tokens], [(nint)heads * tokens, tokens, 1]));

    private static nint[] Strides(ReadOnlySpan<nint> lengths, nint[] strides)
    {
        // An empty tensor (some length 0) addresses nothing; System.Numerics.Tensors accepts it only with zero strides.
        bool empty = lengths.Contains(0);
        for (int i = 0; i < strides.Length; i++)
            if (lengths[i] == 1 || empty) strides[i] = 0;
        return strides;
    }
}
