// Attend: FlashAttention-2 style forward on tensor cores (mma.sync m16n8k16, bf16/fp16 in, float32 accumulation).
//
// One CTA computes BLOCK_M query rows of one (sequence, query head) against the key blocks that the host's
// BlockMask lists for that query block: full blocks skip the mask, partial blocks read one 64-bit word of mask
// bits per row (evaluated on the host from the user's IMaskMod, so every mask the CPU accepts runs here), empty
// blocks are never listed and never visited. K/V tiles stream through shared memory with cp.async, double
// buffered; the softmax is online (base 2 inside, natural-log LSE out).
//
// Specialised by defines (the host passes them to NVRTC):
//   HEAD_DIM   64 | 128 | 256
//   ELEM_BF16  1 for bf16, 0 for fp16
//   NWARPS     warps per CTA; each warp owns 16*MT query rows
//   MT         m16 tiles per warp (1 or 2)
//   BLOCK_N    keys per tile (64; mask bit words limit it to 64)
//   QREG       1 keeps the Q fragments in registers for the whole CTA, 0 reloads them from shared memory
//   SOFTCAP    1 applies cap*tanh(s/cap) to the scaled score
//   ALIBI      1 subtracts slope[h]*|qpos-kpos|
// No headers: NVRTC needs none, and conversions are written in PTX.
//
// Variant switches (default 0; the host sets MASK32 = WSKIP = 1 for plans whose visited blocks are at least 1/8
// partial, such as sliding windows, where they measured +2 %; on dense causal they measured −3 % at 32k, so those plans
// keep the plain code; in the wgmma form the host sets WGSKIP = 1 for every plan (+4 % window, +2 % dense causal); the
// others measured slower and stay off; docs/CUDA-KERNELS.md records each; kernel_probe.py sets them to compare variants
// in one run):
//   MASK32     1: partial blocks test their mask with one 32-bit shift per row and constant bit tests
//              (0: a 64-bit shift and two compares per score)
//   WSKIP      1: on a partial block, a warp whose rows see none of the block's keys skips it (exact)
//   RSKIP      1: the accumulator rescale is skipped when no row of the warp moved its max (exact: the factor is 1)
//   MMA_NOVOLATILE 1: the mma.sync asm is not volatile (the compiler may schedule it among the other instructions)
//   SEPI       1: the epilogue stages the normalised O tile in shared memory (the Q tile's space) and stores it with
//              coalesced 16-byte writes (0: 4-byte stores straight from the accumulators)
//   CSKIP      1 (with WSKIP): on a partial block, a warp also skips the QKᵀ and PV products of each 16-key column
//              group that none of its rows sees (the far half of a diagonal block, the near half at a window's start)
//   WGMMA      1 (Hopper, sm_90a; NWARPS = 8, MT = 1, QREG = WSKIP = SEPI = 0): both products are warpgroup products
//              (wgmma.mma_async, wgmma_tiles.cuh): warps 0-3 and 4-7 are two warpgroups owning query rows 0-63 and
//              64-127 (M = 64 each); S = Q Kᵀ with Q and K from shared memory, O += P V with P from registers and V read
//              N-major; each warp keeps the mma.sync accumulator layout, so the softmax, mask and epilogue code is shared.
//              Tiles use the 128-byte-swizzled layout, 1024-byte aligned (the host adds 1 KB).
//   MINB       CTAs per SM the registers are sized for (__launch_bounds__; default 1)
//   WGSKIP     1 (with WGMMA): on a partial block, each warpgroup reads the mask words of its 64 rows (two per lane, one
//              vote each): a warpgroup none of whose rows sees a key of the block skips both products and the softmax
//              (exact: no max, sum or output change; it still joins the CTA's barriers), and a warpgroup all of whose
//              rows see all 64 keys treats the block as full (no per-element mask). A 128-row block at the diagonal is
//              empty for rows 0-63 past key 63, and a sliding window's first key block is empty for rows 64-127.

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif
#ifndef MASK32
#define MASK32 0
#endif
#ifndef WSKIP
#define WSKIP 0
#endif
#ifndef RSKIP
#define RSKIP 0
#endif
#ifndef CSKIP
#define CSKIP 0
#endif
#ifndef MMA_NOVOLATILE
#define MMA_NOVOLATILE 0
#endif
#ifndef SEPI
#define SEPI 0
#endif
#ifndef WGMMA
#define WGMMA 0
#endif
#ifndef MINB
#define MINB 1
#endif
#ifndef WGSKIP
#define WGSKIP 0
#endif
#if WGSKIP && !WGMMA
#error "WGSKIP needs WGMMA (the warp-level skip of the mma.sync kernel is WSKIP)"
#endif
#if WGMMA && (NWARPS != 8 || MT != 1 || QREG || WSKIP || SEPI || BLOCK_N != 64)
#error "WGMMA needs NWARPS = 8, MT = 1, BLOCK_N = 64 and no QREG, WSKIP or SEPI (every warp of a warpgroup joins each product)"
#endif

#define NT (NWARPS * 32)
#define BLOCK_M (16 * MT * NWARPS)
#define DC (HEAD_DIM / 8)
#define KSTEPS (HEAD_DIM / 16)
#define NTILES (BLOCK_N / 8)
#define DTILES (HEAD_DIM / 8)

typedef unsigned short elem_t;
#define NEG_INF __int_as_float(0xff800000)

#include "mma_tiles.cuh"
#if WGMMA
#include "wgmma_tiles.cuh"
#define LOAD_TILE load_wtile
#else
#define LOAD_TILE load_tile
#endif

struct SeqInfo { int batch, qStart, qLen, kStart, kLen; };

extern "C" __global__ void __launch_bounds__(NT, MINB)
attend_flash_forward(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V,
    elem_t* __restrict__ O, float* __restrict__ Lse,
    const SeqInfo* __restrict__ seqs,
    const int* __restrict__ rowPtr,              // [(entry * maskHeads + head) * maxQBlocks + qBlock] → first item; +1 → end
    const int2* __restrict__ items,              // (key block, partial index or -1)
    const unsigned long long* __restrict__ bits, // per partial item: BLOCK_M words, bit c = key c of the block visible
    const float* __restrict__ alibiSlopes,       // per query head (ALIBI only)
    int heads, int kvHeads, int tokensQ, int tokensK,
    int maskPerSequence, int maskHeads, int maxQBlocks,
    float scale, float softcap)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x;
    const int qb = gridDim.y - 1 - blockIdx.y;   // heaviest (causal) query blocks first
    const int s = blockIdx.z;
    const SeqInfo seq = seqs[s];
    if (qb * BLOCK_M >= seq.qLen) return;
    const int hk = h / (heads / kvHeads);
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const int qRow0 = qb * BLOCK_M;
    const elem_t* qBase = Q + ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
    const elem_t* kBase = K + ((long long)seq.batch * tokensK + seq.kStart) * kStride + (long long)hk * HEAD_DIM;
    const elem_t* vBase = V + ((long long)seq.batch * tokensK + seq.kStart) * kStride + (long long)hk * HEAD_DIM;
    const int row = ((maskPerSequence ? s : 0) * maskHeads + (maskHeads == 1 ? 0 : h)) * maxQBlocks + qb;
    const int itBegin = rowPtr[row], itEnd = rowPtr[row + 1];

#if WGMMA
    const unsigned sQ = (smem_addr(smem) + 1023u) & ~1023u;   // 1024-byte aligned wgmma tiles
#else
    const unsigned sQ = smem_addr(smem);
#endif
    const unsigned sK0 = sQ + BLOCK_M * HEAD_DIM * 2;
    const unsigned sV0 = sK0 + 2 * BLOCK_N * HEAD_DIM * 2;
    const unsigned kvStage = BLOCK_N * HEAD_DIM * 2;

    LOAD_TILE<BLOCK_M>(sQ, qBase, qStride, seq.qLen - qRow0, tid);
    cp_async_commit();
    if (itBegin < itEnd)
    {
        int kb = items[itBegin].x;
        LOAD_TILE<BLOCK_N>(sK0, kBase + (long long)kb * BLOCK_N * kStride, kStride, seq.kLen - kb * BLOCK_N, tid);
        LOAD_TILE<BLOCK_N>(sV0, vBase + (long long)kb * BLOCK_N * kStride, kStride, seq.kLen - kb * BLOCK_N, tid);
    }
    cp_async_commit();

    const int g = lane >> 2, t = lane & 3;
    const int warpRow = warp * 16 * MT;
    const float LOG2E = 1.4426950408889634f;
#if SOFTCAP || ALIBI
    const float UNIT = 1.f;               // scores are already base-2 logits
#else
    const float UNIT = scale * LOG2E;     // raw q·k → base-2 logit
#endif
    const int shift = seq.kLen - seq.qLen; // bottom-right alignment of query positions
#if ALIBI
    const float slope = alibiSlopes[h];
#endif

    float acc[MT][DTILES][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
    {
#pragma unroll
        for (int j = 0; j < DTILES; j++) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.f;
        mrow[mt][0] = mrow[mt][1] = NEG_INF;
        lrow[mt][0] = lrow[mt][1] = 0.f;
    }
#if QREG
    unsigned qf[MT][KSTEPS][4];
#endif

    for (int it = itBegin; it < itEnd; it++)
    {
        const int stage = (it - itBegin) & 1;
        if (it + 1 < itEnd)
        {
            int kb = items[it + 1].x;
            LOAD_TILE<BLOCK_N>(sK0 + (stage ^ 1) * kvStage, kBase + (long long)kb * BLOCK_N * kStride, kStride, seq.kLen - kb * BLOCK_N, tid);
            LOAD_TILE<BLOCK_N>(sV0 + (stage ^ 1) * kvStage, vBase + (long long)kb * BLOCK_N * kStride, kStride, seq.kLen - kb * BLOCK_N, tid);
        }
        cp_async_commit();
        const int2 item = items[it];
#if WSKIP
        // A partial block whose mask hides all of this warp's rows: the warp skips it (no max, sum or output change).
        bool warpEmpty = false;
        unsigned colLive = 0xfu;   // 16-key column groups some row of this warp sees
        if (item.y >= 0)
        {
            unsigned lo = 0, hi = 0;
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const unsigned long long w = bits[(long long)item.y * BLOCK_M + warpRow + mt * 16 + g + half * 8];
                    lo |= (unsigned)w;
                    hi |= (unsigned)(w >> 32);
                }
#pragma unroll
            for (int off = 4; off <= 16; off <<= 1)
            {
                lo |= __shfl_xor_sync(0xffffffffu, lo, off);
                hi |= __shfl_xor_sync(0xffffffffu, hi, off);
            }
            warpEmpty = (lo | hi) == 0u;
            colLive = ((lo & 0xffffu) ? 1u : 0u) | ((lo >> 16) ? 2u : 0u) | ((hi & 0xffffu) ? 4u : 0u) | ((hi >> 16) ? 8u : 0u);
        }
        (void)colLive;
#endif
#if WGSKIP
        // Warpgroup view of a partial block (warpgroup-uniform: its four warps read the same 64 words): empty for all of
        // its rows → skip; visible everywhere for all of its rows → no mask. Loaded before the wait so the reads overlap it.
        bool wgEmpty = false, wgFull = false;
        if (item.y >= 0)
        {
            const unsigned long long* wb = bits + (long long)item.y * BLOCK_M + (warp >> 2) * 64;
            const unsigned long long w0 = wb[lane], w1 = wb[lane + 32];
            wgEmpty = !__any_sync(0xffffffffu, (w0 | w1) != 0ull);
            wgFull = __all_sync(0xffffffffu, (w0 & w1) == ~0ull);
        }
#endif
        cp_async_wait<1>();
#if WGMMA
        fence_proxy_async();   // cp.async wrote the tiles (generic proxy); wgmma reads them (async proxy)
#endif
        __syncthreads();

#if QREG
        if (it == itBegin)
        {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++)
                    ldsm_x4(sQ + tile_offset(warpRow + mt * 16 + (lane & 15), 2 * kk + (lane >> 4)),
                            qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3]);
        }
#endif
        const unsigned sK = sK0 + stage * kvStage, sV = sV0 + stage * kvStage;
#if WSKIP
        if (!warpEmpty)
        {
#endif
#if WGSKIP
        if (!wgEmpty)
        {
#endif

        // S = Q Kᵀ for this warp's rows.
        float sc[MT][NTILES][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int j = 0; j < NTILES; j++) sc[mt][j][0] = sc[mt][j][1] = sc[mt][j][2] = sc[mt][j][3] = 0.f;
#if WGMMA
        // This warp's warpgroup (warps 4·wg .. 4·wg + 3) owns Q rows 64·wg .. 64·wg + 63.
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) wg_ss_n64(sc[0], desc_k<BLOCK_M>(sQ + (unsigned)((warp >> 2) * 64 * 128), kk), desc_k<BLOCK_N>(sK, kk));
        wg_commit();
        wg_wait<0>();
        wg_hold(sc[0]);
#else
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
        {
#if !QREG
            unsigned qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                ldsm_x4(sQ + tile_offset(warpRow + mt * 16 + (lane & 15), 2 * kk + (lane >> 4)), qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3]);
#endif
#pragma unroll
            for (int np = 0; np < NTILES / 2; np++)
            {
#if WSKIP && CSKIP
                if (!((colLive >> np) & 1u)) continue;
#endif
                unsigned b0, b1, b2, b3;
                ldsm_x4(sK + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                {
#if QREG
                    mma16816(sc[mt][2 * np], qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3], b0, b1);
                    mma16816(sc[mt][2 * np + 1], qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3], b2, b3);
#else
                    mma16816(sc[mt][2 * np], qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], b0, b1);
                    mma16816(sc[mt][2 * np + 1], qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], b2, b3);
#endif
                }
            }
        }
#endif

        // Score mods (when compiled in) turn raw q·k into base-2 logits; without them the raw score stays and the
        // scale is folded into the exponent's FMA below (LOGIT = raw · UNIT). Full blocks away from the key tail skip
        // the mask entirely; partial blocks read their row's mask word.
        const int kPos0 = item.x * BLOCK_N;
        const bool tail = kPos0 + BLOCK_N > seq.kLen;
#if SOFTCAP || ALIBI
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
#if ALIBI
                const int qPos = qRow0 + warpRow + mt * 16 + g + half * 8 + shift;
#endif
#pragma unroll
                for (int j = 0; j < NTILES; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        float x = sc[mt][j][half * 2 + e] * scale;
#if SOFTCAP
                        x = softcap * tanhf(x / softcap);
#endif
#if ALIBI
                        const int dist = qPos - (kPos0 + j * 8 + 2 * t + e);
                        x -= slope * (float)(dist < 0 ? -dist : dist);
#endif
                        sc[mt][j][half * 2 + e] = x * LOG2E;
                    }
            }
#endif
#if WGSKIP
        if ((item.y >= 0 && !wgFull) || tail)
#else
        if (item.y >= 0 || tail)
#endif
        {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int rIn = warpRow + mt * 16 + g + half * 8; // row within the query block
                    const int keysLeft = seq.kLen - kPos0;
#if MASK32
                    unsigned long long word = item.y >= 0 ? bits[(long long)item.y * BLOCK_M + rIn] : ~0ull;
                    if (keysLeft < 64) word &= (1ull << keysLeft) - 1ull;   // keys past the end (keysLeft >= 1)
                    // This thread's columns are j*8 + 2t + e: one shift by 2t, then every test is of a constant bit.
                    const unsigned lo = (unsigned)word >> (2 * t), hi = (unsigned)(word >> 32) >> (2 * t);
#pragma unroll
                    for (int j = 0; j < NTILES; j++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            if (((j < 4 ? lo : hi) & (1u << ((j & 3) * 8 + e))) == 0u) sc[mt][j][half * 2 + e] = NEG_INF;
#else
                    const unsigned long long word = item.y >= 0 ? bits[(long long)item.y * BLOCK_M + rIn] : ~0ull;
#pragma unroll
                    for (int j = 0; j < NTILES; j++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                        {
                            const int c = j * 8 + 2 * t + e;
                            const bool visible = ((word >> c) & 1ull) != 0ull && c < keysLeft;
                            if (!visible) sc[mt][j][half * 2 + e] = NEG_INF;
                        }
#endif
                }
        }
        (void)shift;

        // Online softmax: per row, new max, rescale, exponentiate (row sums stay per thread until the end).
#if RSKIP
        float corrs[MT][2];
        bool moved = false;
#endif
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
        {
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                float mx = mrow[mt][half];
#pragma unroll
                for (int j = 0; j < NTILES; j++) mx = fmaxf(mx, fmaxf(sc[mt][j][half * 2], sc[mt][j][half * 2 + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float base = mx == NEG_INF ? 0.f : mx * UNIT;
                const float corr = fast_exp2(mrow[mt][half] * UNIT - base);
                mrow[mt][half] = mx;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < NTILES; j++)
                {
                    float p0 = fast_exp2(fmaf(sc[mt][j][half * 2], UNIT, -base));
                    float p1 = fast_exp2(fmaf(sc[mt][j][half * 2 + 1], UNIT, -base));
                    sc[mt][j][half * 2] = p0;
                    sc[mt][j][half * 2 + 1] = p1;
                    sum += p0 + p1;
                }
                lrow[mt][half] = lrow[mt][half] * corr + sum;
#if RSKIP
                corrs[mt][half] = corr;
                moved |= corr != 1.f;
#else
#pragma unroll
                for (int j = 0; j < DTILES; j++)
                {
                    acc[mt][j][half * 2] *= corr;
                    acc[mt][j][half * 2 + 1] *= corr;
                }
#endif
            }
        }
#if RSKIP
        if (__any_sync(0xffffffffu, moved))
        {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < DTILES; j++)
                {
                    acc[mt][j][0] *= corrs[mt][0];
                    acc[mt][j][1] *= corrs[mt][0];
                    acc[mt][j][2] *= corrs[mt][1];
                    acc[mt][j][3] *= corrs[mt][1];
                }
        }
#endif

        // O += P V: the score accumulators of two adjacent key tiles are exactly an A fragment.
#if WGMMA
        {
            unsigned pw[BLOCK_N / 16][4];
#pragma unroll
            for (int kk = 0; kk < BLOCK_N / 16; kk++)
            {
                pw[kk][0] = pack2(sc[0][2 * kk][0], sc[0][2 * kk][1]);
                pw[kk][1] = pack2(sc[0][2 * kk][2], sc[0][2 * kk][3]);
                pw[kk][2] = pack2(sc[0][2 * kk + 1][0], sc[0][2 * kk + 1][1]);
                pw[kk][3] = pack2(sc[0][2 * kk + 1][2], sc[0][2 * kk + 1][3]);
            }
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BLOCK_N / 16; kk++) wg_rs_nd<1>(acc[0], pw[kk][0], pw[kk][1], pw[kk][2], pw[kk][3], desc_n<BLOCK_N>(sV, kk));
            wg_commit();
            wg_wait<0>();
            wg_hold(acc[0]);
        }
#else
#pragma unroll
        for (int kk = 0; kk < BLOCK_N / 16; kk++)
        {
#if WSKIP && CSKIP
            if (!((colLive >> kk) & 1u)) continue;
#endif
            unsigned pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
            {
                pa[mt][0] = pack2(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
                pa[mt][1] = pack2(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
                pa[mt][2] = pack2(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
                pa[mt][3] = pack2(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < DTILES / 2; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sV + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                {
                    mma16816(acc[mt][2 * dp], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], b0, b1);
                    mma16816(acc[mt][2 * dp + 1], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], b2, b3);
                }
            }
        }
#endif
#if WSKIP || WGSKIP
        }
#endif
        __syncthreads(); // every warp is done with this stage before the next iteration refills it
    }
    cp_async_wait<0>();
#if SEPI
    __syncthreads();   // every warp is past its last read of the Q tile, whose space now takes the output tile
#endif

    // Finish: full row sums, normalise, store output and LSE (natural log). Fully masked rows: 0 and −∞.
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
    {
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            float l = lrow[mt][half];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int rIn = warpRow + mt * 16 + g + half * 8;
            const int rSeq = qRow0 + rIn;
#if SEPI
            // Conflict-free: the 8 rows of a store sit in 8 different 16-byte chunk columns of the swizzled tile.
#pragma unroll
            for (int j = 0; j < DTILES; j++)
                asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(sQ + tile_offset(rIn, j) + 4 * t),
                             "r"(pack2(acc[mt][j][half * 2] * inv, acc[mt][j][half * 2 + 1] * inv)));
#endif
            if (rSeq < seq.qLen)
            {
#if !SEPI
                elem_t* out = O + ((long long)seq.batch * tokensQ + seq.qStart + rSeq) * qStride + (long long)h * HEAD_DIM;
#pragma unroll
                for (int j = 0; j < DTILES; j++)
                    *(unsigned*)(out + j * 8 + 2 * t) = pack2(acc[mt][j][half * 2] * inv, acc[mt][j][half * 2 + 1] * inv);
#endif
                if (t == 0 && Lse != 0)
                {
                    const float lse = l > 0.f ? (mrow[mt][half] * UNIT + __log2f(l)) * 0.6931471805599453f : NEG_INF;
                    Lse[((long long)seq.batch * heads + h) * tokensQ + seq.qStart + rSeq] = lse;
                }
            }
        }
    }
#if SEPI
    __syncthreads();
    elem_t* oBase = O + ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
#pragma unroll
    for (int i = 0; i < BLOCK_M * DC / NT; i++)
    {
        const int idx = tid + i * NT, r = idx / DC, c = idx % DC;
        if (qRow0 + r < seq.qLen)
        {
            uint4 v;
            asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(sQ + tile_offset(r, c)));
            *(uint4*)(oBase + (long long)r * qStride + c * 8) = v;
        }
    }
#endif
}
