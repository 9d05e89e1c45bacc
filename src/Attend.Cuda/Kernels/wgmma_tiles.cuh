// Hopper warpgroup-product helpers (wgmma.mma_async, sm_90a) shared by flash_backward_mma.cu and flash_forward.cu:
// the 128-byte-swizzled tile layout and its cp.async loader, shared-memory matrix descriptors, fences, and the
// m64n64k16 / m64n128k16 products (float32 accumulators in the m16n8 C-fragment layout per warp, as mma.sync).
// Pulled in textually by KernelCompiler.Source (inside the including kernel's `#if WGMMA`), after mma_tiles.cuh and
// after the kernel has defined HEAD_DIM, DC, DTILES, NT, elem_t and ELEM_BF16.
#if ELEM_BF16
#define WG_T "bf16"
#else
#define WG_T "f16"
#endif

// Byte offset of 16-byte chunk `chunk` of row `row` in a [ROWS][HEAD_DIM] tile stored as HEAD_DIM / 64 column blocks of
// [ROWS][64 elements] with the 128-byte swizzle (chunk ^ row % 8 inside each 128-byte row): the layout a wgmma
// descriptor with swizzle mode 1 describes, both K-major and N-major. The tile must start 1024-byte aligned.
template <int ROWS>
__device__ __forceinline__ unsigned wtile_offset(int row, int chunk)
{
    return (unsigned)((chunk >> 3) * ROWS * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// Copies `rows` rows (global row stride `stride` elements) into a wgmma tile; rows past `valid` are zero-filled.
template <int ROWS>
__device__ __forceinline__ void load_wtile(unsigned tile, const elem_t* g, long long stride, int valid, int tid)
{
#pragma unroll
    for (int i = 0; i < ROWS * DC / NT; i++)
    {
        int idx = tid + i * NT;
        int r = idx / DC, c = idx % DC;
        bool ok = r < valid;
        const elem_t* src = ok ? g + (long long)r * stride + c * 8 : g;
        cp_async16(tile + wtile_offset<ROWS>(r, c), src, ok ? 16 : 0);
    }
}

// A shared-memory matrix descriptor: start address, leading byte offset, stride byte offset 1024 (8 rows of 128 bytes),
// swizzle mode 1 (128 bytes); the 4 low bits of each field are dropped.
__device__ __forceinline__ unsigned long long wg_desc(unsigned addr, unsigned leadingBytes)
{
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)((leadingBytes >> 4) & 0x3FFFu) << 16)
         | ((unsigned long long)(1024u >> 4) << 32) | (1ull << 62);
}

// K-major operand: the tile's rows are the M (or N) rows, its columns the contraction; k-step kk = columns 16kk..16kk+15
// (32 bytes into a 128-byte row, the next column block every 4 steps). The leading offset is unused in this mode (1).
template <int ROWS>
__device__ __forceinline__ unsigned long long desc_k(unsigned tile, int kk)
{
    return wg_desc(tile + (unsigned)((kk >> 2) * ROWS * 128 + (kk & 3) * 32), 16u);
}

// N-major operand (B transposed): the tile's rows are the contraction, its HEAD_DIM columns the N; k-step kk = rows
// 16kk..16kk+15 (two 8-row groups, 1024 bytes apart); the leading offset steps over the 64-column blocks.
template <int ROWS>
__device__ __forceinline__ unsigned long long desc_n(unsigned tile, int kk)
{
    return wg_desc(tile + (unsigned)(kk * 2048), (unsigned)(ROWS * 128));
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }
// Shared memory written by cp.async (the generic proxy) and read next by wgmma (the async proxy): each writing thread
// fences after its copies complete and before the barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins accumulators after a wait: nothing reads them between the asynchronous product and its completion.
template <int N>
__device__ __forceinline__ void wg_hold(float (&d)[N][4])
{
#pragma unroll
    for (int j = 0; j < N; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) asm volatile("" : "+f"(d[j][i]) :: "memory");
}

// D[64 x 64] += A[64 x 16] · B[16 x 64], A and B from shared memory (descriptors), both K-major.
__device__ __forceinline__ void wg_ss_n64(float (&d)[8][4], unsigned long long da, unsigned long long db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." WG_T "." WG_T " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db), "r"(1));
}

// D[64 x 64] += A[64 x 16] · B[16 x 64], A from registers (the m16n8k16 A fragment of each warp's 16 rows), B from
// shared memory; TB = 1: B is N-major (transposed), 0: K-major.
template <int TB>
__device__ __forceinline__ void wg_rs_n64(float (&d)[8][4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned long long db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." WG_T "." WG_T " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(1), "n"(TB));
}

// D[64 x 128] += A[64 x 16] · B[16 x 128], A from registers (the m16n8k16 A fragment of each warp's 16 rows), B from
// shared memory; TB = 1: B is N-major (transposed), 0: K-major.
template <int TB>
__device__ __forceinline__ void wg_rs_n128(float (&d)[16][4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned long long db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." WG_T "." WG_T " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(1), "n"(TB));
}

// Products whose N is HEAD_DIM (the backward's dV, dK, dQ; the forward's P V).
template <int TB>
__device__ __forceinline__ void wg_rs_nd(float (&d)[DTILES][4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned long long db)
{
#if HEAD_DIM == 128
    wg_rs_n128<TB>(d, a0, a1, a2, a3, db);
#else
    wg_rs_n64<TB>(d, a0, a1, a2, a3, db);
#endif
}
