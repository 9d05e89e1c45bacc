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
// Defines: DK (64 | 128), DV (64 | 128; the chunk kernel's value block: the tensors' value dim is DV · gridDim.z), ELEM_BF16 (1 bf16, 0 fp16), GATE (0 none, 1 scalar gate or
// fixed γ, 2 the channel gate of KDA: the reverse chain alone so far, reading Q̃, K̂ and e^{b_C} from attend_kda_prepare
// where the scalar gates read q, k and the raw gates), CW (4 | 8: the chunk kernel's warps; default 8). mma_tiles.cuh is expanded in place by KernelCompiler.Source.

#ifndef DK
#error "DK must be defined"
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
// The chunk kernel of the channel gate (KDA) is not written yet: the per-channel decays of dA ⊙ D and of the L terms
// and the gate gradient per channel need another shared-memory plan (docs/CUDA-KERNELS.md, "KDA backward, written in
// session 5"); a GATE 2 build holds the reverse chain alone.
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
    // The value dim of the [tokens, H, dv] and [chunks, H, DK, dv] tensors is DV · gridDim.z; this CTA takes value columns
    // col0 .. col0 + DV − 1. With more than one block (accumulate) the shares of dq, dk, dβ and d log α are added atomically.
    const int dv = DV * (int)gridDim.z, col0 = DV * (int)blockIdx.z;
    const bool accumulate = gridDim.z > 1;
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
        float* const g0 = dGate + (tok0 + 2 * lane) * heads + h;
        float* const g1 = dGate + (tok0 + 2 * lane + 1) * heads + h;
        if (accumulate)
        {
            if (2 * lane < len) atomicAdd(g0, scan);
            if (2 * lane + 1 < len) atomicAdd(g1, scan - d0);
        }
        else
        {
            if (2 * lane < len) *g0 = scan;
            if (2 * lane + 1 < len) *g1 = scan - d0;
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
// Version 0, correctness first: float32 on the CUDA cores, one CTA of KT threads per (chunk, query head), the 64 × 64
// matrices, the cumulative gate b, dw and db in shared memory, every other operand read from global memory (L1/L2). It
// is the float64 model of tests/Attend.Tests/Linear/KdaBackwardModelTests.cs (Chunk.Backward) line for line, in float32:
//   dA = s tril(dO δᵀ), dQ̃ = s dO Sᵀ, dK̂ = δ Xᵀ, dw = −dδ Sᵀ, T = (I + L)⁻¹ solved again here (forward substitution of
//   L_ij = β_i Σ_c k_ic k_jc e^{b_ic − b_jc}, j < i), G = −Tᵀ (dw wᵀ + dδ uᵀ) (strictly lower), dv = diag(β) Tᵀ dδ,
//   dK̃ = diag(β) Tᵀ dw, and per element (i, r) the sums of dA and G against k, q with e^{b_ir − b_jr} (every factor ≤ 1:
//   exact for any gate strength, no overflow); db leaves out the terms that cancel exactly (A's diagonal), and d log α_t is
//   db's reverse cumulative sum down each channel of the chunk plus K̂'s share, Σ_{j<t} K̂_j ⊙ dK̂_j (a forward prefix sum:
//   the −K̂_i ⊙ dK̂_i of every token i ≥ t and the b_C term Σ_j K̂_j ⊙ dK̂_j cancel but for it, and under strong gates its
//   terms fall by e^g per token, so a sum taken the long way would lose them) and e^{b_C} ⊙ rowsum(S ⊙ X).
// Inputs: q, k, v (raw, element type), dO, δ (Dnew), dδ, w, u, S (Hck, the state at the chunk's start), X (dHck, the state
// gradient at its end), β, the raw log gate [tokens, H, DK]. Outputs float32 as attend_delta_bwd_chunk's, with dGate
// [tokens, H, DK]; dk and dv are summed atomically over a group's query heads (the host zeroes them first).

#define KT 256
#define K_OFF_B 0                                     // b, float32 [64][DK]
#define K_OFF_DW (K_OFF_B + CHUNK * DK * 4)           // dw, float32 [64][DK]
#define K_OFF_DB (K_OFF_DW + CHUNK * DK * 4)          // db, float32 [64][DK]
#define K_OFF_KD (K_OFF_DB + CHUNK * DK * 4)          // K̂ ⊙ dK̂, then its exclusive prefix sum over tokens, float32 [64][DK]
#define K_OFF_DA (K_OFF_KD + CHUNK * DK * 4)          // dA (with s), float32 [64][64]
#define K_OFF_L (K_OFF_DA + CHUNK * 64 * 4)           // L, then G, float32 [64][64]
#define K_OFF_T (K_OFF_L + CHUNK * 64 * 4)            // T, float32 [64][64]
#define K_OFF_P (K_OFF_T + CHUNK * 64 * 4)            // P = dw wᵀ + dδ uᵀ, float32 [64][64]
#define K_OFF_BETA (K_OFF_P + CHUNK * 64 * 4)         // β, float32 [64]
#define K_OFF_DBETA (K_OFF_BETA + CHUNK * 4)          // dβ, float32 [64]
#define K_SMEM_BYTES (K_OFF_DBETA + CHUNK * 4)

__device__ __forceinline__ float ld_elem(const elem_t* p) { return elem_lo((unsigned)*p); }

extern "C" __global__ void __launch_bounds__(KT)
attend_kda_bwd_chunk(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const elem_t* __restrict__ Dnew, const elem_t* __restrict__ dDelta, const elem_t* __restrict__ W, const elem_t* __restrict__ U,
    const elem_t* __restrict__ Hck, const elem_t* __restrict__ dHck,
    const float* __restrict__ beta, const float* __restrict__ gate,          // [tokens, H] or null; [tokens, H, DK] log α
    float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,   // [tokens, H, DK], [tokens, Hkv, DK], [tokens, Hkv, DV]
    float* __restrict__ dBeta, float* __restrict__ dGate,                     // [tokens, H], [tokens, H, DK]; either may be null
    const DeltaRow* __restrict__ chunks, int heads, int kvHeads, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    float* const sB = (float*)(smem + K_OFF_B);
    float* const sDW = (float*)(smem + K_OFF_DW);
    float* const sDB = (float*)(smem + K_OFF_DB);
    float* const sKD = (float*)(smem + K_OFF_KD);
    float* const sDA = (float*)(smem + K_OFF_DA);
    float* const sL = (float*)(smem + K_OFF_L);
    float* const sT = (float*)(smem + K_OFF_T);
    float* const sP = (float*)(smem + K_OFF_P);
    float* const sBeta = (float*)(smem + K_OFF_BETA);
    float* const sDBeta = (float*)(smem + K_OFF_DBETA);
    const int tid = threadIdx.x;
    const int h = blockIdx.y;
    const long long ci = blockIdx.x;
    const DeltaRow ch = chunks[blockIdx.x];
    const int len = ch.len;
    const int hk = h / (heads / kvHeads);
    const bool grouped = heads != kvHeads;
    const long long tok0 = ch.tokStart;
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK;
    const long long vStride = (long long)kvHeads * DV, oStride = (long long)heads * DV;
    const elem_t* qB = Q + tok0 * qStride + (long long)h * DK;       // row i: qB + i * qStride
    const elem_t* kB = K + tok0 * kStride + (long long)hk * DK;
    const elem_t* vB = V + tok0 * vStride + (long long)hk * DV;
    const elem_t* oB = dO + tok0 * oStride + (long long)h * DV;
    const elem_t* nB = Dnew + tok0 * oStride + (long long)h * DV;      // δ
    const elem_t* ddB = dDelta + tok0 * oStride + (long long)h * DV;   // dδ
    const elem_t* wB = W + tok0 * qStride + (long long)h * DK;
    const elem_t* uB = U + tok0 * oStride + (long long)h * DV;
    const elem_t* sS = Hck + (ci * heads + h) * DK * DV;               // S [DK][DV]
    const elem_t* sX = dHck + (ci * heads + h) * DK * DV;              // X [DK][DV]

    // 1. b (the in-chunk cumulative log gate, per channel; rows past len repeat the last), β, zeroed sums.
    for (int idx = tid; idx < CHUNK * DK; idx += KT)
    {
        const int i = idx / DK, r = idx % DK;
        sB[idx] = i < len ? gate[((tok0 + i) * heads + h) * DK + r] : 0.f;
    }
    if (tid < CHUNK)
    {
        sBeta[tid] = tid < len ? (beta != 0 ? beta[(tok0 + tid) * heads + h] : 1.f) : 0.f;
        sDBeta[tid] = 0.f;
    }
    __syncthreads();
    for (int r = tid; r < DK; r += KT)
    {
        float acc = 0.f;
        for (int i = 0; i < CHUNK; i++)
        {
            acc += sB[i * DK + r];
            sB[i * DK + r] = acc;
        }
    }
    __syncthreads();

    // 2. L (strictly lower, rows < len), dA = s dO δᵀ (lower with the diagonal), dw = −dδ Sᵀ (rows < len; 0 past).
    for (int idx = tid; idx < CHUNK * 64; idx += KT)
    {
        const int i = idx / 64, j = idx % 64;
        float l = 0.f, da = 0.f;
        if (i < len && j < i)
        {
            const float* bi = sB + i * DK;
            const float* bj = sB + j * DK;
            for (int c = 0; c < DK; c++) l = fmaf(ld_elem(kB + i * kStride + c) * ld_elem(kB + j * kStride + c), exp_e(bi[c] - bj[c]), l);
            l *= sBeta[i];
        }
        if (i < len && j <= i)
        {
            for (int c = 0; c < DV; c++) da = fmaf(ld_elem(oB + i * oStride + c), ld_elem(nB + j * oStride + c), da);
            da *= scale;
        }
        sL[idx] = l;
        sDA[idx] = da;
    }
    for (int idx = tid; idx < CHUNK * DK; idx += KT)
    {
        const int i = idx / DK, r = idx % DK;
        float x = 0.f;
        if (i < len)
            for (int c = 0; c < DV; c++) x = fmaf(ld_elem(ddB + i * oStride + c), ld_elem(sS + r * DV + c), x);
        sDW[idx] = -x;
    }
    __syncthreads();

    // 3. T = (I + L)⁻¹ by forward substitution, one column per thread (rows past len: L is 0 there, so T is I);
    //    P = dw wᵀ + dδ uᵀ (rows l < len; 0 past, where dw and dδ are 0).
    if (tid < 64)
    {
        const int col = tid;
        for (int i = 0; i < CHUNK; i++)
        {
            float x = i == col ? 1.f : 0.f;
            for (int j = col; j < i; j++) x = fmaf(-sL[i * 64 + j], sT[j * 64 + col], x);   // T_jc = 0 for j < col
            sT[i * 64 + col] = x;
        }
    }
    for (int idx = tid; idx < CHUNK * 64; idx += KT)
    {
        const int l = idx / 64, j = idx % 64;
        float x = 0.f;
        if (l < len && j < len)
        {
            for (int r = 0; r < DK; r++) x = fmaf(sDW[l * DK + r], ld_elem(wB + j * qStride + r), x);
            for (int c = 0; c < DV; c++) x = fmaf(ld_elem(ddB + l * oStride + c), ld_elem(uB + j * oStride + c), x);
        }
        sP[idx] = x;
    }
    __syncthreads();

    // 4. G = −Tᵀ P, strictly lower (into L's space: L is not read again).
    for (int idx = tid; idx < CHUNK * 64; idx += KT)
    {
        const int i = idx / 64, j = idx % 64;
        float x = 0.f;
        if (i < len && j < i)
            for (int l = i; l < len; l++) x = fmaf(sT[l * 64 + i], sP[l * 64 + j], x);   // T_li = 0 for l < i
        sL[idx] = -x;
    }
    __syncthreads();
    const float* sG = sL;

    // 5. Per element (i, r): dq, dk, db, and dβ's K̃ and L terms.
    for (int idx = tid; idx < CHUNK * DK; idx += KT)
    {
        const int i = idx / DK, r = idx % DK;
        if (i >= len)
        {
            sDB[idx] = 0.f;
            sKD[idx] = 0.f;
            continue;
        }
        const float bir = sB[i * DK + r], bCr = sB[(len - 1) * DK + r];
        const float qi = ld_elem(qB + i * qStride + r), ki = ld_elem(kB + i * kStride + r), bi = sBeta[i];
        float dQt = 0.f, dKh = 0.f;
        for (int c = 0; c < DV; c++)
        {
            const float s_rc = ld_elem(sS + r * DV + c);
            dQt = fmaf(ld_elem(oB + i * oStride + c), s_rc, dQt);
            dKh = fmaf(ld_elem(nB + i * oStride + c), ld_elem(sX + r * DV + c), dKh);
        }
        dQt *= scale;
        float tdw = 0.f;
        for (int l = i; l < len; l++) tdw = fmaf(sT[l * 64 + i], sDW[l * DK + r], tdw);
        float qa = 0.f, rowOverBeta = 0.f;
        for (int j = 0; j < i; j++)
        {
            const float kj = ld_elem(kB + j * kStride + r), e = exp_e(bir - sB[j * DK + r]);
            qa = fmaf(sDA[i * 64 + j] * kj, e, qa);
            rowOverBeta = fmaf(sG[i * 64 + j] * kj, e, rowOverBeta);
        }
        float ka = 0.f, col = 0.f;
        for (int l = i + 1; l < len; l++)
        {
            const float e = exp_e(sB[l * DK + r] - bir);
            ka = fmaf(sDA[l * 64 + i] * ld_elem(qB + l * qStride + r), e, ka);
            col = fmaf(sBeta[l] * sG[l * 64 + i] * ld_elem(kB + l * kStride + r), e, col);
        }
        const float ebi = exp_e(bir), ehat = exp_e(bCr - bir);
        const float dKt = bi * tdw, dii = sDA[i * 64 + i];
        const float dq = ebi * dQt + qa + dii * ki;
        const float dk = ehat * dKh + ebi * dKt + ka + dii * qi + bi * rowOverBeta + col;
        const float Kh = ki * ehat;
        sDB[idx] = qi * ebi * dQt + ki * ebi * dKt + qi * qa - ki * ka + ki * bi * rowOverBeta - ki * col;
        sKD[idx] = Kh * dKh;
        atomicAdd(&sDBeta[i], ki * ebi * tdw + ki * rowOverBeta);
        dQ[((tok0 + i) * heads + h) * DK + r] = dq;
        float* dkp = dK + ((tok0 + i) * kvHeads + hk) * DK + r;
        if (grouped) atomicAdd(dkp, dk);
        else *dkp = dk;
    }

    // 6. dv = diag(β) Tᵀ dδ and dβ's v term.
    for (int idx = tid; idx < CHUNK * DV; idx += KT)
    {
        const int i = idx / DV, c = idx % DV;
        if (i >= len) continue;
        float tdd = 0.f;
        for (int l = i; l < len; l++) tdd = fmaf(sT[l * 64 + i], ld_elem(ddB + l * oStride + c), tdd);
        atomicAdd(&sDBeta[i], ld_elem(vB + i * vStride + c) * tdd);
        float* dvp = dV + ((tok0 + i) * kvHeads + hk) * DV + c;
        if (grouped) atomicAdd(dvp, sBeta[i] * tdd);
        else *dvp = sBeta[i] * tdd;
    }
    __syncthreads();

    // 7. d log α_t = Σ_{i ≥ t} db_i + Σ_{j < t} K̂_j ⊙ dK̂_j + e^{b_C} ⊙ rowsum(S ⊙ X), down each channel; dβ.
    if (dGate != 0 && len > 0)
        for (int r = tid; r < DK; r += KT)
        {
            float prefix = 0.f;
            for (int i = 0; i < len; i++)
            {
                const float kd = sKD[i * DK + r];
                sKD[i * DK + r] = prefix;   // exclusive: Σ_{j < i}
                prefix += kd;
            }
            float sx = 0.f;
            for (int c = 0; c < DV; c++) sx = fmaf(ld_elem(sS + r * DV + c), ld_elem(sX + r * DV + c), sx);
            const float state = exp_e(sB[(len - 1) * DK + r]) * sx;
            float acc = 0.f;
            for (int i = len - 1; i >= 0; i--)
            {
                acc += sDB[i * DK + r];
                dGate[((tok0 + i) * heads + h) * DK + r] = acc + sKD[i * DK + r] + state;
            }
        }
    if (dBeta != 0 && tid < len) dBeta[(tok0 + tid) * heads + h] = sDBeta[tid];
}
#endif   // GATE == 2
