using System.Collections.Concurrent;

namespace Attend.Cuda;

/// <summary>
/// A paged KV cache on the device: K and V pages [pageCount, pageSize, kvHeads, D] (FlashInfer's NHD layout), bf16 or fp16.
/// </summary>
public sealed class CudaPagedKvCache : IDisposable
{
    /// <summary>Allocates the pages (contents undefined until written).</summary>
    public CudaPagedKvCache(CudaContext context, ElementType elementType, int pageCount, int pageSize, int kvHeads, int dim)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (elementType is not (ElementType.BFloat16 or ElementType.Float16))
            throw new ArgumentOutOfRangeException(nameof(elementType), elementType, "The cache holds bf16 or fp16.");
        ArgumentOutOfRangeException.ThrowIfNegative(pageCount);
        ArgumentOutOfRangeException.ThrowIfLessThan(pageSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(kvHeads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        (ElementType, PageCount, PageSize, KvHeads, Dim) = (elementType, pageCount, pageSize, kvHeads, dim);
        long bytes = (long)pageCount * pageSize * kvHeads * dim * 2;
        Keys = new DeviceBuffer(context, bytes);
        try { Values = new DeviceBuffer(context, bytes); }
        catch { Keys.Dispose(); throw; }
    }

    /// <summary>bf16 or fp16.</summary>
    public ElementType ElementType { get; }

    /// <summary>Pages.</summary>
    public int PageCount { get; }

    /// <summary>Tokens per page.</summary>
    public int PageSize { get; }

    /// <summary>KV heads.</summary>
    public int KvHeads { get; }

    /// <summary>Head dim.</summary>
    public int Dim { get; }

    /// <summary>Key pages.</summary>
    public DeviceBuffer Keys { get; }

    /// <summary>Value pages.</summary>
    public DeviceBuffer Values { get; }

    /// <summary>Frees the pages.</summary>
    public void Dispose()
    {
        Keys.Dispose();
        Values.Dispose();
    }
}

/// <summary>
/// Decode on the GPU: one query token per sequence against a paged KV cache, split-KV over key ranges (flash-decoding),
/// the partial results joined by the LSE merge. Grouped-query heads of one KV head are processed together, so each
/// cached key and value is read once. The query sees every cached token of its sequence (it is the newest token).
/// </summary>
public static class CudaDecode
{
    /// <summary>
    /// Keys per split for a cache of <paramref name="maxLength"/> tokens: enough splits that (sequences × KV heads ×
    /// splits) fills about eight waves of the GPU (so the last, partial wave costs little), and no more, so that the merge and each split's set-up stay small
    /// (a multiple of 256, at least 256).
    /// </summary>
    public static int SplitKeys(int maxLength, int sequences, int kvHeads, int multiprocessors)
    {
        long pairs = Math.Max(1L, (long)sequences * kvHeads);
        long wanted = Math.Max(1L, (16L * multiprocessors + pairs - 1) / pairs); // ≈ 8 waves of 2 CTAs per SM: a small last wave
        long keys = (maxLength + wanted - 1) / wanted;
        return (int)Math.Max(256, (keys + 255) / 256 * 256);
    }

    /// <summary>
    /// Dynamic shared memory of the split kernel: its pipeline of 64-key stages of K and V rows (paged_decode.cu's
    /// STAGE_KEYS and STAGES: 3 stages at D = 128, 4 at D = 64, so two CTAs fit on an SM).
    /// </summary>
    internal static int SharedBytes(int dim) => (dim == 128 ? 3 : 4) * 64 * dim * 2 * 2;

    private static readonly ConcurrentDictionary<(CudaContext, int, int, int, ElementType), (CudaKernelFunction Split, CudaKernelFunction Merge)> s_loaded = new();

    /// <summary>One line per loaded decode specialisation: head dim, group, page size, registers and local memory of the split kernel.</summary>
    public static IEnumerable<string> Describe()
    {
        foreach (KeyValuePair<(CudaContext, int, int, int, ElementType), (CudaKernelFunction Split, CudaKernelFunction Merge)> entry in s_loaded)
        {
            (_, int dim, int group, int pageSize, ElementType type) = entry.Key;
            yield return $"paged_decode D={dim} group={group} page={pageSize} {type.ShortName()}: split kernel {entry.Value.Split.Registers} registers, {entry.Value.Split.LocalBytes} B local, {SharedBytes(dim)} B shared";
        }
    }

    /// <summary>Why a decode problem has no kernel (null when it has one).</summary>
    public static string? Unsupported(int heads, int kvHeads, int dim, int pageSize)
    {
        if (dim is not (64 or 128)) return $"decode is specialised for head dims 64 and 128; got {dim}";
        if (kvHeads < 1 || heads % kvHeads != 0) return $"{kvHeads} KV heads must divide {heads} query heads";
        if (heads / kvHeads > 8) return $"decode takes at most 8 query heads per KV head; got {heads / kvHeads}";
        if (pageSize < 1) return "the page size must be ≥ 1";
        return null;
    }

    /// <summary>
    /// Decodes: <paramref name="q"/> [B, 1, H, D] against the cache through <paramref name="table"/> (B sequences) into
    /// <paramref name="output"/> [B, 1, H, D] and, when given, <paramref name="lse"/> [B, H] (natural log, float32).
    /// Plans, runs and waits; for repeated steps keep a <see cref="Plan"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes that disagree; the message names the argument.</exception>
    /// <exception cref="NotSupportedException">A head dim or group size without a kernel; the message says why.</exception>
    public static void Run(CudaTensor q, CudaPagedKvCache cache, PageTable table, float? scale, CudaTensor output,
        DeviceBuffer? lse = null, CudaStream? stream = null)
    {
        ArgumentNullException.ThrowIfNull(q);
        using CudaDecodePlan plan = Plan(table, q.Heads, cache, scale);
        plan.Run(q, output, lse, stream);
        if (stream is null) CudaContext.Default.Synchronize();
        else stream.Synchronize();
    }

    /// <summary>Uploads the page table and sizes the split buffers for <paramref name="heads"/> query heads.</summary>
    public static CudaDecodePlan Plan(PageTable table, int heads, CudaPagedKvCache cache, float? scale, CudaContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(cache);
        context ??= CudaContext.Default;
        if (table.PageSize != cache.PageSize || table.PageCount > cache.PageCount)
            throw new ArgumentException($"The page table is for {table.PageCount} pages of {table.PageSize}; the cache has {cache.PageCount} of {cache.PageSize}.", nameof(table));
        if (Unsupported(heads, cache.KvHeads, cache.Dim, cache.PageSize) is { } why) throw new NotSupportedException(why);
        var (split, merge) = Kernels(context, cache.Dim, heads / cache.KvHeads, cache.PageSize, cache.ElementType);
        return new CudaDecodePlan(context, table, heads, cache, scale ?? 1f / MathF.Sqrt(cache.Dim), split, merge);
    }

    private static (CudaKernelFunction, CudaKernelFunction) Kernels(CudaContext context, int dim, int group, int pageSize, ElementType type) =>
        s_loaded.GetOrAdd((context, dim, group, pageSize, type), key =>
        {
            string source = KernelCompiler.Source("paged_decode.cu");
            string[] options =
            [
                $"-DHEAD_DIM={dim}", $"-DGROUP={group}", $"-DPAGE_SIZE={pageSize}",
                $"-DELEM_BF16={(type == ElementType.BFloat16 ? 1 : 0)}",
                "--use_fast_math", "--std=c++17",
            ];
            CompiledKernel image = KernelCompiler.Build("paged_decode.cu", source, options, context.Architecture);
            return (new CudaKernelFunction(context, image, "attend_decode_split", SharedBytes(dim)), new CudaKernelFunction(context, image, "attend_decode_merge", 0));
        });
}

/// <summary>A decode step prepared once (page table uploaded, split buffers allocated); <see cref="Run"/> only launches.</summary>
public sealed unsafe class CudaDecodePlan : IDisposable
{
    private readonly CudaKernelFunction _split, _merge;
    private readonly DeviceBuffer _indptr, _indices, _last, _partialO, _partialLse;
    private readonly CudaPagedKvCache _cache;
    private readonly float _scaleLog2;

    internal CudaDecodePlan(CudaContext context, PageTable table, int heads, CudaPagedKvCache cache, float scale, CudaKernelFunction split, CudaKernelFunction merge)
    {
        (_split, _merge, _cache, Heads, Sequences) = (split, merge, cache, heads, table.Sequences);
        SplitKeys = CudaDecode.SplitKeys(table.MaxLength, table.Sequences, cache.KvHeads, context.Multiprocessors);
        Splits = Math.Max(1, (table.MaxLength + SplitKeys - 1) / SplitKeys);
        _scaleLog2 = scale * 1.44269504f;
        CachedTokens = 0;
        for (int b = 0; b < table.Sequences; b++) CachedTokens += table.Length(b);
        var owned = new List<DeviceBuffer>();
        try
        {
            _indptr = Own(DeviceBuffer.From<int>(context, table.PageIndptr), owned);
            _indices = Own(DeviceBuffer.From<int>(context, table.PageIndices.Length > 0 ? table.PageIndices : [0]), owned);
            _last = Own(DeviceBuffer.From<int>(context, table.LastPageLength.Length > 0 ? table.LastPageLength : [0]), owned);
            _partialO = Own(new DeviceBuffer(context, (long)Splits * Sequences * heads * cache.Dim * sizeof(float)), owned);
            _partialLse = Own(new DeviceBuffer(context, (long)Splits * Sequences * heads * sizeof(float)), owned);
        }
        catch
        {
            foreach (DeviceBuffer b in owned) b.Dispose();
            throw;
        }
    }

    private static DeviceBuffer Own(DeviceBuffer b, List<DeviceBuffer> owned)
    {
        owned.Add(b);
        return b;
    }

    /// <summary>Query heads.</summary>
    public int Heads { get; }

    /// <summary>Sequences (the batch).</summary>
    public int Sequences { get; }

    /// <summary>Keys per split.</summary>
    public int SplitKeys { get; }

    /// <summary>Key ranges each sequence is split into.</summary>
    public int Splits { get; }

    /// <summary>Tokens cached over all sequences (each read once per KV head).</summary>
    public long CachedTokens { get; }

    /// <summary>Queues the step: <paramref name="q"/> [B, 1, H, D] → <paramref name="output"/> [B, 1, H, D], LSE [B, H] when given.</summary>
    /// <exception cref="ArgumentException">Tensors that do not match the plan.</exception>
    public void Run(CudaTensor q, CudaTensor output, DeviceBuffer? lse = null, CudaStream? stream = null)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(output);
        if (q.Tokens != 1) throw new ArgumentException($"q must hold one token per sequence (dimension 1); got {q.Tokens}.", nameof(q));
        if (q.Batch != Sequences || q.Heads != Heads || q.Dim != _cache.Dim || q.ElementType != _cache.ElementType)
            throw new ArgumentException($"q must be [{Sequences}, 1, {Heads}, {_cache.Dim}] {_cache.ElementType.ShortName()} as planned; got {q}.", nameof(q));
        if (output.Batch != q.Batch || output.Tokens != 1 || output.Heads != q.Heads || output.Dim != q.Dim || output.ElementType != q.ElementType)
            throw new ArgumentException($"output must be [{q.Batch}, 1, {q.Heads}, {q.Dim}] {q.ElementType.ShortName()}; got {output}.", nameof(output));
        if (lse is not null && lse.Bytes < (long)q.Batch * q.Heads * sizeof(float))
            throw new ArgumentException($"lse holds {lse.Bytes} bytes; [B, H] float32 needs {(long)q.Batch * q.Heads * sizeof(float)}.", nameof(lse));
        if (Sequences == 0 || Heads == 0) return;
        ulong pq = q.Buffer.Pointer, pk = _cache.Keys.Pointer, pv = _cache.Values.Pointer, pi = _indptr.Pointer, px = _indices.Pointer, pl = _last.Pointer;
        ulong po = _partialO.Pointer, ps = _partialLse.Pointer, pout = output.Buffer.Pointer, plse = lse?.Pointer ?? 0;
        int batch = Sequences, heads = Heads, kvHeads = _cache.KvHeads, splits = Splits;
        float scaleLog2 = _scaleLog2;
        int splitKeys = SplitKeys;
        void** a = stackalloc void*[13];
        a[0] = &pq; a[1] = &pk; a[2] = &pv; a[3] = &pi; a[4] = &px; a[5] = &pl; a[6] = &po; a[7] = &ps;
        a[8] = &batch; a[9] = &heads; a[10] = &kvHeads; a[11] = &scaleLog2; a[12] = &splitKeys;
        _split.Launch((uint)batch, (uint)kvHeads, (uint)splits, 128, (uint)CudaDecode.SharedBytes(_cache.Dim), stream, a);
        void** m = stackalloc void*[7];
        m[0] = &po; m[1] = &ps; m[2] = &splits; m[3] = &batch; m[4] = &heads; m[5] = &pout; m[6] = &plse;
        _merge.Launch((uint)(batch * heads), 1, 1, (uint)q.Dim, 0, stream, m);
    }

    /// <summary>Frees the plan's buffers.</summary>
    public void Dispose()
    {
        _indptr.Dispose();
        _indices.Dispose();
        _last.Dispose();
        _partialO.Dispose();
        _partialLse.Dispose();
    }
}
