namespace Attend;

/// <summary>The element types attention inputs and outputs may have. Accumulation is always float32.</summary>
public enum ElementType
{
    /// <summary>IEEE float32.</summary>
    Float32,

    /// <summary>IEEE float16 (<see cref="Half"/>).</summary>
    Float16,

    /// <summary>Brain float16 (<see cref="BFloat16"/>).</summary>
    BFloat16,
}

/// <summary>Maps the supported CLR element types to <see cref="ElementType"/>.</summary>
public static class ElementTypes
{
    /// <summary>The element type of <typeparamref name="T"/>, or an exception naming the type when it is not supported.</summary>
    public static ElementType Of<T>()
    {
        if (typeof(T) == typeof(float)) return ElementType.Float32;
        if (typeof(T) == typeof(Half)) return ElementType.Float16;
        if (typeof(T) == typeof(BFloat16)) return ElementType.BFloat16;
        throw new NotSupportedException($"Element type {typeof(T).Name} is not supported; use float, Half or BFloat16.");
    }

    /// <summary>Short lower-case name used in reports: f32, f16, bf16.</summary>
    public static string ShortName(this ElementType type) => type switch
    {
        ElementType.Float32 => "f32",
        ElementType.Float16 => "f16",
        ElementType.BFloat16 => "bf16",
        _ => type.ToString(),
    };
}
