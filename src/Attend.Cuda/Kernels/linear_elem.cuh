// Element helpers shared by the linear-family kernels (linear_chunk.cu, linear_chunk_bwd.cu, linear_delta_chunk.cu,
// linear_delta_bwd.cu): the float of the low and high 16-bit element of a packed pair (bf16 or fp16, by ELEM_BF16),
// and e^x on the fast exp2 of mma_tiles.cuh. Pulled in textually by KernelCompiler.Source after mma_tiles.cuh.

__device__ __forceinline__ float elem_lo(unsigned x)
{
#if ELEM_BF16
    return __uint_as_float(x << 16);
#else
    float f;
    asm("{.reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l;}" : "=f"(f) : "r"(x));
    return f;
#endif
}

__device__ __forceinline__ float elem_hi(unsigned x)
{
#if ELEM_BF16
    return __uint_as_float(x & 0xffff0000u);
#else
    float f;
    asm("{.reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h;}" : "=f"(f) : "r"(x));
    return f;
#endif
}

__device__ __forceinline__ float exp_e(float x) { return fast_exp2(x * 1.4426950408889634f); }
