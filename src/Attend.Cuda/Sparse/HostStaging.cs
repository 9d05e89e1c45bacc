namespace Attend.Cuda.Sparse;

/// <summary>
/// Moves strided host views to contiguous device tensors and back, converting float32 to bf16 on the way in and bf16
/// to float32 on the way out (the tensor cores take 16-bit inputs); bf16 and fp16 views are copied as they are. Rows
/// are packed in parallel on all cores, so a 128k-token call spends milliseconds, not seconds, here.
/// </summary>
internal static unsafe class HostStaging
{
    /// <summary>The element type a host element type runs as on the device: float32 → bf16, else itself.</summary>
    public static ElementType DeviceType<T>() where T : unmanaged =>
        ElementTypes.Of<T>() switch
        {
            ElementType.Float32 => ElementType.BFloat16,
            ElementType.BFloat16 => ElementType.BFloat16,
            ElementType.Float16 => ElementType.Float16,
            ElementType other => throw new NotSupportedException($"The CUDA kernels take float32 (converted to bf16), bf16 or fp16; got {other.ShortName()}."),
        };

    /// <summary>Packs <paramref name="view"/> into a new contiguous device tensor of <see cref="DeviceType{T}"/>.</summary>
    public static CudaTensor Upload<T>(CudaContext context, TensorView<T> view) where T : unmanaged
    {
        long rows = (long)view.Batch * view.Tokens * view.Heads;
        int d = view.Dim;
        if (typeof(T) == typeof(float))
        {
            var packed = new BFloat16[rows * d];
            fixed (BFloat16* dst = packed)
            {
                nint at = (nint)dst;
                Parallel.For(0L, (long)view.Batch * view.Tokens, bt =>
                {
                    int b = (int)(bt / view.Tokens), t = (int)(bt % view.Tokens);
                    for (int h = 0; h < view.Heads; h++)
                    {
                        float* src = (float*)view.Row(b, t, h);
                        BFloat16* o = (BFloat16*)at + (bt * view.Heads + h) * d;
                        for (int i = 0; i < d; i++) o[i] = BFloat16.FromSingle(src[i]);
                    }
                });
            }
            return CudaTensor.FromHost<BFloat16>(context, packed, view.Batch, view.Tokens, view.Heads, d);
        }
        var same = new T[rows * d];
        fixed (T* dst = same)
        {
            nint at = (nint)dst;
            Parallel.For(0L, (long)view.Batch * view.Tokens, bt =>
            {
                int b = (int)(bt / view.Tokens), t = (int)(bt % view.Tokens);
                for (int h = 0; h < view.Heads; h++)
                    new ReadOnlySpan<T>(view.Row(b, t, h), d).CopyTo(new Span<T>((T*)at + (bt * view.Heads + h) * d, d));
            });
        }
        return CudaTensor.FromHost<T>(context, same, view.Batch, view.Tokens, view.Heads, d);
    }

    /// <summary>Copies a contiguous device tensor into the strided host <paramref name="view"/>, converting bf16 → float32 when T is float.</summary>
    public static void Download<T>(CudaTensor source, TensorView<T> view) where T : unmanaged
    {
        int d = view.Dim;
        if (typeof(T) == typeof(float))
        {
            var packed = new BFloat16[source.Length];
            source.CopyTo<BFloat16>(packed);
            fixed (BFloat16* src = packed)
            {
                nint at = (nint)src;
                Parallel.For(0L, (long)view.Batch * view.Tokens, bt =>
                {
                    int b = (int)(bt / view.Tokens), t = (int)(bt % view.Tokens);
                    for (int h = 0; h < view.Heads; h++)
                    {
                        BFloat16* s = (BFloat16*)at + (bt * view.Heads + h) * d;
                        float* o = (float*)view.Row(b, t, h);
                        for (int i = 0; i < d; i++) o[i] = BFloat16.ToSingle(s[i]);
                    }
                });
            }
            return;
        }
        var same = new T[source.Length];
        source.CopyTo<T>(same);
        fixed (T* src = same)
        {
            nint at = (nint)src;
            Parallel.For(0L, (long)view.Batch * view.Tokens, bt =>
            {
                int b = (int)(bt / view.Tokens), t = (int)(bt % view.Tokens);
                for (int h = 0; h < view.Heads; h++)
                    new ReadOnlySpan<T>((T*)at + (bt * view.Heads + h) * d, d).CopyTo(new Span<T>(view.Row(b, t, h), d));
            });
        }
    }

    /// <summary>Copies a contiguous device LSE [B, H, Tq] into the strided host <paramref name="view"/>.</summary>
    public static void DownloadLse(DeviceBuffer source, LseView view, int batch, int heads, int tokens)
    {
        var l = new float[(long)batch * heads * tokens];
        source.CopyTo<float>(l);
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < tokens; t++)
                    *view.At(b, h, t) = l[((long)b * heads + h) * tokens + t];
    }
}
