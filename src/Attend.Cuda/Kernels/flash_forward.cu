// Attend: FlashAttention-2 style forward on tensor cores (mma.sync m16n8k16, bf16/fp16 in, float32 accumulation).
//
// One CTA computes BLOCK_M query rows of one (sequence, query head) against the key blocks that the host's
// BlockMask lists for that query block: full blocks skip the mask, partial blocks read one 64-bit word of mask
// bits per row (evaluated on the host from the user's IMaskMod, so every mask the CPU accepts runs here), empty
// blocks are never listed and never visited. K/V tiles stream through shared memory with cp.async, double
// buffered; the softmax is online (base 2 inside, natural-log LSE out).
//
// Tiles (one per (sequence, query head, query block)) are numbered heads fastest, heaviest query blocks first. The grid
// is either one CTA per tile or persistent (fewer CTAs, each walking tiles c, 2G-1-c, 2G+c, ...: a snake over rounds of
// G tiles, so each CTA's share of heavy and light causal tiles evens out). A persistent CTA prefetches the next tile's
// first K/V tile during the last iteration of the current tile, and its Q tile right after the last QKᵀ, so the
// prologue latency of a tile (Q and the first K/V from device memory) hides behind the current tile's softmax, PV and
// epilogue. On a partial block, a warp whose 16·MT rows see none of the block's keys skips the block (exact: such a
// block changes neither the max, the sum nor the output of those rows).
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

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
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

struct SeqInfo { int batch, qStart, qLen, kStart, kLen; };

// One work tile: (sequence s, query head h, query block qb), its sequence's geometry and its range of block items.
struct Tile { SeqInfo seq; int h, qb, s, itBegin, itEnd; };

extern "C" __global__ void __launch_bounds__(NT, 1)
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
    float scale, float softcap, int sequences)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tileCount = heads * maxQBlocks * sequences;
    const int G = gridDim.x, cta = blockIdx.x;
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const int group = heads / kvHeads;

    const unsigned sQ = smem_addr(smem);
    const unsigned sK0 = sQ + BLOCK_M * HEAD_DIM * 2;
    const unsigned sV0 = sK0 + 2 * BLOCK_N * HEAD_DIM * 2;
    const unsigned kvStage = BLOCK_N * HEAD_DIM * 2;

    const int g = lane >> 2, t = lane & 3;
    const int warpRow = warp * 16 * MT;
    const float LOG2E = 1.4426950408889634f;
#if SOFTCAP || ALIBI
    const float UNIT = 1.f;               // scores are already base-2 logits
#else
    const float UNIT = scale * LOG2E;     // raw q·k → base-2 logit
#endif

    // The k-th tile of this CTA that has query rows (k counts rounds of G tiles; the snake order alternates direction).
    auto findTile = [&](int k, Tile& tl) -> int
    {
        for (;; k++)
        {
            const int i = k * G + ((k & 1) ? G - 1 - cta : cta);
            if (i >= tileCount) return -1;
            tl.h = i % heads;
            const int r = i / heads;
            tl.qb = maxQBlocks - 1 - r % maxQBlocks;  // heaviest (causal) query blocks first
            tl.s = r / maxQBlocks;
            tl.seq = seqs[tl.s];
            if (tl.qb * BLOCK_M >= tl.seq.qLen) continue;
            const int row = ((maskPerSequence ? tl.s : 0) * maskHeads + (maskHeads == 1 ? 0 : tl.h)) * maxQBlocks + tl.qb;
            tl.itBegin = rowPtr[row];
            tl.itEnd = rowPtr[row + 1];
            return k;
        }
    };
    auto loadQ = [&](const Tile& tl)
    {
        const elem_t* qBase = Q + ((long long)tl.seq.batch * tokensQ + tl.seq.qStart + tl.qb * BLOCK_M) * qStride + (long long)tl.h * HEAD_DIM;
        load_tile<BLOCK_M>(sQ, qBase, qStride, tl.seq.qLen - tl.qb * BLOCK_M, tid);
    };
    auto loadKV = [&](const Tile& tl, int it, int stage)
    {
        const int kb = items[it].x;
        const long long at = ((long long)tl.seq.batch * tokensK + tl.seq.kStart + (long long)kb * BLOCK_N) * kStride + (long long)(tl.h / group) * HEAD_DIM;
        load_tile<BLOCK_N>(sK0 + stage * kvStage, K + at, kStride, tl.seq.kLen - kb * BLOCK_N, tid);
        load_tile<BLOCK_N>(sV0 + stage * kvStage, V + at, kStride, tl.seq.kLen - kb * BLOCK_N, tid);
    };

    Tile cur, nxt;
    int k = findTile(0, cur);
    bool loaded = false;   // Q and the first K/V tile of `cur` are already on their way (prefetched by the previous tile)
    int n = 0;             // iterations so far over all tiles: the K/V stage parity
    while (k >= 0)
    {
        if (!loaded && cur.itBegin < cur.itEnd)
        {
            loadQ(cur);
            loadKV(cur, cur.itBegin, n & 1);
            cp_async_commit();
        }
        const int kNext = findTile(k + 1, nxt);
        const bool prefetch = kNext >= 0 && nxt.itBegin < nxt.itEnd;
        bool prefetched = false;
        const int h = cur.h, qRow0 = cur.qb * BLOCK_M;
        const int shift = cur.seq.kLen - cur.seq.qLen; // bottom-right alignment of query positions
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

        for (int it = cur.itBegin; it < cur.itEnd; it++, n++)
        {
            const int stage = n & 1;
            const bool last = it + 1 == cur.itEnd;
            if (!last) loadKV(cur, it + 1, stage ^ 1);
            else if (prefetch) loadKV(nxt, nxt.itBegin, stage ^ 1);
            cp_async_commit();

            // A partial block whose mask hides all of this warp's rows is skipped by the warp (exact).
            const int2 item = items[it];
            bool warpEmpty = false;
            if (item.y >= 0)
            {
                unsigned any = 0;
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int half = 0; half < 2; half++)
                    {
                        const unsigned long long w = bits[(long long)item.y * BLOCK_M + warpRow + mt * 16 + g + half * 8];
                        any |= (unsigned)w | (unsigned)(w >> 32);
                    }
                any |= __shfl_xor_sync(0xffffffffu, any, 4);
                any |= __shfl_xor_sync(0xffffffffu, any, 8);
                any |= __shfl_xor_sync(0xffffffffu, any, 16);
                warpEmpty = any == 0u;
            }

            cp_async_wait<1>();
            __syncthreads();

#if QREG
            if (it == cur.itBegin)
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

            // S = Q Kᵀ for this warp's rows.
            float sc[MT][NTILES][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < NTILES; j++) sc[mt][j][0] = sc[mt][j][1] = sc[mt][j][2] = sc[mt][j][3] = 0.f;
            if (!warpEmpty)
            {
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
            }

            // Last block of the tile: once every warp is past its last read of the Q tile, bring in the next tile's Q.
            if (last && prefetch)
            {
                __syncthreads();
                loadQ(nxt);
                cp_async_commit();
                prefetched = true;
            }

            if (!warpEmpty)
            {
                // Score mods (when compiled in) turn raw q·k into base-2 logits; without them the raw score stays and the
                // scale is folded into the exponent's FMA below (LOGIT = raw · UNIT). Full blocks away from the key tail
                // skip the mask entirely; partial blocks read their row's mask word.
                const int kPos0 = item.x * BLOCK_N;
                const int keysLeft = cur.seq.kLen - kPos0;
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
                if (item.y >= 0 || keysLeft < BLOCK_N)
                {
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int half = 0; half < 2; half++)
                        {
                            const int rIn = warpRow + mt * 16 + g + half * 8; // row within the query block
                            unsigned long long word = item.y >= 0 ? bits[(long long)item.y * BLOCK_M + rIn] : ~0ull;
                            if (keysLeft < 64) word &= (1ull << keysLeft) - 1ull;   // keys past the end (keysLeft ≥ 1)
                            // This thread's columns are j*8 + 2t + e: shift by 2t once, then every test is a constant bit.
                            const unsigned lo = (unsigned)word >> (2 * t), hi = (unsigned)(word >> 32) >> (2 * t);
#pragma unroll
                            for (int j = 0; j < NTILES; j++)
#pragma unroll
                                for (int e = 0; e < 2; e++)
                                {
                                    const unsigned w = j < 4 ? lo : hi;
                                    if ((w & (1u << ((j & 3) * 8 + e))) == 0u) sc[mt][j][half * 2 + e] = NEG_INF;
                                }
                        }
                }

                // Online softmax: per row, new max, rescale, exponentiate (row sums stay per thread until the end).
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
#pragma unroll
                        for (int j = 0; j < DTILES; j++)
                        {
                            acc[mt][j][half * 2] *= corr;
                            acc[mt][j][half * 2 + 1] *= corr;
                        }
                    }
                }

                // O += P V: the score accumulators of two adjacent key tiles are exactly an A fragment.
#pragma unroll
                for (int kk = 0; kk < BLOCK_N / 16; kk++)
                {
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
            }
            (void)shift;
            __syncthreads(); // every warp is done with this stage before the next iteration refills it
        }

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
                if (rSeq < cur.seq.qLen)
                {
                    elem_t* out = O + ((long long)cur.seq.batch * tokensQ + cur.seq.qStart + rSeq) * qStride + (long long)h * HEAD_DIM;
#pragma unroll
                    for (int j = 0; j < DTILES; j++)
                        *(unsigned*)(out + j * 8 + 2 * t) = pack2(acc[mt][j][half * 2] * inv, acc[mt][j][half * 2 + 1] * inv);
                    if (t == 0 && Lse != 0)
                    {
                        const float lse = l > 0.f ? (mrow[mt][half] * UNIT + __log2f(l)) * 0.6931471805599453f : NEG_INF;
                        Lse[((long long)cur.seq.batch * heads + h) * tokensQ + cur.seq.qStart + rSeq] = lse;
                    }
                }
            }
        }
        loaded = prefetched;
        k = kNext;
        cur = nxt;
    }
    cp_async_wait<0>();
}
