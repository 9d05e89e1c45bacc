// Attend: attention backward (dQ, dK, dV) on tensor cores: FlashAttention-2's backward on mma.sync m16n8k16
// (bf16/fp16 operands, float32 accumulation), deterministic (no atomics).
//
// From the forward's O and natural-log LSE (scores are recomputed, never stored):
//   P = exp(mod(scale·QKᵀ) − LSE), dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − Δ) ⊙ mod′ · scale, dK = dSᵀ Q, dQ = dS K,
// with Δ = rowsum(dO ⊙ O). Three kernels:
//   attend_bwdm_delta  Δ per (row, head), one warp per row, 16-byte loads;
//   attend_bwdm_dkdv   a CTA per (64-key block, KV head, sequence), 4 warps × 16 keys; loops over the query heads of
//                      its group and the query blocks the transposed block lists give (FlashBlockPlan.ColumnPtr), BR
//                      query rows per step (Q, dO, LSE, Δ double buffered with cp.async); computes Sᵀ = K Qᵀ and
//                      dPᵀ = V dOᵀ with keys as the M dimension, so Pᵀ and dSᵀ are repacked from the accumulators straight
//                      into A fragments for dV += Pᵀ dO and dK += dSᵀ Q (no shared-memory round trip); grouped-query
//                      gradients sum in registers in a fixed order;
//   attend_bwdm_dq     a CTA per (64 query rows, head, sequence), 4 warps × 16 rows, over the forward's key block list
//                      (K, V double buffered); S, dP, dS as in the forward's layout, dQ += dS K.
// Masks: the forward plan's lists and 64-bit mask words (partial blocks only); keys past the sequence's end masked on
// tail blocks. Score mods: soft cap (derivative 1 − tanh²) and ALiBi (additive: no derivative term).
//
// With DQ_ATOMIC = 1 (AttentionOptions.Deterministic false) dQ is not a separate kernel: the dK/dV kernel writes dSᵀ to
// shared memory and each warp adds its 16 rows of dS K into a float32 dQ buffer with atomics (FlashAttention-2's own
// scheme: five products instead of seven), and attend_bwdm_dq_convert rounds it to the element type.
//
// With WGMMA = 1 (Hopper, sm_90a) the matrix products of both kernels are warpgroup products (wgmma.mma_async): a CTA's
// 4 warps are one warpgroup, so its 64 rows (keys in dK/dV, queries in dQ) are the wgmma's M = 64 and every warp keeps
// the same accumulator layout as with mma.sync (warp w: rows 16w..16w+15, the m16n8 C fragment per 8 columns); the
// softmax and mask code is shared. Tiles then use the 128-byte-swizzled layout the wgmma descriptors name
// ([HEAD_DIM / 64][rows][64], 16-byte chunk c of row r at (c ^ (r & 7))), 1024-byte aligned. dK/dV: Sᵀ = K Qᵀ and
// dPᵀ = V dOᵀ with both operands from shared memory; dV += Pᵀ dO and dK += dSᵀ Q with Pᵀ / dSᵀ from registers and dO / Q
// read N-major (transposed) from the same tiles. dQ: S = Q Kᵀ and dP = dO Vᵀ from shared memory; dQ += dS K with dS
// from registers and K read N-major.
//
// Defines: HEAD_DIM (64 | 128), ELEM_BF16, SOFTCAP, ALIBI, BR (query rows per dK/dV step: 32 | 64; 64 with DQ_ATOMIC
// or WGMMA), DQ_ATOMIC, WGMMA, WG_CTAS.
// Fragment, ldmatrix and swizzle helpers are a copy of flash_forward.cu's (NVRTC sources here carry no includes).

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif
#ifndef BR
#define BR 64
#endif
#ifndef DQ_ATOMIC
#define DQ_ATOMIC 0
#endif
#if DQ_ATOMIC && BR != 64
#error "DQ_ATOMIC needs BR = 64 (4 warps x 16 query rows)"
#endif
#ifndef WGMMA
#define WGMMA 0
#endif
#ifndef WG_CTAS
#define WG_CTAS 2
#endif
// Resident CTAs per SM the register budget is sized for (__launch_bounds__): 2 (255 registers), or 3 for the wgmma form
// at HEAD_DIM 64 with WG_CTAS=3 (170 registers; the accumulators of D = 64 are half those of D = 128).
#if WGMMA && HEAD_DIM == 64 && WG_CTAS == 3
#define MIN_CTAS 3
#else
#define MIN_CTAS 2
#endif
#if WGMMA && (BR != 64 || DQ_ATOMIC)
#error "WGMMA needs BR = 64 (the wgmma N of the Sᵀ product) and no DQ_ATOMIC"
#endif

#define NWARPS 4
#define NT (NWARPS * 32)
#define QB 128                 // forward query block (rows per mask-word block)
#define KB 64                  // key block (one mask word)
#define BM 64                  // query rows per dQ CTA
#define DC (HEAD_DIM / 8)
#define KSTEPS (HEAD_DIM / 16)
#define DTILES (HEAD_DIM / 8)
#define QTILES (BR / 8)        // n8 tiles of queries in a dK/dV step
#define NTILES (KB / 8)        // n8 tiles of keys in a dQ step

typedef unsigned short elem_t;
#define NEG_INF __int_as_float(0xff800000)
#define LOG2E 1.4426950408889634f

#include "mma_tiles.cuh"

#if WGMMA
#include "wgmma_tiles.cuh"
#define LOAD_TILE load_wtile
#else
#define LOAD_TILE load_tile
#endif

// 4-byte asynchronous copy (zero-filled when bytes == 0): the LSE and Δ rows of a step.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(dst), "l"(src), "r"(bytes));
}

struct SeqInfo { int batch, qStart, qLen, kStart, kLen; };

// Two adjacent float32 atomic adds in one vector reduction (sm_90: red.global.add.v2.f32; 8-byte aligned address).
__device__ __forceinline__ void red_add2(float* p, float a, float b)
{
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" :: "l"(p), "f"(a), "f"(b) : "memory");
}

__device__ __forceinline__ float elem_to_float(elem_t x)
{
#if ELEM_BF16
    return __uint_as_float(((unsigned)x) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#endif
}

// Δ = rowsum(dO ⊙ O): one warp per (b, t, h) row, DC lanes each read 8 elements (16 bytes); Δ is [B, H, T].
extern "C" __global__ void attend_bwdm_delta(const elem_t* __restrict__ O, const elem_t* __restrict__ dO, float* __restrict__ delta,
    int batch, int tokens, int heads)
{
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= (long long)batch * tokens * heads) return;
    float s = 0.f;
    for (int c = lane; c < DC; c += 32)
    {
        const uint4 a = *(const uint4*)(O + row * HEAD_DIM + c * 8);
        const uint4 b = *(const uint4*)(dO + row * HEAD_DIM + c * 8);
        const elem_t* pa = (const elem_t*)&a;
        const elem_t* pb = (const elem_t*)&b;
#pragma unroll
        for (int i = 0; i < 8; i++) s = fmaf(elem_to_float(pa[i]), elem_to_float(pb[i]), s);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0)
    {
        const int h = (int)(row % heads), t = (int)((row / heads) % tokens), b = (int)(row / ((long long)heads * tokens));
        delta[((long long)b * heads + h) * tokens + t] = s;
    }
}

// The logit of a raw score q·k in base 2, and the factor d(logit)/d(scale·q·k) (soft cap's 1 − tanh²; 1 otherwise).
// ALiBi: qPos, kPos are the bottom-right-aligned positions.
__device__ __forceinline__ float logit2(float raw, float scale, float softcap, float slope, int qPos, int kPos, float& dmod)
{
    float x = raw * scale;
    dmod = 1.f;
#if SOFTCAP
    const float th = tanhf(x / softcap);
    x = softcap * th;
    dmod = 1.f - th * th;
#endif
#if ALIBI
    const int dist = qPos - kPos;
    x -= slope * (float)(dist < 0 ? -dist : dist);
#endif
    (void)softcap; (void)slope; (void)qPos; (void)kPos;
    return x * LOG2E;
}

// A step of the dK/dV loop: query head g of the group, column item it, BR-row chunk of the item's query block.
struct Step { int g, it, end, chunk; };

extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
attend_bwdm_dkdv(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ Lse, const float* __restrict__ Delta,
    elem_t* __restrict__ dK, elem_t* __restrict__ dV, float* __restrict__ dQacc,
    const SeqInfo* __restrict__ seqs,
    const int* __restrict__ colPtr,              // [(entry * maskHeads + head) * maxKBlocks + kb] → first column item; +1 → end
    const int2* __restrict__ colItems,           // (query block, partial index or -1), ascending query blocks
    const unsigned long long* __restrict__ bits,
    const float* __restrict__ alibiSlopes,
    int heads, int kvHeads, int tokensQ, int tokensK, int maskPerSequence, int maskHeads, int maxKBlocks,
    float scale, float softcap)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kb = blockIdx.x, hk = blockIdx.y, s = blockIdx.z;
    const SeqInfo seq = seqs[s];
    if (kb * KB >= seq.kLen) return;
    const int group = heads / kvHeads;
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const long long kOff = ((long long)seq.batch * tokensK + seq.kStart + kb * KB) * kStride + (long long)hk * HEAD_DIM;
    const int kValid = min(KB, seq.kLen - kb * KB);

#if WGMMA
    // wgmma tiles start on 1024-byte boundaries (the swizzle pattern is a function of the address): the host adds 1 KB.
    const unsigned sRaw = smem_addr(smem);
    const unsigned sK = (sRaw + 1023u) & ~1023u;
    unsigned char* const sbase = smem + (sK - sRaw);
#else
    const unsigned sK = smem_addr(smem);
    unsigned char* const sbase = smem;
#endif
    const unsigned sV = sK + KB * HEAD_DIM * 2;
    const unsigned sQ0 = sV + KB * HEAD_DIM * 2;
    const unsigned sdO0 = sQ0 + 2 * BR * HEAD_DIM * 2;
    const unsigned qStage = BR * HEAD_DIM * 2;
    float* sL = (float*)(sbase + 2 * KB * HEAD_DIM * 2 + 4 * BR * HEAD_DIM * 2); // [2][BR] LSE, then [2][BR] Δ
    float* sD = sL + 2 * BR;
    const unsigned sdS = smem_addr(sD + 2 * BR);                                  // [KB][BR] dSᵀ (DQ_ATOMIC)

    LOAD_TILE<KB>(sK, K + kOff, kStride, kValid, tid);
    LOAD_TILE<KB>(sV, V + kOff, kStride, kValid, tid);
    cp_async_commit();

    const int colBase = (maskPerSequence ? s : 0) * maskHeads;
    // First step at or after (g, it): skips heads whose list for this key block is empty.
    auto settle = [&](Step& st) {
        while (st.g < group && st.it >= st.end)
        {
            st.g++;
            if (st.g < group)
            {
                const int col = (colBase + (maskHeads == 1 ? 0 : hk * group + st.g)) * maxKBlocks + kb;
                st.it = colPtr[col];
                st.end = colPtr[col + 1];
            }
        }
    };
    auto issue = [&](const Step& st, int stage) {
        const int h = hk * group + st.g;
        const int qRow0 = colItems[st.it].x * QB + st.chunk * BR;
        const long long qOff = ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
        const int rValid = seq.qLen - qRow0;
        LOAD_TILE<BR>(sQ0 + stage * qStage, Q + qOff, qStride, rValid, tid);
        LOAD_TILE<BR>(sdO0 + stage * qStage, dO + qOff, qStride, rValid, tid);
        if (tid < 2 * BR)
        {
            const int r = tid % BR;
            const long long at = ((long long)seq.batch * heads + h) * tokensQ + seq.qStart + qRow0 + r;
            const bool ok = r < rValid;
            const float* src = tid < BR ? Lse : Delta;
            cp_async4(smem_addr((tid < BR ? sL : sD) + stage * BR + r), ok ? src + at : src, ok ? 4 : 0);
        }
    };

    Step cur;
    {
        const int col = (colBase + (maskHeads == 1 ? 0 : hk * group)) * maxKBlocks + kb;
        cur.g = 0; cur.it = colPtr[col]; cur.end = colPtr[col + 1]; cur.chunk = 0;
        settle(cur);
    }
    if (cur.g < group) issue(cur, 0);
    cp_async_commit();

    const int g = lane >> 2, t = lane & 3;
    const int warpKey = warp * 16;
    const int shift = seq.kLen - seq.qLen;
    const int kPos0 = kb * KB;
    const bool tail = kPos0 + KB > seq.kLen;
    float accK[DTILES][4], accV[DTILES][4];
#pragma unroll
    for (int j = 0; j < DTILES; j++)
        accK[j][0] = accK[j][1] = accK[j][2] = accK[j][3] = accV[j][0] = accV[j][1] = accV[j][2] = accV[j][3] = 0.f;

    int stage = 0;
    while (cur.g < group)
    {
        Step nxt = cur;
        {
            const int qb = colItems[cur.it].x;
            nxt.chunk++;
            if (nxt.chunk == QB / BR || qb * QB + nxt.chunk * BR >= seq.qLen)
            {
                nxt.chunk = 0;
                nxt.it++;
                settle(nxt);
            }
        }
        if (nxt.g < group) issue(nxt, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
#if WGMMA
        fence_proxy_async();
#endif
        __syncthreads();

        const unsigned sQ = sQ0 + stage * qStage, sdO = sdO0 + stage * qStage;
        const float* lse = sL + stage * BR;
        const float* dlt = sD + stage * BR;
        const int h = hk * group + cur.g;
        const int2 item = colItems[cur.it];
        const int rIn0 = cur.chunk * BR;            // first row of this step within the query block
        const int qRow0 = item.x * QB + rIn0;
#if ALIBI
        const float slope = alibiSlopes[h];
#else
        const float slope = 0.f;
        (void)h;
#endif

        // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: this warp's 16 keys against the step's BR queries.
        float st[QTILES][4], dpt[QTILES][4];
#pragma unroll
        for (int j = 0; j < QTILES; j++) st[j][0] = st[j][1] = st[j][2] = st[j][3] = dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
#if WGMMA
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) wg_ss_n64(st, desc_k<KB>(sK, kk), desc_k<BR>(sQ, kk));
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) wg_ss_n64(dpt, desc_k<KB>(sV, kk), desc_k<BR>(sdO, kk));
        wg_commit();
        wg_wait<0>();
        wg_hold(st);
        wg_hold(dpt);
#else
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sK + tile_offset(warpKey + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < QTILES / 2; np++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(sQ + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816(st[2 * np], a0, a1, a2, a3, b0, b1);
                mma16816(st[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sV + tile_offset(warpKey + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < QTILES / 2; np++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(sdO + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816(dpt[2 * np], a0, a1, a2, a3, b0, b1);
                mma16816(dpt[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#endif

        // Pᵀ and dSᵀ in place. Element (half, e) of tile j: key warpKey + g + 8·half, query j·8 + 2t + e of the step.
        const bool masked = item.y >= 0 || tail;
#pragma unroll
        for (int j = 0; j < QTILES; j++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                const int qc = j * 8 + 2 * t + e;
                const float l2 = lse[qc] * LOG2E;
                const float dl = dlt[qc];
                const unsigned long long word = item.y >= 0 ? bits[(long long)item.y * QB + rIn0 + qc] : ~0ull;
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int kc = warpKey + g + half * 8;
#if SOFTCAP || ALIBI
                    float dmod;
                    const float x = logit2(st[j][half * 2 + e], scale, softcap, slope, qRow0 + qc + shift, kPos0 + kc, dmod);
                    float p = fast_exp2(x - l2);
#else
                    const float dmod = 1.f;
                    float p = fast_exp2(fmaf(st[j][half * 2 + e], scale * LOG2E, -l2));
#endif
                    if (masked && !(((word >> kc) & 1ull) != 0ull && kc < seq.kLen - kPos0)) p = 0.f;
                    st[j][half * 2 + e] = p;
                    dpt[j][half * 2 + e] = p * (dpt[j][half * 2 + e] - dl) * (dmod * scale);
                }
            }
        (void)slope; (void)qRow0;
#if DQ_ATOMIC
        // dSᵀ to shared memory as [key][query], 16-byte chunks XOR-swizzled by the key row (conflict-free stores and
        // transposed ldmatrix loads below).
#pragma unroll
        for (int j = 0; j < QTILES; j++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int kc = warpKey + g + half * 8;
                const unsigned at = sdS + (unsigned)((kc * BR + ((j ^ (kc & 7)) << 3)) * 2 + 4 * t);
                asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(at), "r"(pack2(dpt[j][half * 2], dpt[j][half * 2 + 1])));
            }
#endif

        // dV += Pᵀ dO and dK += dSᵀ Q: two adjacent query tiles of the accumulators are one A fragment (k = queries).
#if WGMMA
        {
            unsigned pa[BR / 16][4], da[BR / 16][4];
#pragma unroll
            for (int kk = 0; kk < BR / 16; kk++)
            {
                pa[kk][0] = pack2(st[2 * kk][0], st[2 * kk][1]);
                pa[kk][1] = pack2(st[2 * kk][2], st[2 * kk][3]);
                pa[kk][2] = pack2(st[2 * kk + 1][0], st[2 * kk + 1][1]);
                pa[kk][3] = pack2(st[2 * kk + 1][2], st[2 * kk + 1][3]);
                da[kk][0] = pack2(dpt[2 * kk][0], dpt[2 * kk][1]);
                da[kk][1] = pack2(dpt[2 * kk][2], dpt[2 * kk][3]);
                da[kk][2] = pack2(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
                da[kk][3] = pack2(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
            }
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BR / 16; kk++)
            {
                wg_rs_nd<1>(accV, pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], desc_n<BR>(sdO, kk));
                wg_rs_nd<1>(accK, da[kk][0], da[kk][1], da[kk][2], da[kk][3], desc_n<BR>(sQ, kk));
            }
            wg_commit();
            wg_wait<0>();
            wg_hold(accV);
            wg_hold(accK);
        }
#else
#pragma unroll
        for (int kk = 0; kk < BR / 16; kk++)
        {
            const unsigned p0 = pack2(st[2 * kk][0], st[2 * kk][1]), p1 = pack2(st[2 * kk][2], st[2 * kk][3]);
            const unsigned p2 = pack2(st[2 * kk + 1][0], st[2 * kk + 1][1]), p3 = pack2(st[2 * kk + 1][2], st[2 * kk + 1][3]);
            const unsigned d0 = pack2(dpt[2 * kk][0], dpt[2 * kk][1]), d1 = pack2(dpt[2 * kk][2], dpt[2 * kk][3]);
            const unsigned d2 = pack2(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]), d3 = pack2(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < DTILES / 2; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sdO + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(accV[2 * dp], p0, p1, p2, p3, b0, b1);
                mma16816(accV[2 * dp + 1], p0, p1, p2, p3, b2, b3);
                ldsm_x4_t(sQ + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(accK[2 * dp], d0, d1, d2, d3, b0, b1);
                mma16816(accK[2 * dp + 1], d0, d1, d2, d3, b2, b3);
            }
        }
#endif
#if DQ_ATOMIC
        __syncthreads(); // dSᵀ complete
        {
            // dQ[16 rows of this warp] += dS K over the block's 64 keys; A = dS read transposed from [key][query].
            const int qr = warp * 16;
            unsigned af[KB / 16][4];
#pragma unroll
            for (int kk = 0; kk < KB / 16; kk++)
            {
                const int kr = kk * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int ch = qr / 8 + ((lane >> 3) & 1);
                ldsm_x4_t(sdS + (unsigned)((kr * BR + ((ch ^ (kr & 7)) << 3)) * 2), af[kk][0], af[kk][1], af[kk][2], af[kk][3]);
            }
            const int r0 = qRow0 + qr + g;
            float* row0 = dQacc + (((long long)seq.batch * tokensQ + seq.qStart + r0) * heads + h) * HEAD_DIM;
            float* row1 = row0 + 8LL * heads * HEAD_DIM;
            const bool ok0 = r0 < seq.qLen, ok1 = r0 + 8 < seq.qLen;
#pragma unroll
            for (int dpi = 0; dpi < DTILES / 2; dpi++)
            {
                float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int kk = 0; kk < KB / 16; kk++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(sK + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dpi + (lane >> 4)), b0, b1, b2, b3);
                    mma16816(c0, af[kk][0], af[kk][1], af[kk][2], af[kk][3], b0, b1);
                    mma16816(c1, af[kk][0], af[kk][1], af[kk][2], af[kk][3], b2, b3);
                }
                const int col = dpi * 16 + 2 * t;
                if (ok0)
                {
                    red_add2(row0 + col, c0[0], c0[1]);
                    red_add2(row0 + col + 8, c1[0], c1[1]);
                }
                if (ok1)
                {
                    red_add2(row1 + col, c0[2], c0[3]);
                    red_add2(row1 + col + 8, c1[2], c1[3]);
                }
            }
        }
#else
        (void)dQacc;
#endif
        __syncthreads(); // every warp is done with this stage before it is refilled
        cur = nxt;
        stage ^= 1;
    }
    cp_async_wait<0>();

    // Store dK, dV: every key of the block inside the sequence is written (zeros when no query sees it).
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int kc = warpKey + g + half * 8;
        if (kc < kValid)
        {
            elem_t* dk = dK + kOff + (long long)kc * kStride;
            elem_t* dv = dV + kOff + (long long)kc * kStride;
#pragma unroll
            for (int j = 0; j < DTILES; j++)
            {
                *(unsigned*)(dk + j * 8 + 2 * t) = pack2(accK[j][half * 2], accK[j][half * 2 + 1]);
                *(unsigned*)(dv + j * 8 + 2 * t) = pack2(accV[j][half * 2], accV[j][half * 2 + 1]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
attend_bwdm_dq(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ Lse, const float* __restrict__ Delta,
    elem_t* __restrict__ dQ,
    const SeqInfo* __restrict__ seqs,
    const int* __restrict__ rowPtr, const int2* __restrict__ items, const unsigned long long* __restrict__ bits,
    const float* __restrict__ alibiSlopes,
    int heads, int kvHeads, int tokensQ, int tokensK, int maskPerSequence, int maskHeads, int maxQBlocks,
    float scale, float softcap)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x;
    const int chunk = gridDim.y - 1 - blockIdx.y;   // heaviest (causal) rows first
    const int s = blockIdx.z;
    const SeqInfo seq = seqs[s];
    const int qRow0 = chunk * BM;
    if (qRow0 >= seq.qLen) return;
    const int qb = qRow0 / QB, rIn0 = qRow0 - qb * QB;
    const int hk = h / (heads / kvHeads);
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const long long qOff = ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
    const elem_t* kBase = K + ((long long)seq.batch * tokensK + seq.kStart) * kStride + (long long)hk * HEAD_DIM;
    const elem_t* vBase = V + ((long long)seq.batch * tokensK + seq.kStart) * kStride + (long long)hk * HEAD_DIM;
    const int row = ((maskPerSequence ? s : 0) * maskHeads + (maskHeads == 1 ? 0 : h)) * maxQBlocks + qb;
    const int itBegin = rowPtr[row], itEnd = rowPtr[row + 1];

#if WGMMA
    const unsigned sQ = (smem_addr(smem) + 1023u) & ~1023u;   // 1024-byte aligned wgmma tiles (the host adds 1 KB)
#else
    const unsigned sQ = smem_addr(smem);
#endif
    const unsigned sdO = sQ + BM * HEAD_DIM * 2;
    const unsigned sK0 = sdO + BM * HEAD_DIM * 2;
    const unsigned sV0 = sK0 + 2 * KB * HEAD_DIM * 2;
    const unsigned kvStage = KB * HEAD_DIM * 2;

    LOAD_TILE<BM>(sQ, Q + qOff, qStride, seq.qLen - qRow0, tid);
    LOAD_TILE<BM>(sdO, dO + qOff, qStride, seq.qLen - qRow0, tid);
    cp_async_commit();
    if (itBegin < itEnd)
    {
        const int kb = items[itBegin].x;
        LOAD_TILE<KB>(sK0, kBase + (long long)kb * KB * kStride, kStride, seq.kLen - kb * KB, tid);
        LOAD_TILE<KB>(sV0, vBase + (long long)kb * KB * kStride, kStride, seq.kLen - kb * KB, tid);
    }
    cp_async_commit();

    const int g = lane >> 2, t = lane & 3;
    const int warpRow = warp * 16;
    const int shift = seq.kLen - seq.qLen;
#if ALIBI
    const float slope = alibiSlopes[h];
#else
    const float slope = 0.f;
#endif
    float l2[2], dl[2];
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int r = qRow0 + warpRow + g + half * 8;
        const long long at = ((long long)seq.batch * heads + h) * tokensQ + seq.qStart + r;
        l2[half] = r < seq.qLen ? Lse[at] * LOG2E : 0.f;
        dl[half] = r < seq.qLen ? Delta[at] : 0.f;
    }

    float acc[DTILES][4];
#pragma unroll
    for (int j = 0; j < DTILES; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

    for (int it = itBegin; it < itEnd; it++)
    {
        const int stage = (it - itBegin) & 1;
        if (it + 1 < itEnd)
        {
            const int kb = items[it + 1].x;
            LOAD_TILE<KB>(sK0 + (stage ^ 1) * kvStage, kBase + (long long)kb * KB * kStride, kStride, seq.kLen - kb * KB, tid);
            LOAD_TILE<KB>(sV0 + (stage ^ 1) * kvStage, vBase + (long long)kb * KB * kStride, kStride, seq.kLen - kb * KB, tid);
        }
        cp_async_commit();
        cp_async_wait<1>();
#if WGMMA
        fence_proxy_async();
#endif
        __syncthreads();
        const unsigned sK = sK0 + stage * kvStage, sV = sV0 + stage * kvStage;

        // S = Q Kᵀ and dP = dO Vᵀ for this warp's 16 rows against the block's 64 keys.
        float sc[NTILES][4], dp[NTILES][4];
#pragma unroll
        for (int j = 0; j < NTILES; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
#if WGMMA
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) wg_ss_n64(sc, desc_k<BM>(sQ, kk), desc_k<KB>(sK, kk));
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) wg_ss_n64(dp, desc_k<BM>(sdO, kk), desc_k<KB>(sV, kk));
        wg_commit();
        wg_wait<0>();
        wg_hold(sc);
        wg_hold(dp);
#else
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sQ + tile_offset(warpRow + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < NTILES / 2; np++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(sK + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816(sc[2 * np], a0, a1, a2, a3, b0, b1);
                mma16816(sc[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sdO + tile_offset(warpRow + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < NTILES / 2; np++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(sV + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816(dp[2 * np], a0, a1, a2, a3, b0, b1);
                mma16816(dp[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#endif

        const int2 item = items[it];
        const int kPos0 = item.x * KB;
        const bool masked = item.y >= 0 || kPos0 + KB > seq.kLen;
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int rIn = rIn0 + warpRow + g + half * 8;
            const unsigned long long word = item.y >= 0 ? bits[(long long)item.y * QB + rIn] : ~0ull;
#pragma unroll
            for (int j = 0; j < NTILES; j++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    const int c = j * 8 + 2 * t + e;
#if SOFTCAP || ALIBI
                    float dmod;
                    const float x = logit2(sc[j][half * 2 + e], scale, softcap, slope, qb * QB + rIn + shift, kPos0 + c, dmod);
                    float p = fast_exp2(x - l2[half]);
#else
                    const float dmod = 1.f;
                    float p = fast_exp2(fmaf(sc[j][half * 2 + e], scale * LOG2E, -l2[half]));
#endif
                    if (masked && !(((word >> c) & 1ull) != 0ull && c < seq.kLen - kPos0)) p = 0.f;
                    sc[j][half * 2 + e] = p * (dp[j][half * 2 + e] - dl[half]) * (dmod * scale);
                }
        }
        (void)slope; (void)shift;

        // dQ += dS K: the dS accumulators of two adjacent key tiles are one A fragment (k = keys); K read transposed.
#if WGMMA
        {
            unsigned sa[KB / 16][4];
#pragma unroll
            for (int kk = 0; kk < KB / 16; kk++)
            {
                sa[kk][0] = pack2(sc[2 * kk][0], sc[2 * kk][1]);
                sa[kk][1] = pack2(sc[2 * kk][2], sc[2 * kk][3]);
                sa[kk][2] = pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                sa[kk][3] = pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
            }
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < KB / 16; kk++) wg_rs_nd<1>(acc, sa[kk][0], sa[kk][1], sa[kk][2], sa[kk][3], desc_n<KB>(sK, kk));
            wg_commit();
            wg_wait<0>();
            wg_hold(acc);
        }
#else
#pragma unroll
        for (int kk = 0; kk < KB / 16; kk++)
        {
            const unsigned a0 = pack2(sc[2 * kk][0], sc[2 * kk][1]), a1 = pack2(sc[2 * kk][2], sc[2 * kk][3]);
            const unsigned a2 = pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]), a3 = pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int dpi = 0; dpi < DTILES / 2; dpi++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sK + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dpi + (lane >> 4)), b0, b1, b2, b3);
                mma16816(acc[2 * dpi], a0, a1, a2, a3, b0, b1);
                mma16816(acc[2 * dpi + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#endif
        __syncthreads();
    }
    cp_async_wait<0>();

#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int r = qRow0 + warpRow + g + half * 8;
        if (r < seq.qLen)
        {
            elem_t* out = dQ + qOff + (long long)(warpRow + g + half * 8) * qStride;
#pragma unroll
            for (int j = 0; j < DTILES; j++)
                *(unsigned*)(out + j * 8 + 2 * t) = pack2(acc[j][half * 2], acc[j][half * 2 + 1]);
        }
    }
}

// dQ = the float32 atomic accumulator rounded to the element type (DQ_ATOMIC); n elements, 4 per thread.
extern "C" __global__ void attend_bwdm_dq_convert(const float* __restrict__ acc, elem_t* __restrict__ dQ, long long n)
{
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    const float4 a = *(const float4*)(acc + i);
    *(uint2*)(dQ + i) = make_uint2(pack2(a.x, a.y), pack2(a.z, a.w));
}
