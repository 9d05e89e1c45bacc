// Attend: attention backward (dQ, dK, dV) on CUDA cores, float32 arithmetic, deterministic (no atomics).
//
// From the forward's output O and natural-log LSE (FlashAttention-2's recomputation: scores are rebuilt, never stored):
//   P = exp(mod(scale·QKᵀ) − LSE), dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − Δ) ⊙ mod′ · scale, dK = dSᵀ Q, dQ = dS K,
// with Δ = rowsum(dO ⊙ O). Three kernels: Δ; dK/dV with one CTA per (key block, KV head, sequence) that loops over the
// query heads of its group and the query blocks the block mask lists for the key block (so grouped-query gradients sum
// inside the CTA, in a fixed order); dQ with one CTA per (32 query rows, head, sequence) looping over the forward's key
// blocks. Mask bits and block lists are the forward plan's (FlashBlockPlan, 128 x 64 blocks).
// This is the correct, simple version: CUDA cores, shared-memory tiles of float32, no tensor cores yet.
//
// Defines: HEAD_DIM (64 | 128 | 256), ELEM_BF16, SOFTCAP, ALIBI.

#define NEG_INF __int_as_float(0xff800000)
#define QB 128            // forward query block (rows per mask-bit block)
#define KB 64             // key block
#define RC 32             // query rows per chunk
#define NT 256
#define DP (HEAD_DIM + 1) // padded row (conflict-free column walks)

typedef unsigned short elem_t;

struct SeqInfo { int batch, qStart, qLen, kStart, kLen; };

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

extern "C" __global__ void attend_bwd_delta(const elem_t* __restrict__ O, const elem_t* __restrict__ dO, float* __restrict__ delta,
    int batch, int tokens, int heads)
{
    // One warp per (b, t, h) row; delta is [B, H, T].
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= (long long)batch * tokens * heads) return;
    const elem_t* o = O + row * HEAD_DIM;
    const elem_t* g = dO + row * HEAD_DIM;
    float s = 0.f;
    for (int d = lane; d < HEAD_DIM; d += 32) s += to_float(o[d]) * to_float(g[d]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0)
    {
        const int h = (int)(row % heads), t = (int)((row / heads) % tokens), b = (int)(row / ((long long)heads * tokens));
        delta[((long long)b * heads + h) * tokens + t] = s;
    }
}

// P and dS of one (32-row chunk, 64-key block) tile into sP/sDS; rows/keys outside the sequence or the mask give 0.
__device__ __forceinline__ void tile_p_ds(const float* sQ, const float* sdO, const float* sK, const float* sV,
    const float* sLse, const float* sDelta, float* sP, float* sDS, const unsigned long long* __restrict__ bits, int partial,
    int rowInBlock0, int qRow0, int qLen, int kPos0, int kLen, int shift, float scale, float softcap, float slope)
{
    const int tid = threadIdx.x;
    const int c = tid % KB;
#pragma unroll
    for (int i = 0; i < RC / (NT / KB); i++)
    {
        const int r = tid / KB + i * (NT / KB);
        const int qRow = qRow0 + r;
        float p = 0.f, ds = 0.f;
        bool visible = qRow < qLen && kPos0 + c < kLen && sLse[r] != NEG_INF;
        if (visible && partial >= 0) visible = ((bits[(long long)partial * QB + rowInBlock0 + r] >> c) & 1ull) != 0ull;
        if (visible)
        {
            float s = 0.f, dp = 0.f;
#pragma unroll 8
            for (int d = 0; d < HEAD_DIM; d++)
            {
                s = fmaf(sQ[r * DP + d], sK[c * DP + d], s);
                dp = fmaf(sdO[r * DP + d], sV[c * DP + d], dp);
            }
            float x = s * scale, dmod = 1.f;
#if SOFTCAP
            const float th = tanhf(x / softcap);
            x = softcap * th;
            dmod = 1.f - th * th;
#endif
#if ALIBI
            const int dist = qRow + shift - (kPos0 + c);
            x -= slope * (float)(dist < 0 ? -dist : dist);
#endif
            p = __expf(x - sLse[r]);
            ds = p * (dp - sDelta[r]) * dmod * scale;
        }
        sP[r * (KB + 1) + c] = p;
        sDS[r * (KB + 1) + c] = ds;
    }
    (void)shift; (void)softcap; (void)slope;
}

// Loads `rows` rows of a [tokens, heads, D] slice into a padded float tile (zeros past `valid`).
__device__ __forceinline__ void load_rows(float* tile, const elem_t* g, long long stride, int rows, int valid)
{
    for (int idx = threadIdx.x; idx < rows * HEAD_DIM; idx += NT)
    {
        const int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
        tile[r * DP + d] = r < valid ? to_float(g[(long long)r * stride + d]) : 0.f;
    }
}

extern "C" __global__ void __launch_bounds__(NT)
attend_bwd_dkdv(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ Lse, const float* __restrict__ Delta,
    elem_t* __restrict__ dK, elem_t* __restrict__ dV,
    const SeqInfo* __restrict__ seqs,
    const int* __restrict__ colPtr,              // [(entry * maskHeads + head) * maxKBlocks + kb] → first column item; +1 → end
    const int2* __restrict__ colItems,           // (query block, partial index or -1), ascending query blocks
    const unsigned long long* __restrict__ bits,
    const float* __restrict__ alibiSlopes,
    int heads, int kvHeads, int tokensQ, int tokensK, int maskPerSequence, int maskHeads, int maxKBlocks,
    float scale, float softcap)
{
    extern __shared__ float smem[];
    float* sK = smem;
    float* sV = sK + KB * DP;
    float* sQ = sV + KB * DP;
    float* sdO = sQ + RC * DP;
    float* sP = sdO + RC * DP;
    float* sDS = sP + RC * (KB + 1);
    float* sLse = sDS + RC * (KB + 1);
    float* sDelta = sLse + RC;

    const int kb = blockIdx.x, hk = blockIdx.y, s = blockIdx.z;
    const SeqInfo seq = seqs[s];
    if (kb * KB >= seq.kLen) return;
    const int group = heads / kvHeads;
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const long long kOff = ((long long)seq.batch * tokensK + seq.kStart + kb * KB) * kStride + (long long)hk * HEAD_DIM;
    const int kValid = min(KB, seq.kLen - kb * KB);
    load_rows(sK, K + kOff, kStride, KB, kValid);
    load_rows(sV, V + kOff, kStride, KB, kValid);

    const int tid = threadIdx.x, c = tid % KB, slice = tid / KB;   // this thread's key and D slice
    const int DS = HEAD_DIM / (NT / KB);
    float accK[HEAD_DIM / (NT / KB)], accV[HEAD_DIM / (NT / KB)];
#pragma unroll
    for (int j = 0; j < DS; j++) accK[j] = accV[j] = 0.f;

    for (int g = 0; g < group; g++)
    {
        const int h = hk * group + g;
        const float slope = ALIBI ? alibiSlopes[h] : 0.f;
        const int col = ((maskPerSequence ? s : 0) * maskHeads + (maskHeads == 1 ? 0 : h)) * maxKBlocks + kb;
        for (int it = colPtr[col]; it < colPtr[col + 1]; it++)
        {
            const int2 item = colItems[it];
            const int qb = item.x;
            for (int chunk = 0; chunk < QB / RC; chunk++)
            {
                const int qRow0 = qb * QB + chunk * RC;
                if (qRow0 >= seq.qLen) break;
                const long long qOff = ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
                const int rValid = min(RC, seq.qLen - qRow0);
                __syncthreads(); // the previous chunk's tiles are no longer read
                load_rows(sQ, Q + qOff, qStride, RC, rValid);
                load_rows(sdO, dO + qOff, qStride, RC, rValid);
                if (tid < RC)
                {
                    const long long at = ((long long)seq.batch * heads + h) * tokensQ + seq.qStart + qRow0 + tid;
                    sLse[tid] = tid < rValid ? Lse[at] : NEG_INF;
                    sDelta[tid] = tid < rValid ? Delta[at] : 0.f;
                }
                __syncthreads();
                tile_p_ds(sQ, sdO, sK, sV, sLse, sDelta, sP, sDS, bits, item.y, chunk * RC, qRow0, seq.qLen, kb * KB, seq.kLen,
                          seq.kLen - seq.qLen, scale, softcap, slope);
                __syncthreads();
                for (int r = 0; r < RC; r++)
                {
                    const float p = sP[r * (KB + 1) + c], ds = sDS[r * (KB + 1) + c];
#pragma unroll
                    for (int j = 0; j < DS; j++)
                    {
                        accV[j] = fmaf(p, sdO[r * DP + slice * DS + j], accV[j]);
                        accK[j] = fmaf(ds, sQ[r * DP + slice * DS + j], accK[j]);
                    }
                }
            }
        }
    }
    if (c < kValid)
    {
#pragma unroll
        for (int j = 0; j < DS; j++)
        {
            dK[kOff + (long long)c * kStride + slice * DS + j] = from_float(accK[j]);
            dV[kOff + (long long)c * kStride + slice * DS + j] = from_float(accV[j]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(NT)
attend_bwd_dq(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ Lse, const float* __restrict__ Delta,
    elem_t* __restrict__ dQ,
    const SeqInfo* __restrict__ seqs,
    const int* __restrict__ rowPtr, const int2* __restrict__ items, const unsigned long long* __restrict__ bits,
    const float* __restrict__ alibiSlopes,
    int heads, int kvHeads, int tokensQ, int tokensK, int maskPerSequence, int maskHeads, int maxQBlocks,
    float scale, float softcap)
{
    extern __shared__ float smem[];
    float* sK = smem;
    float* sV = sK + KB * DP;
    float* sQ = sV + KB * DP;
    float* sdO = sQ + RC * DP;
    float* sP = sdO + RC * DP;
    float* sDS = sP + RC * (KB + 1);
    float* sLse = sDS + RC * (KB + 1);
    float* sDelta = sLse + RC;

    const int h = blockIdx.x, chunkIdx = blockIdx.y, s = blockIdx.z;
    const SeqInfo seq = seqs[s];
    const int qRow0 = chunkIdx * RC;
    if (qRow0 >= seq.qLen) return;
    const int qb = qRow0 / QB, hk = h / (heads / kvHeads);
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const long long qOff = ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
    const int rValid = min(RC, seq.qLen - qRow0);
    const int tid = threadIdx.x;
    load_rows(sQ, Q + qOff, qStride, RC, rValid);
    load_rows(sdO, dO + qOff, qStride, RC, rValid);
    if (tid < RC)
    {
        const long long at = ((long long)seq.batch * heads + h) * tokensQ + seq.qStart + qRow0 + tid;
        sLse[tid] = tid < rValid ? Lse[at] : NEG_INF;
        sDelta[tid] = tid < rValid ? Delta[at] : 0.f;
    }
    const float slope = ALIBI ? alibiSlopes[h] : 0.f;
    const int r = tid % RC, slice = tid / RC;
    const int DS = HEAD_DIM / (NT / RC);
    float acc[HEAD_DIM / (NT / RC)];
#pragma unroll
    for (int j = 0; j < DS; j++) acc[j] = 0.f;
    const int row = ((maskPerSequence ? s : 0) * maskHeads + (maskHeads == 1 ? 0 : h)) * maxQBlocks + qb;
    for (int it = rowPtr[row]; it < rowPtr[row + 1]; it++)
    {
        const int2 item = items[it];
        const int kb = item.x;
        const long long kOff = ((long long)seq.batch * tokensK + seq.kStart + kb * KB) * kStride + (long long)hk * HEAD_DIM;
        __syncthreads(); // the previous block's tiles are no longer read
        load_rows(sK, K + kOff, kStride, KB, min(KB, seq.kLen - kb * KB));
        load_rows(sV, V + kOff, kStride, KB, min(KB, seq.kLen - kb * KB));
        __syncthreads();
        tile_p_ds(sQ, sdO, sK, sV, sLse, sDelta, sP, sDS, bits, item.y, qRow0 - qb * QB, qRow0, seq.qLen, kb * KB, seq.kLen,
                  seq.kLen - seq.qLen, scale, softcap, slope);
        __syncthreads();
        for (int c = 0; c < KB; c++)
        {
            const float ds = sDS[r * (KB + 1) + c];
#pragma unroll
            for (int j = 0; j < DS; j++) acc[j] = fmaf(ds, sK[c * DP + slice * DS + j], acc[j]);
        }
    }
    if (r < rValid)
    {
#pragma unroll
        for (int j = 0; j < DS; j++) dQ[qOff + (long long)r * qStride + slice * DS + j] = from_float(acc[j]);
    }
}
