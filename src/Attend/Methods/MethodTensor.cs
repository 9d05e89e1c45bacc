namespace Attend.Methods;

/// <summary>
/// A named float32 array with its shape, the unit in which <see cref="IAttentionMethod.Run"/> takes inputs and returns
/// outputs. Q, K, V are <c>[B, T, H, D]</c> (rank 3 <c>[T, H, D]</c> is promoted to B = 1 by the caller); other inputs
/// (gates, betas, states) have the shapes their method documents.
/// </summary>
public sealed class MethodTensor
{
    /// <summary>Wraps <paramref name="data"/> (not copied) with <paramref name="shape"/>.</summary>
    /// <exception cref="ArgumentException">The shape has a negative dimension or its product differs from the data length.</exception>
    public MethodTensor(float[] data, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(shape);
        long count = 1;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] < 0) throw new ArgumentException($"Dimension {i} is negative ({shape[i]}).", nameof(shape));
            count *= shape[i];
        }
        if (count != data.LongLength)
            throw new ArgumentException($"Shape ({string.Join(", ", shape)}) holds {count} elements but the data has {data.LongLength}.", nameof(data));
        Data = data;
        Shape = (int[])shape.Clone();
    }

    /// <summary>The elements, row-major.</summary>
    public float[] Data { get; }

    /// <summary>The dimensions.</summary>
    public IReadOnlyList<int> Shape { get; }

    /// <summary>Dimension <paramref name="axis"/>.</summary>
    public int Dim(int axis) => Shape[axis];

    /// <summary>The shape as text, e.g. <c>(1, 128, 8, 64)</c>.</summary>
    public override string ToString() => $"({string.Join(", ", Shape)})";
}
