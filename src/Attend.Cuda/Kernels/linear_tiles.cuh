// Shared device helpers of the chunked linear-attention kernels (linear_chunk.cu, linear_chunk_bwd.cu): the swizzled
// [rows][64] value/state tile layout and its loader, and per gate kind the scalar-gate scan lookup (GATE 1) and the
// float32 gate-tile loader (GATE 2). Pulled in textually by KernelCompiler.Source after mma_tiles.cuh and
// linear_elem.cuh (element unpacking, e^x), once the including kernel has defined NT, CHUNK, BV, DK, GATE, elem_t and
// ELEM_BF16.

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][64] tile (value blocks, state slices).
__device__ __forceinline__ unsigned voff(int row, int chunk)
{
    return (unsigned)((row * BV + ((chunk ^ (row & 7)) << 3)) * 2);
}


// Copies CHUNK rows of a [rows][BV] slice (global row stride `stride` elements) into a swizzled tile; rows past `valid` are zero-filled.
__device__ __forceinline__ void load_vtile(unsigned tile, const elem_t* g, long long stride, int valid, int tid)
{
#pragma unroll
    for (int i = 0; i < CHUNK * (BV / 8) / NT; i++)
    {
        const int idx = tid + i * NT;
        const int r = idx / (BV / 8), c = idx % (BV / 8);
        const bool ok = r < valid;
        const elem_t* src = ok ? g + (long long)r * stride + c * 8 : g;
        cp_async16(tile + voff(r, c), src, ok ? 16 : 0);
    }
}

#if GATE == 1
// The in-chunk cumulative log decay b (inclusive) in registers: lane l holds b[2l] and b[2l+1]. Every lane of the
// warp must call this (two shuffles).
__device__ __forceinline__ float bget(float b0, float b1, int x)
{
    const float e = __shfl_sync(0xffffffffu, b0, x >> 1), o = __shfl_sync(0xffffffffu, b1, x >> 1);
    return (x & 1) ? o : e;
}

__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(dst), "l"(src), "r"(bytes));
}
#endif

#if GATE == 2
// Copies CHUNK rows of DK float32 gates (row stride `stride` floats) into a [CHUNK][pitch] tile; zero past `valid`.
__device__ __forceinline__ void load_gtile(unsigned tile, const float* g, long long stride, int valid, int pitch, int tid)
{
#pragma unroll
    for (int i = 0; i < CHUNK * (DK / 4) / NT; i++)
    {
        const int idx = tid + i * NT;
        const int r = idx / (DK / 4), c = idx % (DK / 4);
        const bool ok = r < valid;
        const float* src = ok ? g + (long long)r * stride + c * 4 : g;
        cp_async16(tile + (unsigned)((r * pitch + c * 4) * 4), src, ok ? 16 : 0);
    }
}
#endif
