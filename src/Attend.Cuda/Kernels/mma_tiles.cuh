// Shared device helpers of the mma.sync kernels (flash_forward.cu, flash_backward_mma.cu): shared-memory addresses,
// cp.async, ldmatrix, the m16n8k16 product, bf16/fp16 packing, exp2, the swizzled [rows][HEAD_DIM] tile layout and
// its loader. Pulled in textually by KernelCompiler.Source at the include line that names this file, after the including
// kernel has defined HEAD_DIM, DC (16-byte chunks per row), NT (threads per CTA), elem_t and the element-type macros.
__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// MMA_ASM is `asm volatile` unless the including kernel defines MMA_NOVOLATILE 1: the product is a pure function of
// its registers, so without `volatile` the compiler may interleave it with the surrounding shared-memory loads and
// softmax arithmetic (ldmatrix and cp.async stay volatile: they touch shared memory, which the asm does not declare).
#if defined(MMA_NOVOLATILE) && MMA_NOVOLATILE
#define MMA_ASM asm
#else
#define MMA_ASM asm volatile
#endif
__device__ __forceinline__ void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
#if ELEM_BF16
    MMA_ASM("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    MMA_ASM("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Two floats to one register of two 16-bit elements: lo in bits 0..15, hi in 16..31.
__device__ __forceinline__ unsigned pack2(float lo, float hi)
{
    unsigned r;
#if ELEM_BF16
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][HEAD_DIM] tile, XOR-swizzled so that the 8 rows an
// ldmatrix reads at one logical chunk fall in 8 different bank groups.
__device__ __forceinline__ unsigned tile_offset(int row, int chunk)
{
    return (unsigned)((row * HEAD_DIM + ((chunk ^ (row & 7)) << 3)) * 2);
}

// Copies `rows` rows (global row stride `stride` elements) into a swizzled tile; rows past `valid` are zero-filled.
template <int ROWS>
__device__ __forceinline__ void load_tile(unsigned tile, const elem_t* g, long long stride, int valid, int tid)
{
#pragma unroll
    for (int i = 0; i < ROWS * DC / NT; i++)
    {
        int idx = tid + i * NT;
        int r = idx / DC, c = idx % DC;
        bool ok = r < valid;
        const elem_t* src = ok ? g + (long long)r * stride + c * 8 : g;
        cp_async16(tile + tile_offset(r, c), src, ok ? 16 : 0);
    }
}
