// Attend: token-level sparse forward (vertical + slash plans: MInference, FlexPrefill, AnchorAttention) on tensor cores
// (mma.sync m16n8k16, bf16/fp16 in, float32 accumulation), in the style of flash_forward.cu.
//
// One CTA computes BLOCK_M = 64 query rows (4 warps x 16 rows) of one (sequence, query head): the plan's 64-row query
// block, so a block's own key columns apply to the whole CTA. The host (ColumnSparsePlan) gives each CTA a list of
// items, MInference's "block_count/block_offset + column_count/column_index" idea, kept exact:
//   - a key block of 64 keys that the slash diagonals touch: y = -1 when every pair is visible (no mask), y = 0
//     otherwise, with the mask carried as bitmaps: diag (127 bits, bit r - c + 63 set when the diagonal p - k of
//     row r and key c is one of the head's slash offsets) and cols (64 bits, a vertical or block column falls on key c),
//     so that visible(r, c) = k <= p && (cols bit c || diag bit r - c + 63);
//   - a tile of up to 64 gathered key columns (y = count): the keys listed at columns[x ..], gathered row by row into
//     shared memory with cp.async; visible(r, c) = c < count && key <= p. The host lists here only columns outside the
//     slash blocks, so every pair is computed once.
// K/V tiles are double buffered; online softmax in base 2, natural-log LSE; a row that sees nothing gets 0 and -inf.
//
// Defines (the host passes them to NVRTC): HEAD_DIM 64 | 128 | 256; ELEM_BF16 1 (bf16) or 0 (fp16); QREG 1 keeps the
// Q fragments in registers.

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif

#define NWARPS 4
#define NT (NWARPS * 32)
#define BLOCK_M 64
#define BLOCK_N 64
#define DC (HEAD_DIM / 8)
#define KSTEPS (HEAD_DIM / 16)
#define NTILES (BLOCK_N / 8)
#define DTILES (HEAD_DIM / 8)

typedef unsigned short elem_t;
#define NEG_INF __int_as_float(0xff800000)

#include "mma_tiles.cuh"

struct SeqInfo { int batch, qStart, qLen, kStart, kLen; };

// One unit of work of a CTA (32 bytes; ColumnSparsePlan.Item on the host).
struct SparseItem
{
    int x;                      // key block (y <= 0) or first index into columns (y > 0)
    int y;                      // -1 full block, 0 masked block, > 0 gathered column count
    unsigned long long diag0;   // diagonal bits 0..63 (masked block)
    unsigned long long diag1;   // diagonal bits 64..126
    unsigned long long cols;    // column bits (masked block)
};

// Loads K or V rows of one item into a swizzled tile: 64 consecutive keys of a block, or the gathered columns.
__device__ __forceinline__ void load_item(unsigned tile, const elem_t* base, long long stride, const SparseItem& item,
                                          const int* __restrict__ columns, int kLen, int tid)
{
#pragma unroll
    for (int i = 0; i < BLOCK_N * DC / NT; i++)
    {
        int idx = tid + i * NT;
        int r = idx / DC, c = idx % DC;
        int key;
        bool ok;
        if (item.y > 0)
        {
            ok = r < item.y;
            key = ok ? columns[item.x + r] : 0;
        }
        else
        {
            key = item.x * BLOCK_N + r;
            ok = key < kLen;
        }
        const elem_t* src = ok ? base + (long long)key * stride + c * 8 : base;
        cp_async16(tile + tile_offset(r, c), src, ok ? 16 : 0);
    }
}

extern "C" __global__ void __launch_bounds__(NT, 1)
attend_column_sparse_forward(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V,
    elem_t* __restrict__ O, float* __restrict__ Lse,
    const SeqInfo* __restrict__ seqs,
    const int* __restrict__ rowPtr,          // [(sequence * heads + head) * maxQBlocks + qBlock] -> first item; +1 -> end
    const SparseItem* __restrict__ items,
    const int* __restrict__ columns,         // gathered key indices (sequence-relative)
    int heads, int kvHeads, int tokensQ, int tokensK, int maxQBlocks, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x;
    const int qb = gridDim.y - 1 - blockIdx.y;   // the longest (causal) query blocks first
    const int s = blockIdx.z;
    const SeqInfo seq = seqs[s];
    if (qb * BLOCK_M >= seq.qLen) return;
    const int hk = h / (heads / kvHeads);
    const long long qStride = (long long)heads * HEAD_DIM, kStride = (long long)kvHeads * HEAD_DIM;
    const int qRow0 = qb * BLOCK_M;
    const elem_t* qBase = Q + ((long long)seq.batch * tokensQ + seq.qStart + qRow0) * qStride + (long long)h * HEAD_DIM;
    const elem_t* kBase = K + ((long long)seq.batch * tokensK + seq.kStart) * kStride + (long long)hk * HEAD_DIM;
    const elem_t* vBase = V + ((long long)seq.batch * tokensK + seq.kStart) * kStride + (long long)hk * HEAD_DIM;
    const int row = (s * heads + h) * maxQBlocks + qb;
    const int itBegin = rowPtr[row], itEnd = rowPtr[row + 1];

    const unsigned sQ = smem_addr(smem);
    const unsigned sK0 = sQ + BLOCK_M * HEAD_DIM * 2;
    const unsigned sV0 = sK0 + 2 * BLOCK_N * HEAD_DIM * 2;
    const unsigned kvStage = BLOCK_N * HEAD_DIM * 2;

    load_tile<BLOCK_M>(sQ, qBase, qStride, seq.qLen - qRow0, tid);
    cp_async_commit();
    if (itBegin < itEnd)
    {
        const SparseItem first = items[itBegin];
        load_item(sK0, kBase, kStride, first, columns, seq.kLen, tid);
        load_item(sV0, vBase, kStride, first, columns, seq.kLen, tid);
    }
    cp_async_commit();

    const int g = lane >> 2, t = lane & 3;
    const int warpRow = warp * 16;
    const float UNIT = scale * 1.4426950408889634f;   // raw q.k -> base-2 logit
    const int pos0 = qRow0 + seq.kLen - seq.qLen;      // key-axis position of the block's row 0 (bottom-right alignment)

    float acc[DTILES][4];
    float mrow[2], lrow[2];
#pragma unroll
    for (int j = 0; j < DTILES; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    mrow[0] = mrow[1] = NEG_INF;
    lrow[0] = lrow[1] = 0.f;
#if QREG
    unsigned qf[KSTEPS][4];
#endif

    for (int it = itBegin; it < itEnd; it++)
    {
        const int stage = (it - itBegin) & 1;
        if (it + 1 < itEnd)
        {
            const SparseItem next = items[it + 1];
            load_item(sK0 + (stage ^ 1) * kvStage, kBase, kStride, next, columns, seq.kLen, tid);
            load_item(sV0 + (stage ^ 1) * kvStage, vBase, kStride, next, columns, seq.kLen, tid);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

#if QREG
        if (it == itBegin)
        {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++)
                ldsm_x4(sQ + tile_offset(warpRow + (lane & 15), 2 * kk + (lane >> 4)), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
        }
#endif
        const unsigned sK = sK0 + stage * kvStage, sV = sV0 + stage * kvStage;

        // S = Q K^T for this warp's 16 rows.
        float sc[NTILES][4];
#pragma unroll
        for (int j = 0; j < NTILES; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
        {
#if QREG
            const unsigned a0 = qf[kk][0], a1 = qf[kk][1], a2 = qf[kk][2], a3 = qf[kk][3];
#else
            unsigned a0, a1, a2, a3;
            ldsm_x4(sQ + tile_offset(warpRow + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#endif
#pragma unroll
            for (int np = 0; np < NTILES / 2; np++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(sK + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816(sc[2 * np], a0, a1, a2, a3, b0, b1);
                mma16816(sc[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }

        // The mask: none on full blocks; bitmaps and causality on masked blocks; count and causality on column tiles.
        const SparseItem item = items[it];
        if (item.y >= 0)
        {
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int r = warpRow + g + half * 8;   // row within the query block
                const int p = pos0 + r;                 // its key-axis position
#pragma unroll
                for (int j = 0; j < NTILES; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        const int c = j * 8 + 2 * t + e;
                        bool visible;
                        if (item.y > 0)
                        {
                            visible = c < item.y && columns[item.x + (c < item.y ? c : 0)] <= p;
                        }
                        else
                        {
                            const int key = item.x * BLOCK_N + c;
                            const int d = r - c + 63;   // 0..126
                            const unsigned long long dword = d < 64 ? item.diag0 : item.diag1;
                            const bool onDiag = ((dword >> (d & 63)) & 1ull) != 0ull;
                            const bool onCol = ((item.cols >> c) & 1ull) != 0ull;
                            visible = key <= p && key < seq.kLen && (onDiag || onCol);
                        }
                        if (!visible) sc[j][half * 2 + e] = NEG_INF;
                    }
            }
        }

        // Online softmax per row (row sums stay per thread until the end).
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            float mx = mrow[half];
#pragma unroll
            for (int j = 0; j < NTILES; j++) mx = fmaxf(mx, fmaxf(sc[j][half * 2], sc[j][half * 2 + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float base = mx == NEG_INF ? 0.f : mx * UNIT;
            const float corr = fast_exp2(mrow[half] * UNIT - base);
            mrow[half] = mx;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < NTILES; j++)
            {
                float p0 = fast_exp2(fmaf(sc[j][half * 2], UNIT, -base));
                float p1 = fast_exp2(fmaf(sc[j][half * 2 + 1], UNIT, -base));
                sc[j][half * 2] = p0;
                sc[j][half * 2 + 1] = p1;
                sum += p0 + p1;
            }
            lrow[half] = lrow[half] * corr + sum;
#pragma unroll
            for (int j = 0; j < DTILES; j++)
            {
                acc[j][half * 2] *= corr;
                acc[j][half * 2 + 1] *= corr;
            }
        }

        // O += P V: the score accumulators of two adjacent key tiles are an A fragment.
#pragma unroll
        for (int kk = 0; kk < BLOCK_N / 16; kk++)
        {
            const unsigned pa0 = pack2(sc[2 * kk][0], sc[2 * kk][1]);
            const unsigned pa1 = pack2(sc[2 * kk][2], sc[2 * kk][3]);
            const unsigned pa2 = pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            const unsigned pa3 = pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < DTILES / 2; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sV + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(acc[2 * dp], pa0, pa1, pa2, pa3, b0, b1);
                mma16816(acc[2 * dp + 1], pa0, pa1, pa2, pa3, b2, b3);
            }
        }
        __syncthreads(); // every warp is done with this stage before the next iteration refills it
    }
    cp_async_wait<0>();

    // Finish: full row sums, normalise, store output and LSE (natural log). Rows that saw nothing: 0 and -inf.
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        float l = lrow[half];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int rSeq = qRow0 + warpRow + g + half * 8;
        if (rSeq < seq.qLen)
        {
            elem_t* out = O + ((long long)seq.batch * tokensQ + seq.qStart + rSeq) * qStride + (long long)h * HEAD_DIM;
#pragma unroll
            for (int j = 0; j < DTILES; j++)
                *(unsigned*)(out + j * 8 + 2 * t) = pack2(acc[j][half * 2] * inv, acc[j][half * 2 + 1] * inv);
            if (t == 0 && Lse != 0)
            {
                const float lse = l > 0.f ? (mrow[half] * UNIT + __log2f(l)) * 0.6931471805599453f : NEG_INF;
                Lse[((long long)seq.batch * heads + h) * tokensQ + seq.qStart + rSeq] = lse;
            }
        }
    }
}
