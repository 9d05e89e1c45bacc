// Attend: the backward of the chunked delta rule and gated delta rule (scalar gate) of linear_delta_chunk.cu, on tensor
// cores (mma.sync m16n8k16, bf16/fp16 operands, float32 accumulation). The method is flash-linear-attention's
// decomposition of chunk_gated_delta_rule's backward (recompute w, u and the chunk states; a reverse sweep for the
// state gradient and the corrected dδ; per chunk dq, dk, dw; the WY backward for dk, dv, dβ, dg); the kernels are ours.
//
// Forward, per 64-token chunk (b: the in-chunk cumulative log gate, inclusive; D_ij = e^{b_i − b_j}; S: the state at
// the chunk's start; s: the scale):
//   L_ij = β_i D_ij k_i·k_j (j < i),  T = (I + L)⁻¹,  w = T diag(β e^b) K,  u = T diag(β) V,  δ = u − w S,
//   o = s (e^b ⊙ Q S + A δ) with A = tril(Q Kᵀ ⊙ D),   S' = e^{b_C} S + K̂ᵀ δ with K̂_j = e^{b_C − b_j} k_j.
// Backward, X = dL/dS' (the state gradient at the chunk's end):
//   dδ = s Aᵀ dO + K̂ X                                          (attend_delta_bwd_dstate, the reverse chain)
//   dL/dS = e^{b_C} X + s (e^b ⊙ Q)ᵀ dO − wᵀ dδ                   (same kernel: the previous chunk's X)
//   dq = s e^b ⊙ dO Sᵀ + (s dA ⊙ D) K,  dA = tril(dO δᵀ)          (attend_delta_bwd_chunk, every chunk at once)
//   dk = (s dA ⊙ D)ᵀ Q + e^{b_C − b} ⊙ δ Xᵀ + diag(β e^b) Tᵀ dw + (E + Eᵀ) K
//   dw = −dδ Sᵀ,  dv = diag(β) Tᵀ dδ,  G = dL/dL = −Tᵀ (dw wᵀ + dδ uᵀ) (strictly lower),  E = G ⊙ β_i D_ij
//   dβ_i = e^{b_i} k_i·(Tᵀ dw)_i + v_i·(Tᵀ dδ)_i + Σ_j G_ij D_ij k_i·k_j
//   db_i (the cumulative gate) gathers every place b appears; d log α_r = Σ_{i ≥ r in the chunk} db_i.
// (dT Tᵀ = dw Mᵀ Tᵀ + du Nᵀ Tᵀ = dw wᵀ + du uᵀ with M = diag(β e^b) K, N = diag(β) V: the WY backward needs w and u,
// which the forward's first kernel kept, and not a second product with T.)
//
// attend_delta_bwd_dstate: one CTA per (sequence, query head, 16 value columns), 4 warps, walking the chunks last to
// first with the [DK, 16] slice of X in float32 registers and a rounded copy in shared memory (as attend_delta_chunk
// walks them forward); it writes X at each chunk's end (the element type) and dδ (the element type) for the chunk kernel,
// and dS0. attend_delta_bwd_chunk: one CTA per (chunk, query head), CW warps (8 by default: two per 16 token rows, each
// with half of every product's columns; 4: one per 16 rows), every tile of the chunk in shared memory (about 201 KB at
// DK = DV = 128: one CTA per SM); T comes from the forward's first kernel. The host runs the recomputed forward chain
// (linear_delta_chunk.cu with CHAIN_NOOUT) on a side stream while the reverse chain runs: both need only w and A.
// Value dims past DV: the chunk kernel runs one CTA per (chunk, query head, DV value columns), grid.z = dv / DV. Every
// gradient but dv is linear in the value columns' contributions (dA = dO δᵀ, dO Sᵀ, δ Xᵀ, dw = −dδ Sᵀ, dδ uᵀ, v·(Tᵀ dδ)
// and ⟨S, X⟩ are sums over the columns, and dq, dk, dβ, d log α are linear in those), so each CTA adds its block's share
// of dq, dk, dβ and d log α atomically into buffers the host zeroed, and writes dv for its own columns. The reverse chain
// already takes any dv (16 value columns per CTA) and never reads DV.
//
// Defines: DK (64 | 128), DV (64 | 128; the chunk kernel's value block), WIDE (0: the tensors' value dim is DV; 1: it is
// DV · gridDim.z, a CTA per value block), ELEM_BF16 (1 bf16, 0 fp16), GATE (0 none, 1 scalar gate or
// fixed γ, 2 the channel gate of KDA: the reverse chain reads Q̃, K̂ and e^{b_C} from attend_kda_prepare where the scalar
// gates read q, k and the raw gates, and the chunk kernel is attend_kda_bwd_chunk at the end of this file), CW (4 | 8: the chunk kernel's warps; default 8). mma_tiles.cuh is expanded in place by KernelCompiler.Source.

#ifndef DK
#error "DK must be defined"
#endif
#ifndef WIDE
#define WIDE 0
#endif
#ifndef DV
#define DV 128
#endif

#define NWARPS 4
#define NT (NWARPS * 32)
#define CHUNK 64
#define HEAD_DIM DK
#define DC (DK / 8)
#define KS (DK / 16)
#define BV 16
#define VC (BV / 8)
#define MS (DK / 64)

typedef unsigned short elem_t;

#include "mma_tiles.cuh"
#include "linear_elem.cuh"

struct DeltaRow { int seq, tokStart, len, pad; };

__device__ __forceinline__ unsigned lds32(unsigned addr)
{
    unsigned v;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr));
    return v;
}

__device__ __forceinline__ void sts32(unsigned addr, unsigned v) { asm volatile("st.shared.b32 [%0], %1;" :: "r"(addr), "r"(v)); }

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][COLS] tile (COLS a multiple of 64).
template <int COLS>
__device__ __forceinline__ unsigned toff(int row, int chunk)
{
    return (unsigned)((row * COLS + ((chunk ^ (row & 7)) << 3)) * 2);
}

// Byte offset in a swizzled [rows][BV] tile (the value slices of the reverse chain), as linear_delta_chunk.cu's boff.
__device__ __forceinline__ unsigned boff(int row, int chunk)
{
    return (unsigned)((row * BV + ((chunk ^ ((row / (8 / VC)) & (VC - 1))) << 3)) * 2);
}

// Copies `rows` rows of COLS elements (global row stride `stride` elements) into a swizzled [rows][COLS] tile; rows
// past `valid` are zero-filled.
template <int COLS, int THREADS = NT>
__device__ __forceinline__ void load_rows(unsigned tile, const elem_t* g, long long stride, int rows, int valid, int tid)
{
    for (int idx = tid; idx < rows * (COLS / 8); idx += THREADS)
    {
        const int r = idx / (COLS / 8), c = idx % (COLS / 8);
        const bool ok = r < valid;
        const elem_t* src = ok ? g + (long long)r * stride + c * 8 : g;
        cp_async16(tile + toff<COLS>(r, c), src, ok ? 16 : 0);
    }
}

// CHUNK rows of a [rows][BV] value slice into a boff tile; zero past `valid`.
__device__ __forceinline__ void load_slice(unsigned tile, const elem_t* g, long long stride, int valid, int tid)
{
    for (int idx = tid; idx < CHUNK * VC; idx += NT)
    {
        const int r = idx / VC, c = idx % VC;
        const bool ok = r < valid;
        cp_async16(tile + boff(r, c), ok ? g + (long long)r * stride + c * 8 : g, ok ? 16 : 0);
    }
}

__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(dst), "l"(src), "r"(bytes));
}

// The in-chunk cumulative log decay: lane l holds b[2l] and b[2l+1]. Every lane of the warp must call this.
__device__ __forceinline__ float bget(float b0, float b1, int x)
{
    const float e = __shfl_sync(0xffffffffu, b0, x >> 1), o = __shfl_sync(0xffffffffu, b1, x >> 1);
    return (x & 1) ? o : e;
}

// acc[2·N16][4] += A · B for this warp's 16 rows starting at m0, over the 16-wide steps k0 ≤ kk < k1 of the inner
// dimension. A is stored [M][K] (ATR false) or [K][M] (ATR true: the product takes its transpose) in an ACOLS-wide
// tile; B is stored [K][N] (BKM true) or [N][K] (BKM false: the product takes Yᵀ of the stored Y) in a BCOLS-wide tile.
// The product's N16 16-column blocks start at block n16 of B (0: its first column).
template <int N16, int ACOLS, bool ATR, int BCOLS, bool BKM>
__device__ __forceinline__ void mma_rows(float (*acc)[4], unsigned aT, int m0, unsigned bT, int k0, int k1, int lane, int n16 = 0)
{
    for (int kk = k0; kk < k1; kk++)
    {
        unsigned a0, a1, a2, a3;
        if (ATR) ldsm_x4_t(aT + toff<ACOLS>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), m0 / 8 + ((lane >> 3) & 1)), a0, a1, a2, a3);
        else ldsm_x4(aT + toff<ACOLS>(m0 + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
        for (int np = 0; np < N16; np++)
        {
            unsigned b0, b1, b2, b3;
            if (BKM) ldsm_x4_t(bT + toff<BCOLS>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * (np + n16) + (lane >> 4)), b0, b1, b2, b3);
            else ldsm_x4(bT + toff<BCOLS>((np + n16) * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
            mma16816(acc[2 * np], a0, a1, a2, a3, b0, b1);
            mma16816(acc[2 * np + 1], a0, a1, a2, a3, b2, b3);
        }
    }
}

template <int N8>
__device__ __forceinline__ void zero_acc(float (*acc)[4])
{
#pragma unroll
    for (int j = 0; j < N8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

// Σ over this thread's columns of x ⊙ acc for accumulator row half `half` (row g or g + 8), x a row of a swizzled
// [rows][COLS] tile, acc's 8-column blocks starting at block j0 of the row; the caller reduces over the quad.
template <int N8, int COLS>
__device__ __forceinline__ float row_dot(const float (*acc)[4], unsigned tile, int row, int half, int t, int j0 = 0)
{
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < N8; j++)
    {
        const unsigned x = lds32(tile + toff<COLS>(row, j0 + j) + 4 * t);
        s = fmaf(elem_lo(x), acc[j][2 * half], s);
        s = fmaf(elem_hi(x), acc[j][2 * half + 1], s);
    }
    return s;
}

__device__ __forceinline__ float quad_sum(float x)
{
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// ---------------------------------------------------------------------------------------------------------------
// attend_delta_bwd_dstate: the reverse chain over each sequence's chunks.

#define R_Q_BYTES (CHUNK * DK * 2)
#define R_O_BYTES (CHUNK * BV * 2)
#define R_STAGE (3 * R_Q_BYTES + CHUNK * 64 * 2 + R_O_BYTES + CHUNK * 4)   // q, k, w, A, the dO slice, raw gates
#define R_OFF_Q 0
#define R_OFF_K (R_OFF_Q + R_Q_BYTES)
#define R_OFF_W (R_OFF_K + R_Q_BYTES)
#define R_OFF_A (R_OFF_W + R_Q_BYTES)
#define R_OFF_O (R_OFF_A + CHUNK * 64 * 2)
#define R_OFF_G (R_OFF_O + R_O_BYTES)
#define R_OFF_X (2 * R_STAGE)                        // X in the element type, 2 buffers of [DK][BV]
#define R_OFF_D (R_OFF_X + 2 * DK * BV * 2)          // dδ, [64][BV]
#define R_SMEM_BYTES (R_OFF_D + R_O_BYTES)

extern "C" __global__ void __launch_bounds__(NT)
attend_delta_bwd_dstate(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ W, const elem_t* __restrict__ A,
    const elem_t* __restrict__ dO, const float* __restrict__ gate, const float* __restrict__ headLogDecay,
    const float* __restrict__ dST, float* __restrict__ dS0,   // [N, H, DK, dv] or null
    elem_t* __restrict__ dHck,     // [chunks, H, DK, dv]: X at each chunk's end
    elem_t* __restrict__ dDelta,   // [tokens, H, dv]
    const DeltaRow* __restrict__ seqs, int heads, int kvHeads, int dv, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, wq = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y;
    const int col0 = blockIdx.x * BV;
    const DeltaRow sq = seqs[blockIdx.z];
    const int hk = h / (heads / kvHeads);
#if GATE == 2
    // The channel gate: Q is Q̃ and K is K̂, both [tokens, H, DK] per query head (attend_kda_prepare wrote them).
    const long long qStride = (long long)heads * DK, kStride = qStride, oStride = (long long)heads * dv;
    const long long tok0 = sq.tokStart;
    const elem_t* qBase = Q + tok0 * qStride + (long long)h * DK;
    const elem_t* kBase = K + tok0 * kStride + (long long)h * DK;
    (void)hk;
#else
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK, oStride = (long long)heads * dv;
    const long long tok0 = sq.tokStart;
    const elem_t* qBase = Q + tok0 * qStride + (long long)h * DK;
    const elem_t* kBase = K + tok0 * kStride + (long long)hk * DK;
#endif
    const elem_t* wBase = W + tok0 * qStride + (long long)h * DK;
    const elem_t* aBase = A + (tok0 * heads + h) * 64;
    const elem_t* oBase = dO + tok0 * oStride + (long long)h * dv + col0;
    const unsigned base = smem_addr(smem);
    const int stateRow0 = wq * 16 * MS;
    const int wr = wq * 16;
    const long long stateRowBase = ((long long)sq.seq * heads + h) * DK;

    float st[MS][VC][4];
#pragma unroll
    for (int m = 0; m < MS; m++)
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
            for (int j = 0; j < VC; j++)
            {
                float2 x = make_float2(0.f, 0.f);
                if (dST != 0) x = *(const float2*)(dST + (stateRowBase + row) * dv + col0 + 8 * j + 2 * t);
                st[m][j][2 * half] = x.x;
                st[m][j][2 * half + 1] = x.y;
                sts32(base + R_OFF_X + boff(row, j) + 4 * t, pack2(x.x, x.y));
            }
        }

    const int nChunks = (sq.len + CHUNK - 1) / CHUNK;
    if (nChunks > 0)
    {
        const int c = nChunks - 1;
        const int valid = sq.len - c * CHUNK;
        const long long r0 = (long long)c * CHUNK;
        load_tile<CHUNK>(base + R_OFF_Q, qBase + r0 * qStride, qStride, valid, tid);
        load_tile<CHUNK>(base + R_OFF_K, kBase + r0 * kStride, kStride, valid, tid);
        load_tile<CHUNK>(base + R_OFF_W, wBase + r0 * qStride, qStride, valid, tid);
        load_rows<64>(base + R_OFF_A, aBase + r0 * heads * 64, (long long)heads * 64, CHUNK, valid, tid);
        load_slice(base + R_OFF_O, oBase + r0 * oStride, oStride, valid, tid);
#if GATE == 1
        if (headLogDecay == 0 && tid < CHUNK)
            cp_async4(base + R_OFF_G + tid * 4, tid < valid ? gate + (tok0 + r0 + tid) * heads + h : gate, tid < valid ? 4 : 0);
#endif
    }
    cp_async_commit();

    for (int i = 0; i < nChunks; i++)
    {
        const int c = nChunks - 1 - i;
        const int stage = i & 1;
        const int c0 = c * CHUNK;
        const int len = sq.len - c0 < CHUNK ? sq.len - c0 : CHUNK;
        cp_async_wait<0>();
        __syncthreads();
        if (c > 0)
        {
            // The previous chunk is a full one (only a sequence's last chunk is partial).
            const long long r0 = (long long)(c - 1) * CHUNK;
            const unsigned ns = base + (stage ^ 1) * R_STAGE;
            load_tile<CHUNK>(ns + R_OFF_Q, qBase + r0 * qStride, qStride, CHUNK, tid);
            load_tile<CHUNK>(ns + R_OFF_K, kBase + r0 * kStride, kStride, CHUNK, tid);
            load_tile<CHUNK>(ns + R_OFF_W, wBase + r0 * qStride, qStride, CHUNK, tid);
            load_rows<64>(ns + R_OFF_A, aBase + r0 * heads * 64, (long long)heads * 64, CHUNK, CHUNK, tid);
            load_slice(ns + R_OFF_O, oBase + r0 * oStride, oStride, CHUNK, tid);
#if GATE == 1
            if (headLogDecay == 0 && tid < CHUNK) cp_async4(ns + R_OFF_G + tid * 4, gate + (tok0 + r0 + tid) * heads + h, 4);
#endif
        }
        cp_async_commit();

        // X at this chunk's end: the chunk kernel's checkpoint (sq.pad is the sequence's first chunk index).
        {
            elem_t* xb = dHck + ((long long)(sq.pad + c) * heads + h) * DK * dv + col0;
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                    for (int j = 0; j < VC; j++)
                        *(unsigned*)(xb + (long long)row * dv + 8 * j + 2 * t) = pack2(st[m][j][2 * half], st[m][j][2 * half + 1]);
                }
        }

        const unsigned st0 = base + stage * R_STAGE;
        const unsigned sQ = st0 + R_OFF_Q, sK = st0 + R_OFF_K, sW = st0 + R_OFF_W, sA = st0 + R_OFF_A, sO = st0 + R_OFF_O;
        const unsigned sX = base + R_OFF_X + stage * DK * BV * 2;
        const unsigned sD = base + R_OFF_D;

        float b0 = 0.f, b1 = 0.f;
#if GATE == 1
        {
            const int i0 = 2 * lane, i1 = 2 * lane + 1;
            if (headLogDecay != 0)
            {
                const float lg = headLogDecay[h];
                b0 = lg * (float)(i0 < len ? i0 + 1 : len);
                b1 = lg * (float)(i1 < len ? i1 + 1 : len);
            }
            else
            {
                const float2 a = *(const float2*)(smem + stage * R_STAGE + R_OFF_G + i0 * 4);
                const float pair = a.x + a.y;
                float scan = pair;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1)
                {
                    const float y = __shfl_up_sync(0xffffffffu, scan, o);
                    if (lane >= o) scan += y;
                }
                b0 = scan - pair + a.x;
                b1 = scan;
            }
        }
#endif
        const float bLast = __shfl_sync(0xffffffffu, b1, 31);
#if GATE == 2
        // The chunk's decay e^{b_C} of this thread's X rows (channels), read now so the load is off the chain. With the
        // channel gate b0 = b1 = 0 above: K̂ and Q̃ carry their decays, so the per-token factors below are 1 and s.
        float rowDecay[MS][2];
        {
            const float* dec = gate + ((long long)(sq.pad + c) * heads + h) * DK;
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int half = 0; half < 2; half++) rowDecay[m][half] = __ldg(dec + stateRow0 + 16 * m + g + 8 * half);
        }
#endif

        // 1. dδ = s Aᵀ dO + K̂ X for this warp's 16 token rows.
        float ka[VC][4], oa[VC][4];
        zero_acc<VC>(ka);
        zero_acc<VC>(oa);
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sK + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < VC / 2; dp++)
            {
                unsigned s0, s1, s2, s3;
                ldsm_x4_t(sX + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), s0, s1, s2, s3);
                mma16816(ka[2 * dp], a0, a1, a2, a3, s0, s1);
                mma16816(ka[2 * dp + 1], a0, a1, a2, a3, s2, s3);
            }
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk < wq) continue;   // Aᵀ_ij = A_ji is zero for j < i
            unsigned a0, a1, a2, a3;
            ldsm_x4_t(sA + toff<64>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * wq + ((lane >> 3) & 1)), a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < VC / 2; dp++)
            {
                unsigned d0, d1, d2, d3;
                ldsm_x4_t(sO + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), d0, d1, d2, d3);
                mma16816(oa[2 * dp], a0, a1, a2, a3, d0, d1);
                mma16816(oa[2 * dp + 1], a0, a1, a2, a3, d2, d3);
            }
        }
        {
            const float f0 = exp_e(bLast - bget(b0, b1, wr + g)), f1 = exp_e(bLast - bget(b0, b1, wr + g + 8));
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = wr + g + 8 * half;
                const float f = half == 0 ? f0 : f1;
#pragma unroll
                for (int j = 0; j < VC; j++)
                {
                    const unsigned d = pack2(scale * oa[j][2 * half] + f * ka[j][2 * half], scale * oa[j][2 * half + 1] + f * ka[j][2 * half + 1]);
                    sts32(sD + boff(row, j) + 4 * t, d);
                    if (row < len) *(unsigned*)(dDelta + (tok0 + c0 + row) * oStride + (long long)h * dv + col0 + 8 * j + 2 * t) = d;
                }
            }
        }
        __syncthreads();

        // 2. X ← e^{b_C} X + s (e^b ⊙ Q)ᵀ dO − wᵀ dδ (the channel gate: Diag(e^{b_C}) X + s Q̃ᵀ dO − wᵀ dδ).
#if GATE == 1
        {
            const float f = exp_e(bLast);
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int j = 0; j < VC; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) st[m][j][e] *= f;
        }
#elif GATE == 2
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int j = 0; j < VC; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[m][j][e] *= rowDecay[m][e >> 1];
#endif
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            const int tk = kk * 16 + 2 * t;
            const float f0 = scale * exp_e(bget(b0, b1, tk)), f1 = scale * exp_e(bget(b0, b1, tk + 1));
            const float f8 = scale * exp_e(bget(b0, b1, tk + 8)), f9 = scale * exp_e(bget(b0, b1, tk + 9));
            unsigned d0, d1, d2, d3, e0, e1, e2, e3;
            ldsm_x4_t(sO + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4), d0, d1, d2, d3);
            ldsm_x4_t(sD + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4), e0, e1, e2, e3);
#pragma unroll
            for (int m = 0; m < MS; m++)
            {
                unsigned q0, q1, q2, q3, w0, w1, w2, w3;
                ldsm_x4_t(sQ + tile_offset(kk * 16 + (lane & 7) + ((lane >> 4) << 3), (stateRow0 + 16 * m) / 8 + ((lane >> 3) & 1)), q0, q1, q2, q3);
                ldsm_x4_t(sW + tile_offset(kk * 16 + (lane & 7) + ((lane >> 4) << 3), (stateRow0 + 16 * m) / 8 + ((lane >> 3) & 1)), w0, w1, w2, w3);
                q0 = pack2(elem_lo(q0) * f0, elem_hi(q0) * f1);
                q1 = pack2(elem_lo(q1) * f0, elem_hi(q1) * f1);
                q2 = pack2(elem_lo(q2) * f8, elem_hi(q2) * f9);
                q3 = pack2(elem_lo(q3) * f8, elem_hi(q3) * f9);
                // −wᵀ: flip the sign bits of both 16-bit halves (bf16 and fp16 alike).
                w0 ^= 0x80008000u; w1 ^= 0x80008000u; w2 ^= 0x80008000u; w3 ^= 0x80008000u;
                mma16816(st[m][0], q0, q1, q2, q3, d0, d1);
                mma16816(st[m][1], q0, q1, q2, q3, d2, d3);
                mma16816(st[m][0], w0, w1, w2, w3, e0, e1);
                mma16816(st[m][1], w0, w1, w2, w3, e2, e3);
            }
        }

        // 3. The previous chunk's X tile, in the other buffer.
        const unsigned sNext = base + R_OFF_X + (stage ^ 1) * DK * BV * 2;
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                for (int j = 0; j < VC; j++) sts32(sNext + boff(row, j) + 4 * t, pack2(st[m][j][2 * half], st[m][j][2 * half + 1]));
            }
    }
    cp_async_wait<0>();

    if (dS0 != 0)
    {
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                for (int j = 0; j < VC; j++)
                    *(float2*)(dS0 + (stateRowBase + row) * dv + col0 + 8 * j + 2 * t) = make_float2(st[m][j][2 * half], st[m][j][2 * half + 1]);
            }
    }
#if GATE == 0
    (void)gate;
    (void)headLogDecay;
#elif GATE == 2
    (void)headLogDecay;
#endif
}

#if GATE != 2
// The channel gate (KDA, GATE 2) has its own chunk kernel, attend_kda_bwd_chunk, at the end of this file: its per-channel
// decays inside dA ⊙ D and the L terms, and its gate gradient per channel, need another shared-memory plan.
// ---------------------------------------------------------------------------------------------------------------
// attend_delta_bwd_chunk: per (chunk, query head) dq, dk, dv, dβ and d log α.

#define B_QB (CHUNK * DK * 2)
#define B_VB (CHUNK * DV * 2)
#define B_SB (DK * DV * 2)
#define B_MB (CHUNK * 64 * 2)
#define B_OFF_Q 0
#define B_OFF_K (B_OFF_Q + B_QB)
#define B_OFF_V (B_OFF_K + B_QB)
#define B_OFF_DO (B_OFF_V + B_VB)
#define B_OFF_DN (B_OFF_DO + B_VB)      // δ
#define B_OFF_DD (B_OFF_DN + B_VB)      // dδ
#define B_OFF_S (B_OFF_DD + B_VB)       // S [DK][DV]; after phase B: w [64][DK] and u [64][DV]
#define B_OFF_X (B_OFF_S + B_SB)        // X [DK][DV]
#define B_OFF_DW (B_OFF_X + B_SB)       // dw [64][DK]
#define B_OFF_T (B_OFF_DW + B_QB)       // T [64][64] (the forward's first kernel wrote it)
#define B_OFF_M1 (B_OFF_T + B_MB)       // s dA ⊙ D, then Z = dw wᵀ + dδ uᵀ
#define B_OFF_M2 (B_OFF_M1 + B_MB)      // E
#define B_OFF_B (B_OFF_M2 + B_MB)
#define B_OFF_BETA (B_OFF_B + CHUNK * 4)
#define B_OFF_DB (B_OFF_BETA + CHUNK * 4)
#define B_OFF_DBETA (B_OFF_DB + CHUNK * 4)
#define B_OFF_RED (B_OFF_DBETA + CHUNK * 4)
#define B_SMEM_BYTES (B_OFF_RED + 16 * 4)

// D_ij = e^{b_i − b_j} for j ≤ i (0 above the diagonal); 1 on and below it without a gate.
__device__ __forceinline__ float decay_ij(const float* sB, int row, int col)
{
#if GATE == 1
    return col <= row ? exp_e(sB[row] - sB[col]) : 0.f;
#else
    (void)sB;
    return col <= row ? 1.f : 0.f;
#endif
}

// Adds −Σ over this warp's 16 rows of colPart[j][e] (column 8(j0 + j) + 2t + e) to sDB: a reduction over the 8 lanes of
// one column (g = lane / 4), then one shared atomic per column and warp.
template <int N8>
__device__ __forceinline__ void sub_columns(float (*colPart)[2], float* sDB, int lane, int j0)
{
#pragma unroll
    for (int j = 0; j < N8; j++)
#pragma unroll
        for (int e = 0; e < 2; e++)
        {
            float v = colPart[j][e];
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            if ((lane >> 2) == 0) atomicAdd(&sDB[8 * (j0 + j) + 2 * (lane & 3) + e], -v);
        }
}

// CW warps per CTA (4 or 8): warp w takes token rows 16 (w mod 4) .. + 15 and, at CW = 8, half of every product's
// columns (block w / 4): twice the warps to hide the products' latency on the one CTA that fits an SM, each with half
// the accumulators. The per-row and per-column sums of the gate and β gradients are partial then, added by the same
// shared atomics.
#ifndef CW
#define CW 8
#endif
#define CNT (CW * 32)
#define NSPL (CW / 4)
#define N8_64 (8 / NSPL)
#define N8_K (DK / 8 / NSPL)
#define N8_V (DV / 8 / NSPL)

extern "C" __global__ void __launch_bounds__(CNT)
attend_delta_bwd_chunk(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const elem_t* __restrict__ Dnew, const elem_t* __restrict__ dDelta, const elem_t* __restrict__ W, const elem_t* __restrict__ U,
    const elem_t* __restrict__ Tm,                                            // [tokens, H, 64]
    const elem_t* __restrict__ Hck, const elem_t* __restrict__ dHck,
    const float* __restrict__ beta, const float* __restrict__ gate, const float* __restrict__ headLogDecay,
    float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,   // [tokens, H, DK], [tokens, Hkv, DK], [tokens, Hkv, dv]
    float* __restrict__ dBeta, float* __restrict__ dGate,                     // [tokens, H] or null
    const DeltaRow* __restrict__ chunks, int heads, int kvHeads, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wq = warp & 3, wh = warp >> 2;
    // The value dim of the [tokens, H, dv] and [chunks, H, DK, dv] tensors: DV in a WIDE 0 build (one CTA per chunk and head,
    // the strides compile-time constants), DV · gridDim.z in a WIDE 1 build, where this CTA takes value columns
    // col0 .. col0 + DV − 1 and (accumulate) adds its shares of dq, dk, dβ and d log α atomically.
#if WIDE
    const int dv = DV * (int)gridDim.z, col0 = DV * (int)blockIdx.z;
    const bool accumulate = gridDim.z > 1;
#else
    const int dv = DV, col0 = 0;
    const bool accumulate = false;
#endif
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y;
    const long long ci = blockIdx.x;
    // This warp's first 8-column block of a 64-, DK- and DV-column product (j0*) and first 16-column block (n16*).
    const int j64 = wh * N8_64, jK = wh * N8_K, jV = wh * N8_V;
    const int n64 = j64 / 2, nK = jK / 2, nV = jV / 2;
    const DeltaRow ch = chunks[blockIdx.x];
    const int len = ch.len;
    const int hk = h / (heads / kvHeads);
    const bool grouped = heads != kvHeads;
    const long long tok0 = ch.tokStart;
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK;
    const long long vStride = (long long)kvHeads * dv, oStride = (long long)heads * dv;
    const unsigned base = smem_addr(smem);
    float* const sB = (float*)(smem + B_OFF_B);
    float* const sBeta = (float*)(smem + B_OFF_BETA);
    float* const sDB = (float*)(smem + B_OFF_DB);
    float* const sDBeta = (float*)(smem + B_OFF_DBETA);
    float* const sRed = (float*)(smem + B_OFF_RED);
    const unsigned sQ = base + B_OFF_Q, sK = base + B_OFF_K, sV = base + B_OFF_V, sDO = base + B_OFF_DO, sDN = base + B_OFF_DN;
    const unsigned sDD = base + B_OFF_DD, sS = base + B_OFF_S, sX = base + B_OFF_X, sDW = base + B_OFF_DW, sT = base + B_OFF_T;
    const unsigned sM1 = base + B_OFF_M1, sM2 = base + B_OFF_M2;
    const unsigned sW = sS, sU = sS + B_QB;   // phase C reuses S's space
    const int wr = wq * 16;

    // Two load groups: what phase A reads (dO, δ, and Q, K for the gate's A-term), then the rest, landing during phase A.
    load_rows<DV, CNT>(sDO, dO + tok0 * oStride + (long long)h * dv + col0, oStride, CHUNK, len, tid);
    load_rows<DV, CNT>(sDN, Dnew + tok0 * oStride + (long long)h * dv + col0, oStride, CHUNK, len, tid);
    load_rows<DK, CNT>(sQ, Q + tok0 * qStride + (long long)h * DK, qStride, CHUNK, len, tid);
    load_rows<DK, CNT>(sK, K + tok0 * kStride + (long long)hk * DK, kStride, CHUNK, len, tid);
    cp_async_commit();
    load_rows<DV, CNT>(sS, Hck + (ci * heads + h) * DK * dv + col0, dv, DK, DK, tid);
    load_rows<DV, CNT>(sX, dHck + (ci * heads + h) * DK * dv + col0, dv, DK, DK, tid);
    load_rows<DV, CNT>(sDD, dDelta + tok0 * oStride + (long long)h * dv + col0, oStride, CHUNK, len, tid);
    load_rows<DV, CNT>(sV, V + tok0 * vStride + (long long)hk * dv + col0, vStride, CHUNK, len, tid);
    load_rows<64, CNT>(sT, Tm + (tok0 * heads + h) * 64, (long long)heads * 64, CHUNK, len, tid);
    cp_async_commit();
    if (tid < CHUNK)
    {
        const long long tok = tok0 + tid;
        sBeta[tid] = tid < len ? (beta != 0 ? beta[tok * heads + h] : 1.f) : 0.f;
#if GATE == 1
        sB[tid] = tid < len ? (headLogDecay != 0 ? headLogDecay[h] : gate[tok * heads + h]) : 0.f;
#else
        sB[tid] = 0.f;
#endif
        sDB[tid] = 0.f;
        sDBeta[tid] = 0.f;
    }
    if (tid < 16) sRed[tid] = 0.f;
    __syncthreads();
#if GATE == 1
    if (warp == 0)
    {
        const float a0 = sB[2 * lane], a1 = sB[2 * lane + 1];
        const float pair = a0 + a1;
        float scan = pair;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            const float y = __shfl_up_sync(0xffffffffu, scan, o);
            if (lane >= o) scan += y;
        }
        sB[2 * lane] = scan - pair + a0;
        sB[2 * lane + 1] = scan;
    }
#endif
    cp_async_wait<1>();
    __syncthreads();
    const float bC = sB[CHUNK - 1];

    // Phase A: dA = dO δᵀ for this warp's rows; s dA ⊙ D into M1; the gate gradient's A-term (s dA_ij A_ij, j < i: + to
    // row i, − to column j).
    {
        float da[N8_64][4];
        zero_acc<N8_64>(da);
        mma_rows<N8_64 / 2, DV, false, DV, false>(da, sDO, wr, sDN, 0, DV / 16, lane, n64);
#if GATE == 1
        float qk[N8_64][4];
        zero_acc<N8_64>(qk);
        mma_rows<N8_64 / 2, DK, false, DK, false>(qk, sQ, wr, sK, 0, KS, lane, n64);
        float colP[N8_64][2];
#pragma unroll
        for (int j = 0; j < N8_64; j++) colP[j][0] = colP[j][1] = 0.f;
#endif
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            float rowP = 0.f;
#pragma unroll
            for (int j = 0; j < N8_64; j++)
            {
                float dad[2];
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    const int col = 8 * (j64 + j) + 2 * t + e;
                    const float d = decay_ij(sB, row, col);
                    dad[e] = scale * da[j][2 * half + e] * d;
#if GATE == 1
                    const float p = col < row ? dad[e] * qk[j][2 * half + e] : 0.f;   // s dA_ij · A_ij (dad carries D_ij)
                    rowP += p;
                    colP[j][e] += p;
#endif
                }
                sts32(sM1 + toff<64>(row, j64 + j) + 4 * t, pack2(dad[0], dad[1]));
            }
#if GATE == 1
            rowP = quad_sum(rowP);
            if (t == 0) atomicAdd(&sDB[row], rowP);
#else
            (void)rowP;
#endif
        }
#if GATE == 1
        sub_columns<N8_64>(colP, sDB, lane, j64);
#endif
    }
    cp_async_wait<0>();
    __syncthreads();

    // Phase B: dq; dk's A and K̂ terms (kept in registers); dw into DW; ⟨S, X⟩.
    float dk[N8_K][4];
    zero_acc<N8_K>(dk);
    {
        float acc[N8_K][4];
        zero_acc<N8_K>(acc);
        mma_rows<N8_K / 2, DV, false, DV, false>(acc, sDO, wr, sS, 0, DV / 16, lane, nK);   // dO Sᵀ
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#if GATE == 1
            const float f = scale * exp_e(sB[row]);
#else
            const float f = scale;
#endif
#pragma unroll
            for (int j = 0; j < N8_K; j++)
            {
                acc[j][2 * half] *= f;
                acc[j][2 * half + 1] *= f;
            }
#if GATE == 1
            const float inter = quad_sum(row_dot<N8_K, DK>(acc, sQ, row, half, t, jK));
            if (t == 0) atomicAdd(&sDB[row], inter);
#endif
        }
        mma_rows<N8_K / 2, 64, false, DK, true>(acc, sM1, wr, sK, 0, 4, lane, nK);     // + (s dA ⊙ D) K
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            if (row < len)
            {
                float* out = dQ + ((tok0 + row) * heads + h) * DK + 8 * jK;
#pragma unroll
                for (int j = 0; j < N8_K; j++)
                {
                    if (accumulate)
                    {
                        atomicAdd(out + 8 * j + 2 * t, acc[j][2 * half]);
                        atomicAdd(out + 8 * j + 2 * t + 1, acc[j][2 * half + 1]);
                    }
                    else *(float2*)(out + 8 * j + 2 * t) = make_float2(acc[j][2 * half], acc[j][2 * half + 1]);
                }
            }
        }
    }
    mma_rows<N8_K / 2, 64, true, DK, true>(dk, sM1, wr, sQ, 0, 4, lane, nK);           // (s dA ⊙ D)ᵀ Q
    {
        float acc[N8_K][4];
        zero_acc<N8_K>(acc);
        mma_rows<N8_K / 2, DV, false, DV, false>(acc, sDN, wr, sX, 0, DV / 16, lane, nK);   // δ Xᵀ
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#if GATE == 1
            const float f = exp_e(bC - sB[row]);
#pragma unroll
            for (int j = 0; j < N8_K; j++)
            {
                acc[j][2 * half] *= f;
                acc[j][2 * half + 1] *= f;
            }
            const float kd = quad_sum(row_dot<N8_K, DK>(acc, sK, row, half, t, jK));
            if (t == 0)
            {
                atomicAdd(&sDB[row], -kd);
                atomicAdd(&sRed[0], kd);
            }
#endif
#pragma unroll
            for (int j = 0; j < N8_K; j++)
            {
                dk[j][2 * half] += acc[j][2 * half];
                dk[j][2 * half + 1] += acc[j][2 * half + 1];
            }
        }
    }
    {
        float acc[N8_K][4];
        zero_acc<N8_K>(acc);
        mma_rows<N8_K / 2, DV, false, DV, false>(acc, sDD, wr, sS, 0, DV / 16, lane, nK);   // dδ Sᵀ
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < N8_K; j++) sts32(sDW + toff<DK>(row, jK + j) + 4 * t, pack2(-acc[j][2 * half], -acc[j][2 * half + 1]));
        }
    }
#if GATE == 1
    {
        // ⟨S, X⟩: both tiles share one layout, so the sum runs over matching positions of the two arrays.
        float sx = 0.f;
        for (int idx = tid; idx < DK * DV / 2; idx += CNT)
        {
            const unsigned a = lds32(sS + 4 * idx), b = lds32(sX + 4 * idx);
            sx = fmaf(elem_lo(a), elem_lo(b), sx);
            sx = fmaf(elem_hi(a), elem_hi(b), sx);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sx += __shfl_xor_sync(0xffffffffu, sx, o);
        if (lane == 0) atomicAdd(&sRed[1], sx);
    }
#endif
    __syncthreads();   // S, X, dO free; dw complete

    load_rows<DK, CNT>(sW, W + tok0 * qStride + (long long)h * DK, qStride, CHUNK, len, tid);
    load_rows<DV, CNT>(sU, U + tok0 * oStride + (long long)h * dv + col0, oStride, CHUNK, len, tid);
    cp_async_commit();

    // Phase C: dM = Tᵀ dw (dk, dβ, db), dN = Tᵀ dδ (dv, dβ).
    {
        float acc[N8_K][4];
        zero_acc<N8_K>(acc);
        mma_rows<N8_K / 2, 64, true, DK, true>(acc, sT, wr, sDW, 0, 4, lane, nK);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#if GATE == 1
            const float eb = exp_e(sB[row]);
#else
            const float eb = 1.f;
#endif
            const float f = sBeta[row] * eb;
#pragma unroll
            for (int j = 0; j < N8_K; j++)
            {
                dk[j][2 * half] = fmaf(f, acc[j][2 * half], dk[j][2 * half]);
                dk[j][2 * half + 1] = fmaf(f, acc[j][2 * half + 1], dk[j][2 * half + 1]);
            }
            const float km = quad_sum(row_dot<N8_K, DK>(acc, sK, row, half, t, jK));
            if (t == 0)
            {
                atomicAdd(&sDBeta[row], eb * km);
#if GATE == 1
                atomicAdd(&sDB[row], f * km);
#endif
            }
        }
    }
    {
        float acc[N8_V][4];
        zero_acc<N8_V>(acc);
        mma_rows<N8_V / 2, 64, true, DV, true>(acc, sT, wr, sDD, 0, 4, lane, nV);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            const float br = sBeta[row];
            const float vn = quad_sum(row_dot<N8_V, DV>(acc, sV, row, half, t, jV));
            if (t == 0) atomicAdd(&sDBeta[row], vn);
            if (row < len)
            {
                float* out = dV + ((tok0 + row) * kvHeads + hk) * dv + col0 + 8 * jV;   // this block's own columns
#pragma unroll
                for (int j = 0; j < N8_V; j++)
                {
                    if (grouped)
                    {
                        atomicAdd(out + 8 * j + 2 * t, br * acc[j][2 * half]);
                        atomicAdd(out + 8 * j + 2 * t + 1, br * acc[j][2 * half + 1]);
                    }
                    else *(float2*)(out + 8 * j + 2 * t) = make_float2(br * acc[j][2 * half], br * acc[j][2 * half + 1]);
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();   // w and u have landed

    // Z = dw wᵀ + dδ uᵀ for this warp's rows, into M1 (s dA ⊙ D is no longer read).
    {
        float z[N8_64][4];
        zero_acc<N8_64>(z);
        mma_rows<N8_64 / 2, DK, false, DK, false>(z, sDW, wr, sW, 0, KS, lane, n64);
        mma_rows<N8_64 / 2, DV, false, DV, false>(z, sDD, wr, sU, 0, DV / 16, lane, n64);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < N8_64; j++) sts32(sM1 + toff<64>(row, j64 + j) + 4 * t, pack2(z[j][2 * half], z[j][2 * half + 1]));
        }
    }
    __syncthreads();

    // G = −Tᵀ Z (the gradient of L, strictly lower) against D ⊙ K Kᵀ (recomputed): dβ and db terms, E = G ⊙ β_i D_ij into M2.
    {
        float gl[N8_64][4], kk_[N8_64][4];
        zero_acc<N8_64>(gl);
        zero_acc<N8_64>(kk_);
        mma_rows<N8_64 / 2, 64, true, 64, true>(gl, sT, wr, sM1, 0, 4, lane, n64);
        mma_rows<N8_64 / 2, DK, false, DK, false>(kk_, sK, wr, sK, 0, KS, lane, n64);
#if GATE == 1
        float colP[N8_64][2];
#pragma unroll
        for (int j = 0; j < N8_64; j++) colP[j][0] = colP[j][1] = 0.f;
#endif
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            const float br = sBeta[row];
            float rowBeta = 0.f, rowB = 0.f;
#pragma unroll
            for (int j = 0; j < N8_64; j++)
            {
                float ev[2];
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    const int col = 8 * (j64 + j) + 2 * t + e;
                    const float d = col < row ? decay_ij(sB, row, col) : 0.f;
                    const float G = -gl[j][2 * half + e];
                    const float kkd = d * kk_[j][2 * half + e];
                    rowBeta = fmaf(G, kkd, rowBeta);
                    ev[e] = G * br * d;
#if GATE == 1
                    const float p = G * br * kkd;   // G_ij L_ij
                    rowB += p;
                    colP[j][e] += p;
#endif
                }
                sts32(sM2 + toff<64>(row, j64 + j) + 4 * t, pack2(ev[0], ev[1]));
            }
            rowBeta = quad_sum(rowBeta);
            if (t == 0) atomicAdd(&sDBeta[row], rowBeta);
#if GATE == 1
            rowB = quad_sum(rowB);
            if (t == 0) atomicAdd(&sDB[row], rowB);
#else
            (void)rowB;
#endif
        }
#if GATE == 1
        sub_columns<N8_64>(colP, sDB, lane, j64);
#endif
    }
    __syncthreads();

    // dk += E K + Eᵀ K, then the store.
    mma_rows<N8_K / 2, 64, false, DK, true>(dk, sM2, wr, sK, 0, 4, lane, nK);
    mma_rows<N8_K / 2, 64, true, DK, true>(dk, sM2, wr, sK, 0, 4, lane, nK);
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
        if (row < len)
        {
            float* out = dK + ((tok0 + row) * kvHeads + hk) * DK + 8 * jK;
#pragma unroll
            for (int j = 0; j < N8_K; j++)
            {
                if (grouped || accumulate)
                {
                    atomicAdd(out + 8 * j + 2 * t, dk[j][2 * half]);
                    atomicAdd(out + 8 * j + 2 * t + 1, dk[j][2 * half + 1]);
                }
                else *(float2*)(out + 8 * j + 2 * t) = make_float2(dk[j][2 * half], dk[j][2 * half + 1]);
            }
        }
    }
    __syncthreads();   // every atomic into sDB and sDBeta is done

    if (dBeta != 0 && tid < len)
    {
        if (accumulate) atomicAdd(dBeta + (tok0 + tid) * heads + h, sDBeta[tid]);
        else dBeta[(tok0 + tid) * heads + h] = sDBeta[tid];
    }
#if GATE == 1
    if (dGate != 0 && warp == 0)
    {
        // d log α_r = Σ_{i ≥ r} db_i over the chunk (a reverse scan, lane l holding rows 2l and 2l + 1); the chunk's last
        // token also carries ⟨S', X⟩ = Σ k·dk̂ + e^{b_C} ⟨S, X⟩.
        const float d0 = sDB[2 * lane] + (2 * lane == len - 1 ? sRed[0] + exp_e(bC) * sRed[1] : 0.f);
        const float d1 = sDB[2 * lane + 1] + (2 * lane + 1 == len - 1 ? sRed[0] + exp_e(bC) * sRed[1] : 0.f);
        const float pair = d0 + d1;
        float scan = pair;   // inclusive suffix sum over lanes ≥ this one
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            const float y = __shfl_down_sync(0xffffffffu, scan, o);
            if (lane + o < 32) scan += y;
        }
        // Rows 2l + 1 and 2l: the suffix from 2l + 1 is scan − d0, from 2l is scan.
        if (accumulate)
        {
            if (2 * lane < len) atomicAdd(dGate + (tok0 + 2 * lane) * heads + h, scan);
            if (2 * lane + 1 < len) atomicAdd(dGate + (tok0 + 2 * lane + 1) * heads + h, scan - d0);
        }
        else
        {
            if (2 * lane < len) dGate[(tok0 + 2 * lane) * heads + h] = scan;
            if (2 * lane + 1 < len) dGate[(tok0 + 2 * lane + 1) * heads + h] = scan - d0;
        }
    }
#else
    (void)dGate;
    (void)gate;
    (void)headLogDecay;
    (void)sRed;
    (void)sDB;
    (void)bC;
#endif
}

#endif   // GATE != 2

#if GATE == 2
// ---------------------------------------------------------------------------------------------------------------
// attend_kda_bwd_chunk (GATE 2 builds): per (chunk, query head) dq, dk, dv, dβ and d log α of the channel gate (KDA).
// Version 1, on tensor cores: one CTA of 8 warps per (chunk, query head), every tile in shared memory (about 209 KB at
// DK = DV = 128), warp w taking token rows 16 (w mod 4) .. + 15 and half of every product's columns (as
// attend_delta_bwd_chunk at CW = 8, with its helpers load_rows, mma_rows, row_dot). The float64 model of the algebra is
// tests/Attend.Tests/Linear/KdaBackwardModelTests.cs (Chunk.Backward); b is the in-chunk cumulative log gate per channel
// (kept as b·log2 e, float32), s the scale, S the state at the chunk's start, X the state gradient at its end:
//   A. dA = s tril(dO δᵀ) (with the diagonal).
//   B. dq ← s e^b ⊙ dO Sᵀ;  dw = −dδ Sᵀ;  e^{b_C} ⊙ rowsum(S ⊙ X) (d log α's state term);  dk ← e^{b_C − b} ⊙ δ Xᵀ, and
//      K̂ ⊙ dK̂ = k ⊙ that (d log α's K̂ term).
//   C. Y ← e^b ⊙ Tᵀ dw;  dv = diag(β) Tᵀ dδ and dβ's v term;  P = dw wᵀ + dδ uᵀ;  G = −Tᵀ P (strictly lower). T = (I + L)⁻¹
//      comes from attend_kda_prepare (its Tout), as the scalar gates' T from attend_delta_prepare.
//   D. The per-channel sums of dA and G against k and q, over 16-token blocks: for (i, r) in block I,
//        dq   += Σ_{j ≤ i} dA_ij k_jr e^{b_ir − b_jr},        Y += Σ_{j < i} G_ij k_jr e^{b_ir − b_jr},
//        Z     = Σ_{l ≥ i} dA_li q_lr e^{b_lr − b_ir} + Σ_{l > i} β_l G_li k_lr e^{b_lr − b_ir}.
//      A key block J < I on tensor cores with the decay split at a token m between the two blocks, e^{b_i − b_j} =
//      e^{b_i − b_m} e^{b_m − b_j}, both factors ≤ 1 (no overflow; a product that underflows is truly below float32):
//      m = J's last token for the row sums (operand k_j e^{b_m − b_j}, the tile K_end; factor e^{b_i − b_m} on the
//      product), m = L's first token for the column sums (operands q_l e^{b_l − b_m} and β_l k_l e^{b_l − b_m}, the tiles
//      Q_st and βK_st; factor e^{b_m − b_i}). The diagonal 16 × 16 blocks exactly, one exponential per (i, j, channel) in
//      float32 (nothing clamped: the exponent min(b_i − b_j, 0) is b_i − b_j wherever the coefficient is not zero).
//   E. dk = e^{b_C − b} ⊙ δ Xᵀ + β Y + Z,  dβ = Σ_r k Y + Σ_c v (Tᵀ dδ),
//      db = q ⊙ dq + β k ⊙ Y − k ⊙ Z (A's diagonal terms cancel exactly here: they enter dq and Z alone), and
//      d log α_t = Σ_{i ≥ t} db_i + Σ_{j < t} K̂_j ⊙ dK̂_j + e^{b_C} ⊙ rowsum(S ⊙ X) down each channel (the K̂ share as a
//      forward prefix sum: its terms fall by e^g per token under strong gates, so the long way round would lose them).
// Inputs: q, k, v (raw, element type), dO, δ (Dnew), dδ, w, u, T [tokens, H, 64], S (Hck), X (dHck), β, the raw log gate
// [tokens, H, DK]. Outputs float32 as attend_delta_bwd_chunk's, with dGate [tokens, H, DK]; dk and dv are summed
// atomically over a group's query heads (the host zeroes them first).

#define KT 256
#define KN8_64 4                 // 8-column blocks of this warp's half of a 64-column product
#define KN8_K (DK / 16)          // ... of a DK-column product
#define KN8_V (DV / 16)          // ... of a DV-column product
#define KMAX(a, b) ((a) > (b) ? (a) : (b))
#define KQB (CHUNK * DK * 2)
#define KVB (CHUNK * DV * 2)
#define KSB (DK * DV * 2)
#define KMB (CHUNK * 64 * 2)
#define KFB (CHUNK * DK * 4)
#define KB_OFF_B 0                                           // b · log2 e, float32 [64][DK] (fidx)
#define KB_OFF_Q (KB_OFF_B + KFB)                            // q
#define KB_OFF_K (KB_OFF_Q + KQB)                            // k
#define KB_OFF_DA (KB_OFF_K + KQB)                           // dA (with s), [64][64]
#define KB_OFF_T (KB_OFF_DA + KMB)                           // T, [64][64]
#define KB_OFF_U1 (KB_OFF_T + KMB)                           // dO, S; then w, u, v; then K_end, Q_st, βK_st
#define KB_OFF_X (KB_OFF_U1 + KMAX(KMAX(KVB + KSB, KQB + 2 * KVB), 3 * KQB))   // X; then K̂ ⊙ dK̂ (float32, fidx)
#define KB_OFF_DN (KB_OFF_X + KMAX(KSB, KFB))                // δ; then P and G, [64][64] each
#define KB_OFF_DD (KB_OFF_DN + KMAX(KVB, 2 * KMB))           // dδ and dw; then db (float32, fidx)
#define KB_OFF_BETA (KB_OFF_DD + KMAX(KVB + KQB, KFB))       // β, float32 [64]
#define KB_OFF_DBETA (KB_OFF_BETA + CHUNK * 4)               // dβ, float32 [64]
#define KB_OFF_SX (KB_OFF_DBETA + CHUNK * 4)                 // e^{b_C} ⊙ rowsum(S ⊙ X), float32 [DK]
#define KB_OFF_TOT (KB_OFF_SX + DK * 4)                      // per-thread partial sums of the scans, float32 [2][KT]
#define KB_SMEM_BYTES (KB_OFF_TOT + 2 * KT * 4)
#define KPARTS (KT / DK)                                     // threads per channel in the scans (2 at DK = 128, 4 at 64)
#define KROWS (CHUNK / KPARTS)                               // rows of one scan part

// Index of (row, col) in a float32 [64][DK] tile: columns XOR-swizzled by 8 (row mod 4), so that the float2 of an mma
// accumulator's rows g and columns 2t of 16 lanes fall in 16 different bank pairs, and a row read by consecutive threads
// is one access.
__device__ __forceinline__ int fidx(int row, int col) { return row * DK + (col ^ ((row & 3) << 3)); }

// Two packed elements scaled by (f0, f1), repacked.
__device__ __forceinline__ unsigned kscale2(unsigned x, float f0, float f1) { return pack2(elem_lo(x) * f0, elem_hi(x) * f1); }

// The float of one element of a swizzled [rows][64] tile.
__device__ __forceinline__ float elem64(const unsigned char* tile, int row, int col)
{
    return elem_lo((unsigned)*(const elem_t*)(tile + toff<64>(row, col >> 3) + (col & 7) * 2));
}

extern "C" __global__ void __launch_bounds__(KT, 1)
attend_kda_bwd_chunk(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const elem_t* __restrict__ Dnew, const elem_t* __restrict__ dDelta, const elem_t* __restrict__ W, const elem_t* __restrict__ U,
    const elem_t* __restrict__ Tm,                                            // [tokens, H, 64]
    const elem_t* __restrict__ Hck, const elem_t* __restrict__ dHck,
    const float* __restrict__ beta, const float* __restrict__ gate,          // [tokens, H] or null; [tokens, H, DK] log α
    float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,   // [tokens, H, DK], [tokens, Hkv, DK], [tokens, Hkv, DV]
    float* __restrict__ dBeta, float* __restrict__ dGate,                     // [tokens, H], [tokens, H, DK]; either may be null
    const DeltaRow* __restrict__ chunks, int heads, int kvHeads, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wq = warp & 3, wh = warp >> 2;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y;
    const long long ci = blockIdx.x;
    // This warp's first 8-column block of a 64-, DK- and DV-column product (j*) and first 16-column block (n*).
    const int j64 = wh * KN8_64, jK = wh * KN8_K, jV = wh * KN8_V;
    const int n64 = j64 / 2, nK = jK / 2, nV = jV / 2;
    const DeltaRow ch = chunks[blockIdx.x];
    const int len = ch.len;
    const int hk = h / (heads / kvHeads);
    const bool grouped = heads != kvHeads;
    const long long tok0 = ch.tokStart;
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK;
    const long long vStride = (long long)kvHeads * DV, oStride = (long long)heads * DV;
    const unsigned base = smem_addr(smem);
    float* const sB = (float*)(smem + KB_OFF_B);
    float* const sKD = (float*)(smem + KB_OFF_X);
    float* const sDB = (float*)(smem + KB_OFF_DD);
    float* const sBeta = (float*)(smem + KB_OFF_BETA);
    float* const sDBeta = (float*)(smem + KB_OFF_DBETA);
    float* const sSX = (float*)(smem + KB_OFF_SX);
    float* const sTot = (float*)(smem + KB_OFF_TOT);
    // The scans' share of this thread: channel sr, rows sp·KROWS .. + KROWS − 1.
    const int sr = tid % DK, sp = tid / DK;
    const unsigned char* const pDA = smem + KB_OFF_DA;
    const unsigned char* const pG = smem + KB_OFF_DN + KMB;
    const unsigned sQ = base + KB_OFF_Q, sK = base + KB_OFF_K, sDA = base + KB_OFF_DA, sT = base + KB_OFF_T;
    const unsigned sDO = base + KB_OFF_U1, sS = sDO + KVB;                          // A, B
    const unsigned sW = base + KB_OFF_U1, sU = sW + KQB, sV = sU + KVB;             // C
    const unsigned sKE = base + KB_OFF_U1, sQS = sKE + KQB, sBKS = sQS + KQB;       // D
    const unsigned sX = base + KB_OFF_X, sDN = base + KB_OFF_DN, sP = sDN, sG = sDN + KMB;
    const unsigned sDD = base + KB_OFF_DD, sDW = sDD + KVB;
    const int wr = wq * 16;

    // Loads: the gates, dO and δ (phase A and the scan), then S, X, q, k, dδ and T (landing during phase A).
    {
        const float* gBase = gate + (tok0 * heads + h) * DK;
        for (int idx = tid; idx < CHUNK * DK / 4; idx += KT)
        {
            const int r = idx / (DK / 4), c = (idx % (DK / 4)) * 4;
            const bool ok = r < len;
            cp_async16(base + KB_OFF_B + 4 * fidx(r, c), ok ? gBase + (long long)r * qStride + c : gBase, ok ? 16 : 0);
        }
    }
    load_rows<DV, KT>(sDO, dO + tok0 * oStride + (long long)h * DV, oStride, CHUNK, len, tid);
    load_rows<DV, KT>(sDN, Dnew + tok0 * oStride + (long long)h * DV, oStride, CHUNK, len, tid);
    cp_async_commit();
    load_rows<DV, KT>(sS, Hck + (ci * heads + h) * DK * DV, DV, DK, DK, tid);
    load_rows<DV, KT>(sX, dHck + (ci * heads + h) * DK * DV, DV, DK, DK, tid);
    load_rows<DK, KT>(sQ, Q + tok0 * qStride + (long long)h * DK, qStride, CHUNK, len, tid);
    load_rows<DK, KT>(sK, K + tok0 * kStride + (long long)hk * DK, kStride, CHUNK, len, tid);
    load_rows<DV, KT>(sDD, dDelta + tok0 * oStride + (long long)h * DV, oStride, CHUNK, len, tid);
    load_rows<64, KT>(sT, Tm + (tok0 * heads + h) * 64, (long long)heads * 64, CHUNK, len, tid);
    cp_async_commit();
    if (tid < CHUNK)
    {
        sBeta[tid] = tid < len ? (beta != 0 ? beta[(tok0 + tid) * heads + h] : 1.f) : 0.f;
        sDBeta[tid] = 0.f;
    }
    cp_async_wait<1>();
    __syncthreads();
    {
        // b · log2 e, inclusive, down each channel (rows past len hold zero gates: b stays at the last token's), in KPARTS
        // parts of KROWS rows: each part's own scan here, the earlier parts' totals added after phase A.
        float acc = 0.f;
#pragma unroll 8
        for (int i = sp * KROWS; i < (sp + 1) * KROWS; i++)
        {
            acc += sB[fidx(i, sr)] * 1.4426950408889634f;
            sB[fidx(i, sr)] = acc;
        }
        sTot[sp * DK + sr] = acc;
    }

    // A. dA = s tril(dO δᵀ) for this warp's rows and half of the columns.
    {
        float da[KN8_64][4];
        zero_acc<KN8_64>(da);
        mma_rows<KN8_64 / 2, DV, false, DV, false>(da, sDO, wr, sDN, 0, DV / 16, lane, n64);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < KN8_64; j++)
            {
                const int col = 8 * (j64 + j) + 2 * t;
                sts32(sDA + toff<64>(row, j64 + j) + 4 * t,
                      pack2(col <= row ? scale * da[j][2 * half] : 0.f, col + 1 <= row ? scale * da[j][2 * half + 1] : 0.f));
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();   // the parts' scans, dA and every tile have landed
    if (sp > 0)
    {
        float off = 0.f;
        for (int p = 0; p < sp; p++) off += sTot[p * DK + sr];
#pragma unroll 8
        for (int i = sp * KROWS; i < (sp + 1) * KROWS; i++) sB[fidx(i, sr)] += off;
    }
    __syncthreads();   // b is complete

    // B. dq ← s e^b ⊙ dO Sᵀ (in registers until phase D).
    float dq[KN8_K][4];
    zero_acc<KN8_K>(dq);
    mma_rows<KN8_K / 2, DV, false, DV, false>(dq, sDO, wr, sS, 0, DV / 16, lane, nK);
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const float2 b = *(const float2*)(sB + fidx(row, 8 * (jK + j) + 2 * t));
            dq[j][2 * half] *= scale * fast_exp2(b.x);
            dq[j][2 * half + 1] *= scale * fast_exp2(b.y);
        }
    }
    // dw = −dδ Sᵀ.
    {
        float acc[KN8_K][4];
        zero_acc<KN8_K>(acc);
        mma_rows<KN8_K / 2, DV, false, DV, false>(acc, sDD, wr, sS, 0, DV / 16, lane, nK);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < KN8_K; j++) sts32(sDW + toff<DK>(row, jK + j) + 4 * t, pack2(-acc[j][2 * half], -acc[j][2 * half + 1]));
        }
    }
    // e^{b_C} ⊙ rowsum(S ⊙ X): S and X share one layout, so the sum runs over matching positions of each row.
    {
        const int tpr = KT / DK;   // threads per row
        const int r = tid / tpr, part = tid % tpr;
        float sx = 0.f;
        for (int c = part; c < DV / 8; c += tpr)
        {
            const uint4 a = *(const uint4*)(smem + KB_OFF_U1 + KVB + (r * DV + 8 * c) * 2);
            const uint4 x = *(const uint4*)(smem + KB_OFF_X + (r * DV + 8 * c) * 2);
            const unsigned aw[4] = {a.x, a.y, a.z, a.w}, xw[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
            for (int e = 0; e < 4; e++) sx = fmaf(elem_lo(aw[e]), elem_lo(xw[e]), fmaf(elem_hi(aw[e]), elem_hi(xw[e]), sx));
        }
#pragma unroll
        for (int o = 1; o < tpr; o <<= 1) sx += __shfl_xor_sync(0xffffffffu, sx, o);
        if (part == 0) sSX[r] = fast_exp2(sB[fidx(CHUNK - 1, r)]) * sx;
    }
    __syncthreads();   // dO and S are free: w, u, v land there during the rest of phase B

    load_rows<DK, KT>(sW, W + tok0 * qStride + (long long)h * DK, qStride, CHUNK, len, tid);
    load_rows<DV, KT>(sU, U + tok0 * oStride + (long long)h * DV, oStride, CHUNK, len, tid);
    load_rows<DV, KT>(sV, V + tok0 * vStride + (long long)hk * DV, vStride, CHUNK, len, tid);
    cp_async_commit();

    // dk ← e^{b_C − b} ⊙ δ Xᵀ.
    float dk[KN8_K][4];
    zero_acc<KN8_K>(dk);
    mma_rows<KN8_K / 2, DV, false, DV, false>(dk, sDN, wr, sX, 0, DV / 16, lane, nK);
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const int c = 8 * (jK + j) + 2 * t;
            const float2 b = *(const float2*)(sB + fidx(row, c)), bC = *(const float2*)(sB + fidx(CHUNK - 1, c));
            dk[j][2 * half] *= fast_exp2(bC.x - b.x);
            dk[j][2 * half + 1] *= fast_exp2(bC.y - b.y);
        }
    }
    __syncthreads();   // δ and X are free
    // K̂ ⊙ dK̂ = k ⊙ (e^{b_C − b} ⊙ δ Xᵀ) into X's place.
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const unsigned kp = lds32(sK + toff<DK>(row, jK + j) + 4 * t);
            *(float2*)(sKD + fidx(row, 8 * (jK + j) + 2 * t)) = make_float2(elem_lo(kp) * dk[j][2 * half], elem_hi(kp) * dk[j][2 * half + 1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();   // w, u, v have landed

    // C. Y ← e^b ⊙ Tᵀ dw (T is lower triangular: key blocks from the warp's own).
    float y[KN8_K][4];
    zero_acc<KN8_K>(y);
    mma_rows<KN8_K / 2, 64, true, DK, true>(y, sT, wr, sDW, wq, 4, lane, nK);
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const float2 b = *(const float2*)(sB + fidx(row, 8 * (jK + j) + 2 * t));
            y[j][2 * half] *= fast_exp2(b.x);
            y[j][2 * half + 1] *= fast_exp2(b.y);
        }
    }
    // dv = diag(β) Tᵀ dδ and dβ's v term.
    {
        float acc[KN8_V][4];
        zero_acc<KN8_V>(acc);
        mma_rows<KN8_V / 2, 64, true, DV, true>(acc, sT, wr, sDD, wq, 4, lane, nV);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            const float br = sBeta[row];
            const float vn = quad_sum(row_dot<KN8_V, DV>(acc, sV, row, half, t, jV));
            if (t == 0) atomicAdd(&sDBeta[row], vn);
            if (row < len)
            {
                float* out = dV + ((tok0 + row) * kvHeads + hk) * DV + 8 * jV;
#pragma unroll
                for (int j = 0; j < KN8_V; j++)
                {
                    if (grouped)
                    {
                        atomicAdd(out + 8 * j + 2 * t, br * acc[j][2 * half]);
                        atomicAdd(out + 8 * j + 2 * t + 1, br * acc[j][2 * half + 1]);
                    }
                    else *(float2*)(out + 8 * j + 2 * t) = make_float2(br * acc[j][2 * half], br * acc[j][2 * half + 1]);
                }
            }
        }
    }
    // P = dw wᵀ + dδ uᵀ into δ's place.
    {
        float z[KN8_64][4];
        zero_acc<KN8_64>(z);
        mma_rows<KN8_64 / 2, DK, false, DK, false>(z, sDW, wr, sW, 0, DK / 16, lane, n64);
        mma_rows<KN8_64 / 2, DV, false, DV, false>(z, sDD, wr, sU, 0, DV / 16, lane, n64);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < KN8_64; j++) sts32(sP + toff<64>(row, j64 + j) + 4 * t, pack2(z[j][2 * half], z[j][2 * half + 1]));
        }
    }
    __syncthreads();   // P complete; w, u, v, dw, dδ are free

    // G = −Tᵀ P, strictly lower.
    {
        float gl[KN8_64][4];
        zero_acc<KN8_64>(gl);
        mma_rows<KN8_64 / 2, 64, true, 64, true>(gl, sT, wr, sP, wq, 4, lane, n64);
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < KN8_64; j++)
            {
                const int col = 8 * (j64 + j) + 2 * t;
                sts32(sG + toff<64>(row, j64 + j) + 4 * t, pack2(col < row ? -gl[j][2 * half] : 0.f, col + 1 < row ? -gl[j][2 * half + 1] : 0.f));
            }
        }
    }
    // The decayed operand tiles of phase D: K_end = k_j e^{b_e − b_j} (e the last token of j's block), Q_st = q_l e^{b_l − b_s}
    // and βK_st = β_l k_l e^{b_l − b_s} (s the first token of l's block); every factor ≤ 1.
    for (int idx = tid; idx < CHUNK * (DK / 8); idx += KT)
    {
        const int r = idx / (DK / 8), c8 = idx % (DK / 8);
        const int rs = r & ~15, re = r | 15;
        const uint4 qv = *(const uint4*)(smem + KB_OFF_Q + toff<DK>(r, c8));
        const uint4 kv = *(const uint4*)(smem + KB_OFF_K + toff<DK>(r, c8));
        const unsigned qw[4] = {qv.x, qv.y, qv.z, qv.w}, kw[4] = {kv.x, kv.y, kv.z, kv.w};
        const float br = sBeta[r];
        unsigned ke[4], qs[4], bk[4];
#pragma unroll
        for (int e = 0; e < 4; e++)
        {
            const int col = 8 * c8 + 2 * e;
            const float2 b = *(const float2*)(sB + fidx(r, col));
            const float2 bs = *(const float2*)(sB + fidx(rs, col)), be = *(const float2*)(sB + fidx(re, col));
            const float s0 = fast_exp2(b.x - bs.x), s1 = fast_exp2(b.y - bs.y);
            ke[e] = kscale2(kw[e], fast_exp2(be.x - b.x), fast_exp2(be.y - b.y));
            qs[e] = kscale2(qw[e], s0, s1);
            bk[e] = kscale2(kw[e], br * s0, br * s1);
        }
        *(uint4*)(smem + (sKE - base) + toff<DK>(r, c8)) = make_uint4(ke[0], ke[1], ke[2], ke[3]);
        *(uint4*)(smem + (sQS - base) + toff<DK>(r, c8)) = make_uint4(qs[0], qs[1], qs[2], qs[3]);
        *(uint4*)(smem + (sBKS - base) + toff<DK>(r, c8)) = make_uint4(bk[0], bk[1], bk[2], bk[3]);
    }
    __syncthreads();   // G and the decayed tiles are complete

    // D1. The row sums: dq += Σ_{j ≤ i} dA_ij k_j e^{b_i − b_j}, Y += Σ_{j < i} G_ij k_j e^{b_i − b_j}. Key blocks J below the
    // warp's own on tensor cores (split at J's last token e).
    for (int J = 0; J < wq; J++)
    {
        float ta[KN8_K][4], tg[KN8_K][4];
        zero_acc<KN8_K>(ta);
        zero_acc<KN8_K>(tg);
        mma_rows<KN8_K / 2, 64, false, DK, true>(ta, sDA, wr, sKE, J, J + 1, lane, nK);
        mma_rows<KN8_K / 2, 64, false, DK, true>(tg, sG, wr, sKE, J, J + 1, lane, nK);
        const int e = 16 * J + 15;
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < KN8_K; j++)
            {
                const int c = 8 * (jK + j) + 2 * t;
                const float2 bi = *(const float2*)(sB + fidx(row, c)), be = *(const float2*)(sB + fidx(e, c));
                const float f0 = fast_exp2(bi.x - be.x), f1 = fast_exp2(bi.y - be.y);
                dq[j][2 * half] = fmaf(f0, ta[j][2 * half], dq[j][2 * half]);
                dq[j][2 * half + 1] = fmaf(f1, ta[j][2 * half + 1], dq[j][2 * half + 1]);
                y[j][2 * half] = fmaf(f0, tg[j][2 * half], y[j][2 * half]);
                y[j][2 * half + 1] = fmaf(f1, tg[j][2 * half + 1], y[j][2 * half + 1]);
            }
        }
    }
    // The diagonal block exactly: keys j of the warp's own block (dA is zero above its diagonal, G on and above it).
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
        float bi[KN8_K][2];
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const float2 b = *(const float2*)(sB + fidx(row, 8 * (jK + j) + 2 * t));
            bi[j][0] = b.x;
            bi[j][1] = b.y;
        }
        for (int key = wr; key < wr + 8 + 8 * half; key++)
        {
            const float a = elem64(pDA, row, key), gg = elem64(pG, row, key);
#pragma unroll
            for (int j = 0; j < KN8_K; j++)
            {
                const float2 bj = *(const float2*)(sB + fidx(key, 8 * (jK + j) + 2 * t));
                const unsigned kp = lds32(sK + toff<DK>(key, jK + j) + 4 * t);
                const float x0 = elem_lo(kp) * fast_exp2(fminf(bi[j][0] - bj.x, 0.f));
                const float x1 = elem_hi(kp) * fast_exp2(fminf(bi[j][1] - bj.y, 0.f));
                dq[j][2 * half] = fmaf(a, x0, dq[j][2 * half]);
                dq[j][2 * half + 1] = fmaf(a, x1, dq[j][2 * half + 1]);
                y[j][2 * half] = fmaf(gg, x0, y[j][2 * half]);
                y[j][2 * half + 1] = fmaf(gg, x1, y[j][2 * half + 1]);
            }
        }
    }
    // dq out; db = q ⊙ dq + β k ⊙ Y (into dδ's place); dβ's k term Σ_r k Y; dk += β Y.
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
        const float br = sBeta[row];
        float kb = 0.f;
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const int c = 8 * (jK + j) + 2 * t;
            const unsigned qp = lds32(sQ + toff<DK>(row, jK + j) + 4 * t), kp = lds32(sK + toff<DK>(row, jK + j) + 4 * t);
            const float q0 = elem_lo(qp), q1 = elem_hi(qp), k0 = elem_lo(kp), k1 = elem_hi(kp);
            const float y0 = y[j][2 * half], y1 = y[j][2 * half + 1];
            kb = fmaf(k0, y0, fmaf(k1, y1, kb));
            *(float2*)(sDB + fidx(row, c)) = make_float2(q0 * dq[j][2 * half] + br * k0 * y0, q1 * dq[j][2 * half + 1] + br * k1 * y1);
            dk[j][2 * half] = fmaf(br, y0, dk[j][2 * half]);
            dk[j][2 * half + 1] = fmaf(br, y1, dk[j][2 * half + 1]);
            if (row < len) *(float2*)(dQ + ((tok0 + row) * heads + h) * DK + c) = make_float2(dq[j][2 * half], dq[j][2 * half + 1]);
        }
        kb = quad_sum(kb);
        if (t == 0) atomicAdd(&sDBeta[row], kb);
    }

    // D2. The column sums: Z = Σ_{l ≥ i} dA_li q_l e^{b_l − b_i} + Σ_{l > i} β_l G_li k_l e^{b_l − b_i}. Query blocks L above
    // the warp's own on tensor cores (split at L's first token s).
    float z[KN8_K][4];
    zero_acc<KN8_K>(z);
    for (int L = wq + 1; L < 4; L++)
    {
        float ts[KN8_K][4];
        zero_acc<KN8_K>(ts);
        mma_rows<KN8_K / 2, 64, true, DK, true>(ts, sDA, wr, sQS, L, L + 1, lane, nK);
        mma_rows<KN8_K / 2, 64, true, DK, true>(ts, sG, wr, sBKS, L, L + 1, lane, nK);
        const int s = 16 * L;
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < KN8_K; j++)
            {
                const int c = 8 * (jK + j) + 2 * t;
                const float2 bi = *(const float2*)(sB + fidx(row, c)), bs = *(const float2*)(sB + fidx(s, c));
                z[j][2 * half] = fmaf(fast_exp2(bs.x - bi.x), ts[j][2 * half], z[j][2 * half]);
                z[j][2 * half + 1] = fmaf(fast_exp2(bs.y - bi.y), ts[j][2 * half + 1], z[j][2 * half + 1]);
            }
        }
    }
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
        float bi[KN8_K][2];
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const float2 b = *(const float2*)(sB + fidx(row, 8 * (jK + j) + 2 * t));
            bi[j][0] = b.x;
            bi[j][1] = b.y;
        }
        for (int key = wr + 8 * half; key < wr + 16; key++)
        {
            const float a = elem64(pDA, key, row), gb = elem64(pG, key, row) * sBeta[key];
#pragma unroll
            for (int j = 0; j < KN8_K; j++)
            {
                const float2 bl = *(const float2*)(sB + fidx(key, 8 * (jK + j) + 2 * t));
                const unsigned qp = lds32(sQ + toff<DK>(key, jK + j) + 4 * t), kp = lds32(sK + toff<DK>(key, jK + j) + 4 * t);
                const float e0 = fast_exp2(fminf(bl.x - bi[j][0], 0.f)), e1 = fast_exp2(fminf(bl.y - bi[j][1], 0.f));
                z[j][2 * half] = fmaf(e0, fmaf(a, elem_lo(qp), gb * elem_lo(kp)), z[j][2 * half]);
                z[j][2 * half + 1] = fmaf(e1, fmaf(a, elem_hi(qp), gb * elem_hi(kp)), z[j][2 * half + 1]);
            }
        }
    }
    // dk = e^{b_C − b} ⊙ δ Xᵀ + β Y + Z out; db −= k ⊙ Z.
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
        float* out = dK + ((tok0 + row) * kvHeads + hk) * DK;
#pragma unroll
        for (int j = 0; j < KN8_K; j++)
        {
            const int c = 8 * (jK + j) + 2 * t;
            const unsigned kp = lds32(sK + toff<DK>(row, jK + j) + 4 * t);
            float2* db = (float2*)(sDB + fidx(row, c));
            const float2 d = *db;
            *db = make_float2(d.x - elem_lo(kp) * z[j][2 * half], d.y - elem_hi(kp) * z[j][2 * half + 1]);
            const float k0 = dk[j][2 * half] + z[j][2 * half], k1 = dk[j][2 * half + 1] + z[j][2 * half + 1];
            if (row < len)
            {
                if (grouped)
                {
                    atomicAdd(out + c, k0);
                    atomicAdd(out + c + 1, k1);
                }
                else *(float2*)(out + c) = make_float2(k0, k1);
            }
        }
    }
    __syncthreads();   // db, K̂ ⊙ dK̂ and dβ are complete

    // E. d log α_t = Σ_{i ≥ t} db_i + Σ_{j < t} K̂_j ⊙ dK̂_j + e^{b_C} ⊙ rowsum(S ⊙ X), down each channel, in KPARTS parts of
    // KROWS rows: each part's exclusive K̂ prefix (in place) and its db and K̂ totals, then the other parts' totals added
    // (K̂ from the parts before, db from the parts after) in the part's reverse scan; dβ.
    const int e0 = sp * KROWS, e1 = min((sp + 1) * KROWS, len);
    if (dGate != 0)
    {
        float prefix = 0.f, dbTotal = 0.f;
        for (int i = e0; i < e1; i++)
        {
            const float kd = sKD[fidx(i, sr)];
            sKD[fidx(i, sr)] = prefix;   // exclusive: Σ_{e0 ≤ j < i}
            prefix += kd;
            dbTotal += sDB[fidx(i, sr)];
        }
        sTot[sp * DK + sr] = prefix;
        sTot[KT + sp * DK + sr] = dbTotal;
    }
    __syncthreads();
    if (dGate != 0)
    {
        float kdOff = 0.f, acc = sSX[sr];
        for (int p = 0; p < sp; p++) kdOff += sTot[p * DK + sr];
        for (int p = KPARTS - 1; p > sp; p--) acc += sTot[KT + p * DK + sr];
        for (int i = e1 - 1; i >= e0; i--)
        {
            acc += sDB[fidx(i, sr)];
            dGate[((tok0 + i) * heads + h) * DK + sr] = acc + (sKD[fidx(i, sr)] + kdOff);
        }
    }
    if (dBeta != 0 && tid < len) dBeta[(tok0 + tid) * heads + h] = sDBeta[tid];
}
#endif   // GATE == 2
