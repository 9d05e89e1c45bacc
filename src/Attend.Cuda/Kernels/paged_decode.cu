// Attend: decode (one query token per sequence) against a paged KV cache, split-KV ("flash-decoding") + LSE merge.
//
// The cache is FlashInfer's paged layout: K and V pages [pageCount, PAGE_SIZE, kvHeads, HEAD_DIM]; sequence b owns
// pages pageIndices[pageIndptr[b] .. pageIndptr[b+1]), its last page holding lastPageLength[b] tokens.
// Kernel 1 (attend_decode_split): one CTA per (sequence, KV head, split of splitKeys keys); all GROUP query heads of
// the KV head are processed together so each key and value is read once from device memory. The split's keys stream
// through shared memory in stages of STAGE_KEYS keys (K and V rows, 16-byte cp.async, STAGES deep), so the bytes in
// flight no longer depend on how many registers the arithmetic needs; the page number of each key is fetched one stage
// ahead. Compute: 8 lanes per key (16-byte shared-memory reads, a whole 128-byte run per lane group), each lane group
// scores KC = 4 keys for all its heads, then one max and one rescale per head for the 4 (the rescale is skipped when no
// head's max moved), then accumulates the 4 values. With more than 4 heads per KV head the CTA's warps split the heads
// in two halves (registers: q and the accumulators of 4 heads per lane). The lane groups and warps are merged at the end
// and the split writes its normalised partial output and base-2 LSE.
// Kernel 2 (attend_decode_merge): per (sequence, query head), the LSE merge of the splits; output in the input type,
// LSE in natural log; a sequence with no keys gives 0 and −∞.
//
// Defines: HEAD_DIM (64 | 128), GROUP (query heads per KV head, 1..8), PAGE_SIZE, ELEM_BF16.

#define NEG_INF __int_as_float(0xff800000)
#define NWARPS 4
#define NT (NWARPS * 32)
#define DC (HEAD_DIM / 8)                       // 16-byte chunks per row
#define EL (HEAD_DIM / 8)                       // elements per lane (8 lanes per row)
#define STAGE_KEYS 64                           // keys per pipeline stage
#ifndef STAGES
#define STAGES (HEAD_DIM == 128 ? 3 : 4)        // 96 KB (D = 128) or 64 KB (D = 64) of shared memory: 2 CTAs per SM
#endif
#define HSPLIT (GROUP > 4 ? 2 : 1)              // warps split the heads in this many parts
#define GH ((GROUP + HSPLIT - 1) / HSPLIT)      // heads per warp
#define KW (NWARPS / HSPLIT)                    // warps sharing one part of the heads
#define KPG (STAGE_KEYS / (KW * 4))             // keys per lane group per stage (4 or 8)
#define KC 4                                    // keys scored before one rescale
#define RPP (NT / DC)                           // rows one pass of the loader covers
#define PASSES (STAGE_KEYS / RPP)

typedef unsigned short elem_t;

#include "mma_tiles.cuh"

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

__device__ __forceinline__ void unpack8(uint4 u, float* out)
{
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
#if ELEM_BF16
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
#else
        out[2 * i] = to_float((elem_t)(w[i] & 0xffffu));
        out[2 * i + 1] = to_float((elem_t)(w[i] >> 16));
#endif
    }
}

// This lane's EL elements of a row (global or generic pointer): chunks sub, sub + 8, ... (dims (c*8 + sub)*8 + i), so
// the 8 lanes of a group read one contiguous 128-byte run per instruction.
__device__ __forceinline__ void load_lane(const elem_t* row, int sub, float* out)
{
#pragma unroll
    for (int c = 0; c < EL / 8; c++) unpack8(*(const uint4*)(row + (c * 8 + sub) * 8), out + c * 8);
}

__device__ __forceinline__ void load_lane_smem(unsigned rowAddr, int sub, float* out)
{
#pragma unroll
    for (int c = 0; c < EL / 8; c++)
    {
        uint4 u;
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w) : "r"(rowAddr + (c * 8 + sub) * 16));
        unpack8(u, out + c * 8);
    }
}

extern "C" __global__ void __launch_bounds__(NT, 2)
attend_decode_split(
    const elem_t* __restrict__ Q,            // [B, H, D] (the single query token)
    const elem_t* __restrict__ KPages, const elem_t* __restrict__ VPages,
    const int* __restrict__ pageIndptr, const int* __restrict__ pageIndices, const int* __restrict__ lastPageLength,
    float* __restrict__ partialO,            // [splits, B, H, D]
    float* __restrict__ partialLse,          // [splits, B, H], base 2
    int batch, int heads, int kvHeads, float scaleLog2, int splitKeys)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int b = blockIdx.x, hk = blockIdx.y, split = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int grp = lane >> 3, sub = lane & 7;           // 4 lane groups of 8 lanes per warp
    const int hs = warp / KW, kw = warp % KW;            // which part of the heads, which key slice
    const int pageBegin = pageIndptr[b], pages = pageIndptr[b + 1] - pageBegin;
    const int length = pages == 0 ? 0 : (pages - 1) * PAGE_SIZE + lastPageLength[b];
    const int kBegin = split * splitKeys, kEnd = min(length, kBegin + splitKeys);
    const int nStages = kEnd > kBegin ? (kEnd - kBegin + STAGE_KEYS - 1) / STAGE_KEYS : 0;
    const int h0 = hk * GROUP + hs * GH;                 // this warp's first head

    float q[GH][EL];
#pragma unroll
    for (int g = 0; g < GH; g++)
    {
        if (hs * GH + g < GROUP) load_lane(Q + ((long long)b * heads + h0 + g) * HEAD_DIM, sub, q[g]);
        else
        {
#pragma unroll
            for (int i = 0; i < EL; i++) q[g][i] = 0.f;
        }
    }
    float m[GH], l[GH], acc[GH][EL];
#pragma unroll
    for (int g = 0; g < GH; g++)
    {
        m[g] = NEG_INF;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < EL; i++) acc[g][i] = 0.f;
    }

    // Loader: thread tid copies chunk (tid % DC) of rows tid / DC + p * RPP of each stage, K and V.
    const unsigned sBase = smem_addr(smem);
    const unsigned stageBytes = STAGE_KEYS * HEAD_DIM * 2 * 2;   // K rows then V rows
    const long long tokenStride = (long long)kvHeads * HEAD_DIM;
    const int lc = tid % DC, lr = tid / DC;
    int pg[PASSES];
    auto fetchPages = [&](int st) {
#pragma unroll
        for (int p = 0; p < PASSES; p++)
        {
            const int j = kBegin + st * STAGE_KEYS + lr + p * RPP;
            pg[p] = j < kEnd ? pageIndices[pageBegin + j / PAGE_SIZE] : 0;
        }
    };
    auto issue = [&](int st) {
        const unsigned sK = sBase + (st % STAGES) * stageBytes, sV = sK + STAGE_KEYS * HEAD_DIM * 2;
#pragma unroll
        for (int p = 0; p < PASSES; p++)
        {
            const int r = lr + p * RPP, j = kBegin + st * STAGE_KEYS + r;
            const bool ok = j < kEnd;
            const long long at = ((long long)pg[p] * PAGE_SIZE + (ok ? j % PAGE_SIZE : 0)) * tokenStride + (long long)hk * HEAD_DIM + lc * 8;
            const unsigned off = (unsigned)(r * HEAD_DIM + lc * 8) * 2;
            cp_async16(sK + off, KPages + (ok ? at : 0), ok ? 16 : 0);   // rows past the end are zero-filled
            cp_async16(sV + off, VPages + (ok ? at : 0), ok ? 16 : 0);
        }
    };

    fetchPages(0);
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++)
    {
        if (st < nStages)
        {
            issue(st);
            fetchPages(st + 1);
        }
        cp_async_commit();
    }

    for (int st = 0; st < nStages; st++)
    {
        cp_async_wait<STAGES - 2>();
        __syncthreads();   // stage st is in shared memory for everyone, and everyone is done with stage st - 1
        const int ns = st + STAGES - 1;
        if (ns < nStages)
        {
            issue(ns);      // into the buffer of stage st - 1
            fetchPages(ns + 1);
        }
        cp_async_commit();

        const unsigned sK = sBase + (st % STAGES) * stageBytes, sV = sK + STAGE_KEYS * HEAD_DIM * 2;
        const int kStage = kBegin + st * STAGE_KEYS;
#pragma unroll
        for (int u0 = 0; u0 < KPG; u0 += KC)
        {
            float s[KC][GH];
#pragma unroll
            for (int u = 0; u < KC; u++)
            {
                const int r = (kw * 4 + grp) * KPG + u0 + u;
                float kr[EL];
                load_lane_smem(sK + r * HEAD_DIM * 2, sub, kr);
                const bool valid = kStage + r < kEnd;
#pragma unroll
                for (int g = 0; g < GH; g++)
                {
                    float d = 0.f;
#pragma unroll
                    for (int i = 0; i < EL; i++) d = fmaf(q[g][i], kr[i], d);
                    d += __shfl_xor_sync(0xffffffffu, d, 1);
                    d += __shfl_xor_sync(0xffffffffu, d, 2);
                    d += __shfl_xor_sync(0xffffffffu, d, 4);
                    s[u][g] = valid ? d * scaleLog2 : NEG_INF;
                }
            }
            // One max and one rescale per head for the KC keys; s becomes p.
            float corr[GH];
            bool moved = false;
#pragma unroll
            for (int g = 0; g < GH; g++)
            {
                float mx = m[g];
#pragma unroll
                for (int u = 0; u < KC; u++) mx = fmaxf(mx, s[u][g]);
                const float base = mx == NEG_INF ? 0.f : mx;
                corr[g] = fast_exp2(m[g] - base);
                moved |= mx != m[g];
                m[g] = mx;
                float sum = 0.f;
#pragma unroll
                for (int u = 0; u < KC; u++)
                {
                    s[u][g] = fast_exp2(s[u][g] - base);
                    sum += s[u][g];
                }
                l[g] = l[g] * corr[g] + sum;
            }
            if (__any_sync(0xffffffffu, moved))
            {
#pragma unroll
                for (int g = 0; g < GH; g++)
#pragma unroll
                    for (int i = 0; i < EL; i++) acc[g][i] *= corr[g];
            }
#pragma unroll
            for (int u = 0; u < KC; u++)
            {
                const int r = (kw * 4 + grp) * KPG + u0 + u;
                float vr[EL];
                load_lane_smem(sV + r * HEAD_DIM * 2, sub, vr);
#pragma unroll
                for (int g = 0; g < GH; g++)
#pragma unroll
                    for (int i = 0; i < EL; i++) acc[g][i] = fmaf(s[u][g], vr[i], acc[g][i]);
            }
        }
    }
    cp_async_wait<0>();

    // Merge the 4 lane groups of the warp (lanes with the same `sub` hold the same dims).
#pragma unroll
    for (int off = 8; off <= 16; off <<= 1)
    {
#pragma unroll
        for (int g = 0; g < GH; g++)
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

    // Merge the KW warps of each head part through shared memory (the stage buffers are free now).
    __syncthreads();
    float* sAcc = (float*)smem;                          // [NWARPS][GH][HEAD_DIM]
    float* sM = sAcc + NWARPS * GH * HEAD_DIM;           // [NWARPS][GH]
    float* sL = sM + NWARPS * GH;
    if (grp == 0)
    {
#pragma unroll
        for (int g = 0; g < GH; g++)
        {
            if (sub == 0) { sM[warp * GH + g] = m[g]; sL[warp * GH + g] = l[g]; }
#pragma unroll
            for (int c = 0; c < EL / 8; c++)
#pragma unroll
                for (int i = 0; i < 8; i++) sAcc[(warp * GH + g) * HEAD_DIM + (c * 8 + sub) * 8 + i] = acc[g][c * 8 + i];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < HSPLIT * GH * HEAD_DIM; idx += NT)
    {
        const int part = idx / (GH * HEAD_DIM), g = (idx / HEAD_DIM) % GH, d = idx % HEAD_DIM;
        if (part * GH + g >= GROUP) continue;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < KW; w++) mx = fmaxf(mx, sM[(part * KW + w) * GH + g]);
        const float base = mx == NEG_INF ? 0.f : mx;
        float lsum = 0.f, o = 0.f;
#pragma unroll
        for (int w = 0; w < KW; w++)
        {
            const int at = (part * KW + w) * GH + g;
            const float c = fast_exp2(sM[at] - base);
            lsum += sL[at] * c;
            o += sAcc[at * HEAD_DIM + d] * c;
        }
        const long long row = ((long long)split * batch + b) * heads + hk * GROUP + part * GH + g;
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
