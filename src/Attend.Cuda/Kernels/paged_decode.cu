// Attend: decode (one query token per sequence) against a paged KV cache, split-KV ("flash-decoding") + LSE merge.
//
// The cache is FlashInfer's paged layout: K and V pages [pageCount, PAGE_SIZE, kvHeads, HEAD_DIM]; sequence b owns
// pages pageIndices[pageIndptr[b] .. pageIndptr[b+1]), its last page holding lastPageLength[b] tokens.
// Kernel 1 (attend_decode_split): one CTA per (sequence, KV head, split of splitKeys keys); all GROUP query heads of
// the KV head are processed together so each key and value is read once. Each warp holds 4 keys at a time, 8 lanes per
// key, HEAD_DIM/8 elements per lane (one or two 16-byte loads); online softmax per (lane group, head) in base 2; the
// 16 lane groups of the CTA are merged at the end and the split writes its normalised partial output and base-2 LSE.
// Kernel 2 (attend_decode_merge): per (sequence, query head), the LSE merge of the splits; output in the input type,
// LSE in natural log; a sequence with no keys gives 0 and −∞.
//
// Defines: HEAD_DIM (64 | 128), GROUP (query heads per KV head, 1..8), PAGE_SIZE, ELEM_BF16, UNROLL (keys in
// flight per lane group).

#define NEG_INF __int_as_float(0xff800000)
#define EL (HEAD_DIM / 8)        // elements per lane
#define NWARPS 4
#ifndef UNROLL
#define UNROLL 2
#endif

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

__device__ __forceinline__ elem_t from_float(float f)
{
    unsigned short r;
#if ELEM_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
#endif
    return r;
}

__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Loads EL consecutive elements (16-byte aligned) as floats.
__device__ __forceinline__ void load_row(const elem_t* p, float* out)
{
#pragma unroll
    for (int c = 0; c < EL / 8; c++)
    {
        uint4 u = *(const uint4*)(p + c * 8);
        unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++)
        {
            out[c * 8 + 2 * i] = to_float((elem_t)(w[i] & 0xffffu));
            out[c * 8 + 2 * i + 1] = to_float((elem_t)(w[i] >> 16));
        }
    }
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
attend_decode_split(
    const elem_t* __restrict__ Q,            // [B, H, D] (the single query token)
    const elem_t* __restrict__ KPages, const elem_t* __restrict__ VPages,
    const int* __restrict__ pageIndptr, const int* __restrict__ pageIndices, const int* __restrict__ lastPageLength,
    float* __restrict__ partialO,            // [splits, B, H, D]
    float* __restrict__ partialLse,          // [splits, B, H], base 2
    int batch, int heads, int kvHeads, float scaleLog2, int splitKeys)
{
    const int b = blockIdx.x, hk = blockIdx.y, split = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = lane >> 3, sub = lane & 7;         // 4 key groups of 8 lanes per warp
    const int pageBegin = pageIndptr[b], pages = pageIndptr[b + 1] - pageBegin;
    const int length = pages == 0 ? 0 : (pages - 1) * PAGE_SIZE + lastPageLength[b];
    const int kBegin = split * splitKeys, kEnd = min(length, kBegin + splitKeys);
    const int h0 = hk * GROUP;

    float q[GROUP][EL];
#pragma unroll
    for (int g = 0; g < GROUP; g++) load_row(Q + ((long long)b * heads + h0 + g) * HEAD_DIM + sub * EL, q[g]);

    float m[GROUP], l[GROUP], acc[GROUP][EL];
#pragma unroll
    for (int g = 0; g < GROUP; g++)
    {
        m[g] = NEG_INF;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < EL; i++) acc[g][i] = 0.f;
    }

    const long long tokenStride = (long long)kvHeads * HEAD_DIM;
    // The loop bound is uniform across the warp (the shuffles need every lane); lanes past the end use a zero key and
    // skip the update. UNROLL keys per lane group are loaded (K and V) before any is used, so enough bytes are in
    // flight to cover the memory latency.
    for (int first = kBegin + warp * 4; first < kEnd; first += NWARPS * 4 * UNROLL)
    {
        float kr[UNROLL][EL], vr[UNROLL][EL];
        bool valid[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
        {
            const int j = first + u * NWARPS * 4 + group;
            valid[u] = j < kEnd;
            if (valid[u])
            {
                const int page = pageIndices[pageBegin + j / PAGE_SIZE];
                const long long at = ((long long)page * PAGE_SIZE + j % PAGE_SIZE) * tokenStride + (long long)hk * HEAD_DIM + sub * EL;
                load_row(KPages + at, kr[u]);
                load_row(VPages + at, vr[u]);
            }
            else
            {
#pragma unroll
                for (int i = 0; i < EL; i++) kr[u][i] = vr[u][i] = 0.f;
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
        {
            float s[GROUP];
#pragma unroll
            for (int g = 0; g < GROUP; g++)
            {
                float d = 0.f;
#pragma unroll
                for (int i = 0; i < EL; i++) d = fmaf(q[g][i], kr[u][i], d);
                d += __shfl_xor_sync(0xffffffffu, d, 1);
                d += __shfl_xor_sync(0xffffffffu, d, 2);
                d += __shfl_xor_sync(0xffffffffu, d, 4);
                s[g] = d * scaleLog2;
            }
            if (valid[u])
            {
#pragma unroll
                for (int g = 0; g < GROUP; g++)
                {
                    const float mn = fmaxf(m[g], s[g]);
                    const float corr = fast_exp2(m[g] - mn);
                    const float p = fast_exp2(s[g] - mn);
                    m[g] = mn;
                    l[g] = l[g] * corr + p;
#pragma unroll
                    for (int i = 0; i < EL; i++) acc[g][i] = fmaf(acc[g][i], corr, p * vr[u][i]);
                }
            }
        }
    }

    // Merge the 4 key groups of the warp (lanes with the same `sub` hold the same dims).
#pragma unroll
    for (int off = 8; off <= 16; off <<= 1)
    {
#pragma unroll
        for (int g = 0; g < GROUP; g++)
        {
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], off);
            const float lo = __shfl_xor_sync(0xffffffffu, l[g], off);
            const float mn = fmaxf(m[g], mo);
            const float base = mn == NEG_INF ? 0.f : mn;
            const float ca = fast_exp2(m[g] - base), cb = fast_exp2(mo - base);
            l[g] = l[g] * ca + lo * cb;
#pragma unroll
            for (int i = 0; i < EL; i++)
            {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], off);
                acc[g][i] = acc[g][i] * ca + ao * cb;
            }
            m[g] = mn;
        }
    }

    // Merge the warps through shared memory: warp w's group 0 lanes (0..7) hold its state.
    __shared__ float sM[NWARPS][GROUP], sL[NWARPS][GROUP];
    __shared__ float sAcc[NWARPS][GROUP][HEAD_DIM];
    if (group == 0)
    {
#pragma unroll
        for (int g = 0; g < GROUP; g++)
        {
            if (sub == 0) { sM[warp][g] = m[g]; sL[warp][g] = l[g]; }
#pragma unroll
            for (int i = 0; i < EL; i++) sAcc[warp][g][sub * EL + i] = acc[g][i];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < GROUP * HEAD_DIM; idx += NWARPS * 32)
    {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < NWARPS; w++) mx = fmaxf(mx, sM[w][g]);
        const float base = mx == NEG_INF ? 0.f : mx;
        float lsum = 0.f, o = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; w++)
        {
            const float c = fast_exp2(sM[w][g] - base);
            lsum += sL[w][g] * c;
            o += sAcc[w][g][d] * c;
        }
        const long long row = ((long long)split * batch + b) * heads + h0 + g;
        partialO[row * HEAD_DIM + d] = lsum > 0.f ? o / lsum : 0.f;
        if (d == 0) partialLse[row] = lsum > 0.f ? base + __log2f(lsum) : NEG_INF;
    }
}

extern "C" __global__ void attend_decode_merge(
    const float* __restrict__ partialO, const float* __restrict__ partialLse, int splits, int batch, int heads,
    elem_t* __restrict__ O, float* __restrict__ Lse)
{
    const int bh = blockIdx.x;       // b * heads + h
    const int d = threadIdx.x;       // HEAD_DIM threads
    float mx = NEG_INF;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, partialLse[(long long)s * batch * heads + bh]);
    const float base = mx == NEG_INF ? 0.f : mx;
    float wsum = 0.f, o = 0.f;
    for (int s = 0; s < splits; s++)
    {
        const float w = fast_exp2(partialLse[(long long)s * batch * heads + bh] - base);
        wsum += w;
        o += w * partialO[((long long)s * batch * heads + bh) * HEAD_DIM + d];
    }
    O[(long long)bh * HEAD_DIM + d] = from_float(wsum > 0.f ? o / wsum : 0.f);
    if (d == 0 && Lse != 0) Lse[bh] = wsum > 0.f ? (base + __log2f(wsum)) * 0.6931471805599453f : NEG_INF;
}
