// Attend: the recurrent (step) form of linear attention with the additive update: one token at a time,
//
//   S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t,
//
// the state in float32 registers for the whole sequence (decode: T = 1 per sequence, the state read and written once).
// A CTA owns one (sequence, query head, 32 value columns): lane = column, warp w = key rows w, w + 8, ...; per token
// each thread updates its DK/8 state entries and adds q_k S_kj to its column's partial dot product, and the eight
// warps' partials are summed through shared memory. Decay (GATE) as in linear_chunk.cu: 0 none, 1 a scalar per token
// and head (a per-head constant or a [tokens, H] gate), 2 a gate per token, head and key channel.
//
// Defines: DK (any multiple of 8 up to 256), ELEM_BF16 (1 bf16, 0 fp16), GATE (0 | 1 | 2).

#ifndef DK
#error "DK must be defined"
#endif

#define RW 8              // warps per CTA
#define RROWS (DK / RW)   // state rows per thread

typedef unsigned short elem_t;

__device__ __forceinline__ float to_float(elem_t x)
{
#if ELEM_BF16
    return __uint_as_float(((unsigned)x) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#endif
}

__device__ __forceinline__ elem_t to_elem(float x)
{
    elem_t r;
#if ELEM_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
#endif
    return r;
}

__device__ __forceinline__ float exp_e(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
    return y;
}

struct LinSeq { int tokStart, len; };

extern "C" __global__ void __launch_bounds__(RW * 32)
attend_linear_recurrent(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, elem_t* __restrict__ O,
    const float* __restrict__ gate, const float* __restrict__ headLogDecay,
    const float* S0, float* ST,  // may be one buffer (decode updates the state in place): not __restrict__
    const LinSeq* __restrict__ seqs, int heads, int kvHeads, int dv, float scale)
{
    __shared__ float red[RW][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + lane;
    const int h = blockIdx.y, n = blockIdx.z;
    const LinSeq sq = seqs[n];
    const int hk = h / (heads / kvHeads);
    const bool live = col < dv;
    const long long stateBase = ((long long)n * heads + h) * DK;

    float s[RROWS];
#pragma unroll
    for (int r = 0; r < RROWS; r++)
        s[r] = (S0 != 0 && live) ? S0[(stateBase + warp + RW * r) * dv + col] : 0.f;

    for (int i = 0; i < sq.len; i++)
    {
        const long long tok = sq.tokStart + i;
        const elem_t* q = Q + (tok * heads + h) * DK;
        const elem_t* k = K + (tok * kvHeads + hk) * DK;
        const float v = live ? to_float(V[(tok * kvHeads + hk) * dv + col]) : 0.f;
#if GATE == 1
        const float a = exp_e(headLogDecay != 0 ? headLogDecay[h] : gate[tok * heads + h]);
#endif
        float acc = 0.f;
#pragma unroll
        for (int r = 0; r < RROWS; r++)
        {
            const int row = warp + RW * r;
#if GATE == 0
            float x = s[r];
#elif GATE == 1
            float x = s[r] * a;
#else
            float x = s[r] * exp_e(gate[(tok * heads + h) * DK + row]);
#endif
            x = fmaf(to_float(k[row]), v, x);
            s[r] = x;
            acc = fmaf(to_float(q[row]), x, acc);
        }
        red[warp][lane] = acc;
        __syncthreads();
        if (warp == 0)
        {
            float o = 0.f;
#pragma unroll
            for (int w = 0; w < RW; w++) o += red[w][lane];
            if (live) O[(tok * heads + h) * dv + col] = to_elem(o * scale);
        }
        __syncthreads();
    }
    if (ST != 0 && live)
    {
#pragma unroll
        for (int r = 0; r < RROWS; r++) ST[(stateBase + warp + RW * r) * dv + col] = s[r];
    }
#if GATE == 0
    (void)gate;
    (void)headLogDecay;
#endif
}
