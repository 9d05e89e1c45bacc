// Attend: the element-wise passes around the CUDA linear-attention kernels (linear_chunk.cu, linear_recurrent.cu), so a
// call with a feature map or the denominator normalisation runs on the GPU as the CPU engine defines it:
//   attend_linear_feature_map   y = φ(x) for the element-wise maps (1: elu(x) + 1 = e^{min(x,0)} + max(x,0); 2: ReLU)
//   attend_linear_unit_column   x[r, c] = 1 for c = 0, else 0 (the value column whose read-out is the denominator)
//   attend_linear_normalise     o[r, :] /= den[r, 0] + ε (den: the read-out of that column, scale included)
//   attend_linear_state_split   the augmented state [rows, dv + 1] (z last, the CPU's layout) → [rows, dv] and z in column 0 of [rows, zc]
//   attend_linear_state_join    the reverse, for the final state
// All grid-stride loops over 64-bit element counts. Defines: ELEM_BF16 (1 bf16, 0 fp16). No headers: NVRTC needs none.

typedef unsigned short elem_t;

__device__ __forceinline__ float to_f(elem_t x)
{
#if ELEM_BF16
    return __uint_as_float((unsigned)x << 16);
#else
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(x));
    return f;
#endif
}

__device__ __forceinline__ elem_t from_f(float f)
{
    elem_t r;
#if ELEM_BF16
    asm("{ cvt.rn.bf16.f32 %0, %1; }" : "=h"(r) : "f"(f));
#else
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(r) : "f"(f));
#endif
    return r;
}

extern "C" __global__ void attend_linear_feature_map(const elem_t* __restrict__ x, elem_t* __restrict__ y, long long n, int map)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    {
        const float v = to_f(x[i]);
        y[i] = from_f(map == 1 ? (v > 0.f ? v + 1.f : expf(v)) : fmaxf(v, 0.f));
    }
}

extern "C" __global__ void attend_linear_unit_column(elem_t* __restrict__ x, long long rows, int cols)
{
    const long long n = rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = from_f(i % cols == 0 ? 1.f : 0.f);
}

extern "C" __global__ void attend_linear_normalise(elem_t* __restrict__ o, const elem_t* __restrict__ den, long long rows, int dv, int denCols, float eps)
{
    const long long n = rows * dv;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    {
        const long long r = i / dv;
        o[i] = from_f(to_f(o[i]) / (to_f(den[r * denCols]) + eps));
    }
}

extern "C" __global__ void attend_linear_state_split(const float* __restrict__ s, float* __restrict__ main, float* __restrict__ z,
                                                     long long rows, int dv, int zc)
{
    const long long n = rows * (dv + 1);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    {
        const long long r = i / (dv + 1);
        const int c = (int)(i - r * (dv + 1));
        if (c < dv) main[r * dv + c] = s[i];
        else
        {
            z[r * zc] = s[i];
            for (int j = 1; j < zc; j++) z[r * zc + j] = 0.f;
        }
    }
}

extern "C" __global__ void attend_linear_state_join(const float* __restrict__ main, const float* __restrict__ z, float* __restrict__ s,
                                                    long long rows, int dv, int zc)
{
    const long long n = rows * (dv + 1);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    {
        const long long r = i / (dv + 1);
        const int c = (int)(i - r * (dv + 1));
        s[i] = c < dv ? main[r * dv + c] : z[r * zc];
    }
}
