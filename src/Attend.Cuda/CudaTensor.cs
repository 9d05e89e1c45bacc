namespace Attend.Cuda;

/// <summary>
/// A contiguous [B, T, H, D] tensor of bf16 or fp16 in device memory: the device-resident form of attention inputs and
/// outputs (nothing is copied per call). Dispose it to free the memory.
/// </summary>
public sealed class CudaTensor : IDisposable
{
    private CudaTensor(DeviceBuffer buffer, ElementType elementType, int batch, int tokens, int heads, int dim)
    {
        Buffer = buffer;
        ElementType = elementType;
        Batch = batch;
        Tokens = tokens;
        Heads = heads;
        Dim = dim;
    }

    /// <summary>The device memory.</summary>
    public DeviceBuffer Buffer { get; }

    /// <summary>bf16 or fp16.</summary>
    public ElementType ElementType { get; }

    /// <summary>B.</summary>
    public int Batch { get; }

    /// <summary>T.</summary>
    public int Tokens { get; }

    /// <summary>H.</summary>
    public int Heads { get; }

    /// <summary>D.</summary>
    public int Dim { get; }

    /// <summary>B·T·H·D.</summary>
    public long Length => (long)Batch * Tokens * Heads * Dim;

    /// <summary>Allocates an uninitialised tensor.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative dimension, or an element type other than bf16/fp16.</exception>
    public static CudaTensor Create(CudaContext context, ElementType elementType, int batch, int tokens, int heads, int dim)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (elementType is not (ElementType.BFloat16 or ElementType.Float16))
            throw new ArgumentOutOfRangeException(nameof(elementType), elementType, "CUDA tensors hold bf16 or fp16 (the tensor cores' input types).");
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegative(heads);
        ArgumentOutOfRangeException.ThrowIfNegative(dim);
        long bytes = (long)batch * tokens * heads * dim * 2;
        return new CudaTensor(new DeviceBuffer(context, bytes), elementType, batch, tokens, heads, dim);
    }

    /// <summary>A tensor holding a copy of contiguous host data [B, T, H, D].</summary>
    /// <exception cref="ArgumentException">Data of the wrong length.</exception>
    public static CudaTensor FromHost<T>(CudaContext context, ReadOnlySpan<T> data, int batch, int tokens, int heads, int dim) where T : unmanaged
    {
        CudaTensor t = Create(context, ElementTypes.Of<T>(), batch, tokens, heads, dim);
        try
        {
            if (data.Length != t.Length)
                throw new ArgumentException($"data has {data.Length} elements; [{batch}, {tokens}, {heads}, {dim}] needs {t.Length}.", nameof(data));
            t.Buffer.CopyFrom(data);
        }
        catch
        {
            t.Dispose();
            throw;
        }
        return t;
    }

    /// <summary>Copies the tensor to contiguous host memory.</summary>
    /// <exception cref="ArgumentException">A destination of the wrong length or element type.</exception>
    public void CopyTo<T>(Span<T> destination) where T : unmanaged
    {
        if (ElementTypes.Of<T>() != ElementType)
            throw new ArgumentException($"The tensor holds {ElementType.ShortName()}; the destination is {typeof(T).Name}.", nameof(destination));
        if (destination.Length != Length)
            throw new ArgumentException($"destination has {destination.Length} elements; the tensor has {Length}.", nameof(destination));
        Buffer.CopyTo(destination);
    }

    /// <summary>Frees the device memory.</summary>
    public void Dispose() => Buffer.Dispose();

    /// <inheritdoc/>
    public override string ToString() => $"CudaTensor[{Batch}, {Tokens}, {Heads}, {Dim}] {ElementType.ShortName()}";
}
