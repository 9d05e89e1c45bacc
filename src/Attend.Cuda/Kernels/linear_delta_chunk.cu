// Attend: the delta rule and the gated delta rule (scalar gate), chunked over 64 tokens with the WY/UT representation
// (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over Sequence Length"), on tensor cores
// (mma.sync m16n8k16, bf16/fp16 in, float32 accumulation, float32 state), plus the recurrent (decode) step.
//
//   S_t = α_t S_{t-1} + β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ,   o_t = scale · S_tᵀ q_t     (S: [DK, DV] per query head)
//
// (α = 1: DeltaNet; α_t = exp(g_t), a scalar per token and head or a fixed γ per head: gated DeltaNet.) Inside a chunk
// with b_i the cumulative log gate (inclusive) and S the state at the chunk's start, the new values δ_i = β_i (v_i − …)
// solve (I + L) δ = diag(β) V − diag(β e^b) K S with L_ij = β_i e^{b_i − b_j} k_i·k_j (j < i). With T = (I + L)⁻¹:
//   w = T diag(β e^b) K,   u = T diag(β) V,   δ = u − w S,
//   o_i = scale (e^{b_i} q_i S + Σ_{j≤i} e^{b_i − b_j} (q_i·k_j) δ_j),   S' = e^{b_C} S + Σ_j e^{b_C − b_j} k_j δ_jᵀ.
//
// Two kernels. attend_delta_prepare (one CTA per 64-token chunk and query head, all chunks at once) computes K Kᵀ and
// Q Kᵀ on tensor cores, inverts the unit lower-triangular I + L by forward substitution (one thread per column of T,
// float32 in registers), and writes w [tokens, H, DK], u [tokens, H, dv] and A = tril(Q Kᵀ ⊙ e^{b_i − b_j})
// [tokens, H, 64] in the element type (like flash-linear-attention's chunk kernels, which also keep T, w and u in the
// input type). attend_delta_chunk (one CTA per sequence, query head and BV value columns) walks the chunks in order
// with its [DK, BV] state slice in float32 registers: δ = u − w S and q S in one pass over the state tile (rounded to
// the element type in shared memory), then o = e^b ⊙ (q S) + A δ, then S' = e^{b_C} S + K̂ᵀ δ. The chunks' tiles
// stream through shared memory with cp.async, double buffered; rows past a chunk's end are zero-filled (zero w, u and
// k rows give δ = 0, which adds nothing to the state; zero gates decay nothing).
//
// attend_delta_recurrent: one token at a time (decode), the state in registers as linear_recurrent.cu holds it (CTA
// = sequence, query head, 32 value columns; lane = column, warp w = key rows w, w + 8, ...), two reductions per token
// through shared memory (kᵀ S for the prediction, then qᵀ S for the output).
//
// The sequential kernel's CTA is VH groups of 4 warps, each group owning BV value columns: the groups share the q, k,
// w and A tiles (one load from L2 for VH × BV columns) and keep their own u, δ and state tiles.
//
// Defines: DK (64 | 128; any multiple of 8 up to 256 for the recurrent kernel), ELEM_BF16 (1 bf16, 0 fp16),
// GATE (0 none: the delta rule; 1 a scalar per token and head: the gated delta rule; 2 a log gate per token, head and
// key channel: Kimi Delta Attention, whose first kernel is attend_kda_prepare in linear_kda_prepare.cuh and whose chain
// is attend_delta_chunk reading Q̃, K̂ and e^{b_C} from it), BV (16 | 32 | 64), VH (1 | 2), CHAIN_NOOUT (1: the
// backward's recomputation of the chain, no output: no q and A tiles in shared memory, 78.5 KB at DK = 128, BV = 16, so
// that it fits an SM beside the reverse chain of linear_delta_bwd.cu and the two run at once; default 0).
// mma_tiles.cuh and linear_elem.cuh (elem_lo/elem_hi, exp_e) are expanded in place by KernelCompiler.Source. (bget and
// cp_async4 repeat linear_tiles.cuh's GATE 1 helpers, whose GATE numbering differs from this file's.)

#ifndef DK
#error "DK must be defined"
#endif
#ifndef BV
#define BV 16
#endif
#ifndef VH
#define VH 1
#endif
#ifndef CHAIN_NOOUT
#define CHAIN_NOOUT 0
#endif

#define NWARPS 4
#define NT (NWARPS * 32)
#define CHUNK 64
#define HEAD_DIM DK
#define DC (DK / 8)
#define KS (DK / 16)
#define VC (BV / 8)      // 16-byte chunks (and 8-column mma tiles) per row of a value tile

typedef unsigned short elem_t;

#include "mma_tiles.cuh"
#include "linear_elem.cuh"

struct DeltaRow { int seq, tokStart, len, pad; };

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][64] tile (A, T, a 64-column V block).
__device__ __forceinline__ unsigned off64(int row, int chunk)
{
    return (unsigned)((row * 64 + ((chunk ^ (row & 7)) << 3)) * 2);
}

// Byte offset in a swizzled [rows][BV] tile (u, δ, the state slice): the 8 rows an ldmatrix reads at one logical chunk
// fall in 8 different 16-byte bank groups (a 128-byte line holds 8 / VC rows).
__device__ __forceinline__ unsigned boff(int row, int chunk)
{
    return (unsigned)((row * BV + ((chunk ^ ((row / (8 / VC)) & (VC - 1))) << 3)) * 2);
}

// Copies CHUNK rows of `COLS` (64 or BV) elements (global row stride `stride` elements) into a swizzled tile; zero past `valid`.
template <int COLS>
__device__ __forceinline__ void load_cols(unsigned tile, const elem_t* g, long long stride, int valid, int tid)
{
#pragma unroll
    for (int i = 0; i < (CHUNK * (COLS / 8) + NT - 1) / NT; i++)
    {
        const int idx = tid + i * NT;
        if (CHUNK * (COLS / 8) % NT != 0 && idx >= CHUNK * (COLS / 8)) break;
        const int r = idx / (COLS / 8), c = idx % (COLS / 8);
        const bool ok = r < valid;
        const elem_t* src = ok ? g + (long long)r * stride + c * 8 : g;
        cp_async16(tile + (COLS == 64 ? off64(r, c) : boff(r, c)), src, ok ? 16 : 0);
    }
}

// The log decay of token `tok` (absolute) for head h: a per-head constant, a [tokens, H] gate, or none.
__device__ __forceinline__ float log_gate(const float* gate, const float* headLogDecay, long long tok, int h, int heads)
{
#if GATE == 1
    return headLogDecay != 0 ? headLogDecay[h] : gate[tok * heads + h];
#else
    (void)gate; (void)headLogDecay; (void)tok; (void)h; (void)heads;
    return 0.f;
#endif
}

#if DK == 64 || DK == 128   // the chunked kernels; the recurrent one takes any multiple of 8 up to 256

// ---------------------------------------------------------------------------------------------------------------
// attend_delta_prepare: per (chunk, query head): w, u and A.

#if GATE != 2
#define PQ_BYTES (CHUNK * DK * 2)
#define P_OFF_Q 0
#define P_OFF_K (P_OFF_Q + PQ_BYTES)
#define P_OFF_V (P_OFF_K + PQ_BYTES)                 // one 64-column block of V
#define P_OFF_TU (P_OFF_V + CHUNK * 64 * 2)          // T diag(β), element type
#define P_OFF_TW (P_OFF_TU + CHUNK * 64 * 2)         // T diag(β e^b), element type
#define P_OFF_L (P_OFF_TW + CHUNK * 64 * 2)          // L, float32 [64][65]
#define P_OFF_B (P_OFF_L + CHUNK * 65 * 4)           // b (cumulative log gate), float32 [64]
#define P_OFF_BETA (P_OFF_B + CHUNK * 4)             // β, float32 [64]
#define P_SMEM_BYTES (P_OFF_BETA + CHUNK * 4)

extern "C" __global__ void __launch_bounds__(NT)
attend_delta_prepare(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V,
    const float* __restrict__ beta,          // [tokens, H] or null (β = 1)
    const float* __restrict__ gate,          // GATE 1: [tokens, H] log α (unless headLogDecay)
    const float* __restrict__ headLogDecay,  // GATE 1: [H] log γ, or null to read `gate`
    elem_t* __restrict__ W, elem_t* __restrict__ U, elem_t* __restrict__ A,   // [tokens, H, DK], [tokens, H, dv], [tokens, H, 64]
    const DeltaRow* __restrict__ chunks, int heads, int kvHeads, int dv,
    elem_t* __restrict__ Tout,               // backward only: T = (I + L)⁻¹ [tokens, H, 64] (element type), or null
    const elem_t* __restrict__ Tin)          // backward only: T as a forward wrote it (then no K Kᵀ, no solve), or null
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y;
    const DeltaRow ch = chunks[blockIdx.x];
    const int len = ch.len;
    const int hk = h / (heads / kvHeads);
    const long long tok0 = ch.tokStart;
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK;
    const unsigned base = smem_addr(smem);
    float* const sL = (float*)(smem + P_OFF_L);
    float* const sB = (float*)(smem + P_OFF_B);
    float* const sBeta = (float*)(smem + P_OFF_BETA);
    const int wr = warp * 16;

    load_tile<CHUNK>(base + P_OFF_Q, Q + tok0 * qStride + (long long)h * DK, qStride, len, tid);
    load_tile<CHUNK>(base + P_OFF_K, K + tok0 * kStride + (long long)hk * DK, kStride, len, tid);
    // A given T lands in V's block (free until u), rows past the chunk's end zero.
    if (Tin != 0) load_cols<64>(base + P_OFF_V, Tin + (tok0 * heads + h) * 64, (long long)heads * 64, len, tid);
    cp_async_commit();
    if (tid < CHUNK)
    {
        sBeta[tid] = tid < len ? (beta != 0 ? beta[(tok0 + tid) * heads + h] : 1.f) : 0.f;
        sB[tid] = tid < len ? log_gate(gate, headLogDecay, tok0 + tid, h, heads) : 0.f;
    }
    __syncthreads();
#if GATE == 1
    if (warp == 0)
    {
        // Inclusive prefix sum of the 64 log gates: lane l holds gates 2l and 2l + 1.
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
    cp_async_wait<0>();
    __syncthreads();

    // K Kᵀ and Q Kᵀ for this warp's 16 rows against the keys up to its own 16-key block.
    {
        float kk_[8][4], qk[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) kk_[j][e] = qk[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
        {
            unsigned a0, a1, a2, a3, q0, q1, q2, q3;
            ldsm_x4(base + P_OFF_K + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
            ldsm_x4(base + P_OFF_Q + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), q0, q1, q2, q3);
#pragma unroll
            for (int np = 0; np < 4; np++)
            {
                if (np > warp) break;
                unsigned b0, b1, b2, b3;
                ldsm_x4(base + P_OFF_K + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                if (Tin == 0)
                {
                    mma16816(kk_[2 * np], a0, a1, a2, a3, b0, b1);
                    mma16816(kk_[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
                mma16816(qk[2 * np], q0, q1, q2, q3, b0, b1);
                mma16816(qk[2 * np + 1], q0, q1, q2, q3, b2, b3);
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            const float bRow = sB[row], betaRow = sBeta[row];
            elem_t* aOut = A + ((tok0 + row) * heads + h) * 64;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                const bool live = j <= 2 * warp + 1;   // key tiles past this warp's rows were never accumulated
                float lv[2], av[2];
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    const int col = 8 * j + 2 * t + e;
                    const float decay = (live && col <= row) ? exp_e(bRow - sB[col]) : 0.f;
                    lv[e] = (live && col < row) ? betaRow * decay * kk_[j][2 * half + e] : 0.f;
                    av[e] = (live && col <= row) ? decay * qk[j][2 * half + e] : 0.f;
                    sL[row * 65 + col] = lv[e];
                }
                if (row < len) *(unsigned*)(aOut + 8 * j + 2 * t) = pack2(av[0], av[1]);
            }
        }
    }
    __syncthreads();

    if (Tin != 0)
    {
        // T given: T diag(β) and T diag(β e^b) element by element (T rounded once more, as fla's backward recomputes w
        // and u from its saved A).
        unsigned char* tu = smem + P_OFF_TU;
        unsigned char* tw = smem + P_OFF_TW;
        const unsigned char* tin = smem + P_OFF_V;
        for (int idx = tid; idx < CHUNK * CHUNK; idx += NT)
        {
            const int i = idx >> 6, c = idx & 63;
            const unsigned o = off64(i, c >> 3) + (c & 7) * 2;
            const unsigned short raw = *(const unsigned short*)(tin + o);
            const float x = elem_lo((unsigned)raw);
            const float bc = sBeta[c];
            const unsigned pu = pack2(x * bc, 0.f), pw = pack2(x * bc * exp_e(sB[c]), 0.f);
            *(elem_t*)(tu + o) = (elem_t)(pu & 0xffffu);
            *(elem_t*)(tw + o) = (elem_t)(pw & 0xffffu);
        }
    }
    // T = (I + L)⁻¹ by forward substitution, one column per thread: x_i = δ_ic − Σ_{j<i} L_ij x_j (x_j = 0 for j < c).
    else if (tid < CHUNK)
    {
        const int c = tid;
        float x[CHUNK];
#pragma unroll
        for (int i = 0; i < CHUNK; i++)
        {
            // Four partial sums: a dependent chain of i / 4 FMAs instead of i (the solve is latency-bound).
            float acc[4] = {i == c ? 1.f : 0.f, 0.f, 0.f, 0.f};
            const float* li = sL + i * 65;
#pragma unroll
            for (int j = 0; j < i; j++) acc[j & 3] = fmaf(-li[j], x[j], acc[j & 3]);
            x[i] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
        const float bc = sBeta[c];
        const float bw = bc * exp_e(sB[c]);
        unsigned char* tu = smem + P_OFF_TU;
        unsigned char* tw = smem + P_OFF_TW;
#pragma unroll
        for (int i = 0; i < CHUNK; i++)
        {
            const unsigned o = off64(i, c >> 3) + (c & 7) * 2;
            const unsigned pu = pack2(x[i] * bc, 0.f), pw = pack2(x[i] * bw, 0.f);
            *(elem_t*)(tu + o) = (elem_t)(pu & 0xffffu);
            *(elem_t*)(tw + o) = (elem_t)(pw & 0xffffu);
            // Row i of T for the backward (threads c = 0..63 write one row's 128 contiguous bytes together).
            if (Tout != 0 && i < len) Tout[((tok0 + i) * heads + h) * 64 + c] = (elem_t)(pack2(x[i], 0.f) & 0xffffu);
        }
    }
    __syncthreads();

    // w = T diag(β e^b) K: this warp's 16 rows, all DK channels (T is lower triangular: token blocks up to the warp's own).
    {
        float acc[DK / 8][4];
#pragma unroll
        for (int j = 0; j < DK / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk > warp) break;
            unsigned a0, a1, a2, a3;
            ldsm_x4(base + P_OFF_TW + off64(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < DK / 16; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(base + P_OFF_K + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(acc[2 * dp], a0, a1, a2, a3, b0, b1);
                mma16816(acc[2 * dp + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            if (row < len)
            {
                elem_t* out = W + ((tok0 + row) * heads + h) * DK;
#pragma unroll
                for (int j = 0; j < DK / 8; j++) *(unsigned*)(out + 8 * j + 2 * t) = pack2(acc[j][2 * half], acc[j][2 * half + 1]);
            }
        }
    }

    // u = T diag(β) V, one 64-column block of V at a time.
    const long long vStride = (long long)kvHeads * dv;
    for (int vb = 0; vb < dv / 64; vb++)
    {
        load_cols<64>(base + P_OFF_V, V + tok0 * vStride + (long long)hk * dv + vb * 64, vStride, len, tid);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        float acc[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk > warp) break;
            unsigned a0, a1, a2, a3;
            ldsm_x4(base + P_OFF_TU + off64(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < 4; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(base + P_OFF_V + off64(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(acc[2 * dp], a0, a1, a2, a3, b0, b1);
                mma16816(acc[2 * dp + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            if (row < len)
            {
                elem_t* out = U + ((tok0 + row) * heads + h) * dv + vb * 64;
#pragma unroll
                for (int j = 0; j < 8; j++) *(unsigned*)(out + 8 * j + 2 * t) = pack2(acc[j][2 * half], acc[j][2 * half + 1]);
            }
        }
        __syncthreads();   // every warp is done with this V block before the next one lands
    }
}
#else
#include "linear_kda_prepare.cuh"
#endif

// ---------------------------------------------------------------------------------------------------------------
// attend_delta_chunk: the state passed from chunk to chunk, and the outputs.

#define MS (DK / 64)
#define C_Q_BYTES (CHUNK * DK * 2)
#define C_U_BYTES (CHUNK * BV * 2)
#define C_A_BYTES (CHUNK * 64 * 2)
#if CHAIN_NOOUT
#define C_STAGE (2 * C_Q_BYTES + VH * C_U_BYTES + CHUNK * 4)   // k, w, u (per group), raw gates: no q, no A
#define C_OFF_K 0
#define C_OFF_W (C_OFF_K + C_Q_BYTES)
#define C_OFF_U (C_OFF_W + C_Q_BYTES)
#define C_OFF_G (C_OFF_U + VH * C_U_BYTES)
#define C_OFF_Q 0   // never read
#define C_OFF_A 0   // never read
#else
#define C_STAGE (3 * C_Q_BYTES + VH * C_U_BYTES + C_A_BYTES + CHUNK * 4)   // q, k, w, u (per group), A, raw gates
#define C_OFF_Q 0
#define C_OFF_K (C_OFF_Q + C_Q_BYTES)
#define C_OFF_W (C_OFF_K + C_Q_BYTES)
#define C_OFF_U (C_OFF_W + C_Q_BYTES)
#define C_OFF_A (C_OFF_U + VH * C_U_BYTES)
#define C_OFF_G (C_OFF_A + C_A_BYTES)
#endif
#define C_OFF_S (2 * C_STAGE)                        // per group: the state slice in the element type, 2 buffers of [DK][BV]
#define C_OFF_D (C_OFF_S + VH * 2 * DK * BV * 2)     // per group: δ, [64][BV]
#define C_SMEM_BYTES (C_OFF_D + VH * C_U_BYTES)

#if GATE == 1
// The in-chunk cumulative log decay b lives in registers: lane l holds b[2l] and b[2l+1]. Every lane must call this.
__device__ __forceinline__ float bget(float b0, float b1, int x)
{
    const float e = __shfl_sync(0xffffffffu, b0, x >> 1), o = __shfl_sync(0xffffffffu, b1, x >> 1);
    return (x & 1) ? o : e;
}

__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(dst), "l"(src), "r"(bytes));
}
#endif

extern "C" __global__ void __launch_bounds__(NT * VH)
attend_delta_chunk(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ W, const elem_t* __restrict__ U,
    const elem_t* __restrict__ A,
    const float* __restrict__ gate,          // GATE 1: [tokens, H] log α (unless headLogDecay); GATE 2: e^{b_C} [chunks, H, DK]
    const float* __restrict__ headLogDecay,
    const float* __restrict__ S0, float* __restrict__ ST,   // [N, H, DK, dv] or null
    elem_t* __restrict__ O, const DeltaRow* __restrict__ seqs, int heads, int kvHeads, int dv, float scale,
    elem_t* __restrict__ Hck,     // backward only: the state at each chunk's start [chunks, H, DK, dv] (element type), or null
    elem_t* __restrict__ Dnew)    // backward only: δ [tokens, H, dv] (element type, as rounded here), or null
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wq = warp & 3, vh = warp >> 2;   // this warp's 16 token rows / 16·MS state rows; its value group
    const int gt = tid & (NT - 1);             // thread index inside the group (the tile loaders' NT threads)
    const int h = blockIdx.y;
    const int col0 = (blockIdx.x * VH + vh) * BV;   // this group's first value column
    const DeltaRow sq = seqs[blockIdx.z];
    const int hk = h / (heads / kvHeads);
#if GATE == 2
    // Q is Q̃ and K is K̂ (attend_kda_prepare), both per query head.
    const long long qStride = (long long)heads * DK, kStride = qStride, uStride = (long long)heads * dv;
    const long long tok0 = sq.tokStart;
    const elem_t* qBase = Q + tok0 * qStride + (long long)h * DK;
    const elem_t* kBase = K + tok0 * kStride + (long long)h * DK;
    (void)hk;
#else
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK, uStride = (long long)heads * dv;
    const long long tok0 = sq.tokStart;
    const elem_t* qBase = Q + tok0 * qStride + (long long)h * DK;
    const elem_t* kBase = K + tok0 * kStride + (long long)hk * DK;
#endif
    const elem_t* wBase = W + tok0 * qStride + (long long)h * DK;
    const elem_t* uBase = U + tok0 * uStride + (long long)h * dv + col0;
    const elem_t* aBase = A + (tok0 * heads + h) * 64;
    const unsigned base = smem_addr(smem);
    const int stateRow0 = wq * 16 * MS;     // this warp's first state row (key channel)
    const int wr = wq * 16;                 // this warp's first token row in a chunk
    const unsigned uOff = C_OFF_U + vh * C_U_BYTES, sOff = C_OFF_S + vh * 2 * DK * BV * 2, dOff = C_OFF_D + vh * C_U_BYTES;
    const bool loadsQW = VH == 1 || vh == 0, loadsKA = VH == 1 || vh == 1;   // the shared tiles, split between the groups
    // Without an output (CHAIN_NOOUT, the backward's recomputation: only the checkpoints and δ) q and A are neither
    // loaded nor used. A compile-time constant, so the forward's code is the one measured before: with a test of O at
    // run time the forward (gate 0) measured 0.628 ms against 0.555 (H100, T = 16k, delta-speed run 1; not re-measured).
    constexpr bool hasOut = !CHAIN_NOOUT;
    const long long stateRowBase = ((long long)sq.seq * heads + h) * DK;

    // The state slice as the accumulators of K̂ᵀδ: element (m, j, e) is row stateRow0 + 16m + g + 8(e>>1), column 8j + 2t + (e&1).
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
                float2 s = make_float2(0.f, 0.f);
                if (S0 != 0) s = *(const float2*)(S0 + (stateRowBase + row) * dv + col0 + 8 * j + 2 * t);
                st[m][j][2 * half] = s.x;
                st[m][j][2 * half + 1] = s.y;
                *(unsigned*)(smem + sOff + boff(row, j) + 4 * t) = pack2(s.x, s.y);
            }
        }

    const int nChunks = (sq.len + CHUNK - 1) / CHUNK;
    if (nChunks > 0)
    {
        const int valid = sq.len < CHUNK ? sq.len : CHUNK;
        if (loadsQW)
        {
            if (hasOut) load_tile<CHUNK>(base + C_OFF_Q, qBase, qStride, valid, gt);
            load_tile<CHUNK>(base + C_OFF_W, wBase, qStride, valid, gt);
        }
        if (loadsKA)
        {
            load_tile<CHUNK>(base + C_OFF_K, kBase, kStride, valid, gt);
            if (hasOut) load_cols<64>(base + C_OFF_A, aBase, (long long)heads * 64, valid, gt);
#if GATE == 1
            if (headLogDecay == 0 && gt < CHUNK)
                cp_async4(base + C_OFF_G + gt * 4, gt < valid ? gate + (tok0 + gt) * heads + h : gate, gt < valid ? 4 : 0);
#endif
        }
        load_cols<BV>(base + uOff, uBase, uStride, valid, gt);
    }
    cp_async_commit();

    for (int c = 0; c < nChunks; c++)
    {
        const int stage = c & 1;
        const int c0 = c * CHUNK;
        const int len = sq.len - c0 < CHUNK ? sq.len - c0 : CHUNK;
        // This chunk's tiles have landed and every warp is done with the previous chunk: the other stage is free.
        cp_async_wait<0>();
        __syncthreads();
        if (c + 1 < nChunks)
        {
            const int n0 = c0 + CHUNK;
            const int nvalid = sq.len - n0 < CHUNK ? sq.len - n0 : CHUNK;
            const unsigned ns = base + (stage ^ 1) * C_STAGE;
            if (loadsQW)
            {
                if (hasOut) load_tile<CHUNK>(ns + C_OFF_Q, qBase + (long long)n0 * qStride, qStride, nvalid, gt);
                load_tile<CHUNK>(ns + C_OFF_W, wBase + (long long)n0 * qStride, qStride, nvalid, gt);
            }
            if (loadsKA)
            {
                load_tile<CHUNK>(ns + C_OFF_K, kBase + (long long)n0 * kStride, kStride, nvalid, gt);
                if (hasOut) load_cols<64>(ns + C_OFF_A, aBase + (long long)n0 * heads * 64, (long long)heads * 64, nvalid, gt);
#if GATE == 1
                if (headLogDecay == 0 && gt < CHUNK)
                    cp_async4(ns + C_OFF_G + gt * 4, gt < nvalid ? gate + (tok0 + n0 + gt) * heads + h : gate, gt < nvalid ? 4 : 0);
#endif
            }
            load_cols<BV>(ns + uOff, uBase + (long long)n0 * uStride, uStride, nvalid, gt);
        }
        cp_async_commit();

        if (Hck != 0)
        {
            // The backward's checkpoint: the state at this chunk's start, rounded as the shared copy below is (sq.pad is
            // the sequence's first chunk index).
            elem_t* hb = Hck + ((long long)(sq.pad + c) * heads + h) * DK * dv + col0;
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                    for (int j = 0; j < VC; j++)
                        *(unsigned*)(hb + (long long)row * dv + 8 * j + 2 * t) = pack2(st[m][j][2 * half], st[m][j][2 * half + 1]);
                }
        }
        const unsigned st0 = base + stage * C_STAGE;
        const unsigned sQ = st0 + C_OFF_Q, sK = st0 + C_OFF_K, sW = st0 + C_OFF_W, sU = st0 + uOff, sA = st0 + C_OFF_A;
        const unsigned sS = base + sOff + stage * DK * BV * 2;
        const unsigned sD = base + dOff;

#if GATE == 1
        // The in-chunk cumulative log decay (inclusive); rows past the end decay nothing.
        float b0, b1;
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
                const float2 a = *(const float2*)(smem + stage * C_STAGE + C_OFF_G + i0 * 4);
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
        const float bLast = __shfl_sync(0xffffffffu, b1, 31);
#elif GATE == 2
        // The chunk's decay e^{b_C} of this thread's state rows (channels), read now so the load is off the chain.
        float rowDecay[MS][2];
        {
            const float* dec = gate + ((long long)(sq.pad + c) * heads + h) * DK;
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int half = 0; half < 2; half++) rowDecay[m][half] = __ldg(dec + stateRow0 + 16 * m + g + 8 * half);
        }
#endif

        // 1. w S and q S in one pass over the state tile (w S alone without an output).
        float va[VC][4], oa[VC][4];
#pragma unroll
        for (int j = 0; j < VC; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) va[j][e] = oa[j][e] = 0.f;
        if (!hasOut)
        {
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
            {
                unsigned w0, w1, w2, w3;
                ldsm_x4(sW + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), w0, w1, w2, w3);
#pragma unroll
                for (int dp = 0; dp < VC / 2; dp++)
                {
                    unsigned s0, s1, s2, s3;
                    ldsm_x4_t(sS + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), s0, s1, s2, s3);
                    mma16816(va[2 * dp], w0, w1, w2, w3, s0, s1);
                    mma16816(va[2 * dp + 1], w0, w1, w2, w3, s2, s3);
                }
            }
        }
        else
        {
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
        {
            unsigned w0, w1, w2, w3, q0, q1, q2, q3;
            ldsm_x4(sW + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), w0, w1, w2, w3);
            ldsm_x4(sQ + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), q0, q1, q2, q3);
#pragma unroll
            for (int dp = 0; dp < VC / 2; dp++)
            {
                unsigned s0, s1, s2, s3;
                ldsm_x4_t(sS + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), s0, s1, s2, s3);
                mma16816(va[2 * dp], w0, w1, w2, w3, s0, s1);
                mma16816(va[2 * dp + 1], w0, w1, w2, w3, s2, s3);
                mma16816(oa[2 * dp], q0, q1, q2, q3, s0, s1);
                mma16816(oa[2 * dp + 1], q0, q1, q2, q3, s2, s3);
            }
        }
        }
        // The state update's key operands K̂ᵀ, loaded and decayed before the barrier: they do not depend on δ, so their
        // shared-memory latency and the gate arithmetic come off the chain δ → K̂ᵀδ → next chunk.
        unsigned ka[4][MS][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
#pragma unroll
            for (int m = 0; m < MS; m++)
                ldsm_x4_t(sK + tile_offset(kk * 16 + (lane & 7) + ((lane >> 4) << 3), (stateRow0 + 16 * m) / 8 + ((lane >> 3) & 1)),
                          ka[kk][m][0], ka[kk][m][1], ka[kk][m][2], ka[kk][m][3]);
#if GATE == 1
            // ka[.][.][0..1] hold tokens 2t, 2t+1 of this 16-token step, [2..3] tokens 2t+8, 2t+9.
            const int tk = kk * 16 + 2 * t;
            const float f0 = exp_e(bLast - bget(b0, b1, tk)), f1 = exp_e(bLast - bget(b0, b1, tk + 1));
            const float f8 = exp_e(bLast - bget(b0, b1, tk + 8)), f9 = exp_e(bLast - bget(b0, b1, tk + 9));
#pragma unroll
            for (int m = 0; m < MS; m++)
            {
                ka[kk][m][0] = pack2(elem_lo(ka[kk][m][0]) * f0, elem_hi(ka[kk][m][0]) * f1);
                ka[kk][m][1] = pack2(elem_lo(ka[kk][m][1]) * f0, elem_hi(ka[kk][m][1]) * f1);
                ka[kk][m][2] = pack2(elem_lo(ka[kk][m][2]) * f8, elem_hi(ka[kk][m][2]) * f9);
                ka[kk][m][3] = pack2(elem_lo(ka[kk][m][3]) * f8, elem_hi(ka[kk][m][3]) * f9);
            }
#endif
        }
        // δ = u − w S, rounded to the element type (the operand of the two products below).
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
#pragma unroll
            for (int j = 0; j < VC; j++)
            {
                const unsigned o = boff(row, j) + 4 * t;
                unsigned uu;
                asm volatile("ld.shared.b32 %0, [%1];" : "=r"(uu) : "r"(sU + o));
                const unsigned d = pack2(elem_lo(uu) - va[j][2 * half], elem_hi(uu) - va[j][2 * half + 1]);
                asm volatile("st.shared.b32 [%0], %1;" :: "r"(sD + o), "r"(d));
                if (Dnew != 0 && row < len) *(unsigned*)(Dnew + (tok0 + c0 + row) * uStride + (long long)h * dv + col0 + 8 * j + 2 * t) = d;
            }
        }
        // δ is this group's own: its 4 warps wait for each other (named barrier 1 + vh), not for the other group.
#if VH == 1
        __syncthreads();
#else
        asm volatile("bar.sync %0, %1;" :: "r"(1 + vh), "n"(NT) : "memory");
#endif

        // 2. o = e^b ⊙ (q S) + A δ.
        if (hasOut)
        {
#if GATE == 1
        {
            const float f0 = exp_e(bget(b0, b1, wr + g)), f1 = exp_e(bget(b0, b1, wr + g + 8));
#pragma unroll
            for (int j = 0; j < VC; j++)
            {
                oa[j][0] *= f0; oa[j][1] *= f0;
                oa[j][2] *= f1; oa[j][3] *= f1;
            }
        }
#endif
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk > wq) break;
            unsigned a0, a1, a2, a3;
            ldsm_x4(sA + off64(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < VC / 2; dp++)
            {
                unsigned d0, d1, d2, d3;
                ldsm_x4_t(sD + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), d0, d1, d2, d3);
                mma16816(oa[2 * dp], a0, a1, a2, a3, d0, d1);
                mma16816(oa[2 * dp + 1], a0, a1, a2, a3, d2, d3);
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            if (O != 0 && row < len)
            {
                elem_t* out = O + (tok0 + c0 + row) * uStride + (long long)h * dv + col0;
#pragma unroll
                for (int j = 0; j < VC; j++) *(unsigned*)(out + 8 * j + 2 * t) = pack2(oa[j][2 * half] * scale, oa[j][2 * half + 1] * scale);
            }
        }
        }

        // 3. S' = e^{b_C} S + K̂ᵀ δ with K̂_j = k_j e^{b_C − b_j}.
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
#pragma unroll
            for (int dp = 0; dp < VC / 2; dp++)
            {
                unsigned d0, d1, d2, d3;
                ldsm_x4_t(sD + boff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), d0, d1, d2, d3);
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    mma16816(st[m][2 * dp], ka[kk][m][0], ka[kk][m][1], ka[kk][m][2], ka[kk][m][3], d0, d1);
                    mma16816(st[m][2 * dp + 1], ka[kk][m][0], ka[kk][m][1], ka[kk][m][2], ka[kk][m][3], d2, d3);
                }
            }
        }

        // 4. The next chunk's state tile, in the other buffer (its last readers, the previous chunk's, are past the barrier at the top).
        const unsigned sNext = base + sOff + (stage ^ 1) * DK * BV * 2;
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                for (int j = 0; j < VC; j++)
                    asm volatile("st.shared.b32 [%0], %1;" :: "r"(sNext + boff(row, j) + 4 * t), "r"(pack2(st[m][j][2 * half], st[m][j][2 * half + 1])));
            }
    }
    cp_async_wait<0>();

    if (ST != 0)
    {
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                for (int j = 0; j < VC; j++)
                    *(float2*)(ST + (stateRowBase + row) * dv + col0 + 8 * j + 2 * t) = make_float2(st[m][j][2 * half], st[m][j][2 * half + 1]);
            }
    }
#if GATE != 1
    (void)headLogDecay;
#endif
#if GATE == 0
    (void)gate;
#endif
}

#endif   // DK == 64 || DK == 128

// ---------------------------------------------------------------------------------------------------------------
// attend_delta_recurrent: one token at a time (decode). S0 and ST may be one buffer (the state updated in place).

#define RW 8              // warps per CTA
#define RROWS (DK / RW)   // state rows per thread

__device__ __forceinline__ float elem_to_float(elem_t x) { return elem_lo((unsigned)x); }

extern "C" __global__ void __launch_bounds__(RW * 32)
attend_delta_recurrent(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, elem_t* __restrict__ O,
    const float* __restrict__ beta, const float* __restrict__ gate, const float* __restrict__ headLogDecay,
    const float* S0, float* ST, const DeltaRow* __restrict__ seqs, int heads, int kvHeads, int dv, float scale)
{
    __shared__ float red[2][RW][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + lane;
    const int h = blockIdx.y;
    const DeltaRow sq = seqs[blockIdx.z];
    const int hk = h / (heads / kvHeads);
    const bool live = col < dv;
    const long long stateBase = ((long long)sq.seq * heads + h) * DK;

    float s[RROWS];
#pragma unroll
    for (int r = 0; r < RROWS; r++)
        s[r] = (S0 != 0 && live) ? S0[(stateBase + warp + RW * r) * dv + col] : 0.f;

    for (int i = 0; i < sq.len; i++)
    {
        const long long tok = sq.tokStart + i;
        const elem_t* q = Q + (tok * heads + h) * DK;
        const elem_t* k = K + (tok * kvHeads + hk) * DK;
        const float v = live ? elem_to_float(V[(tok * kvHeads + hk) * dv + col]) : 0.f;
        const float b = beta != 0 ? beta[tok * heads + h] : 1.f;
#if GATE == 1
        const float a = exp_e(log_gate(gate, headLogDecay, tok, h, heads));
#elif GATE == 0
        const float a = 1.f;
#else
        const float* gt = gate + (tok * heads + h) * DK;   // the channel gate: row r of the state decays by e^{g_r}
#endif
        // The prediction kᵀ (α S) of this column.
        float p = 0.f;
#pragma unroll
        for (int r = 0; r < RROWS; r++)
        {
#if GATE == 2
            s[r] *= exp_e(gt[warp + RW * r]);
#else
            s[r] *= a;
#endif
            p = fmaf(elem_to_float(k[warp + RW * r]), s[r], p);
        }
        red[0][warp][lane] = p;
        __syncthreads();
        p = 0.f;
#pragma unroll
        for (int w = 0; w < RW; w++) p += red[0][w][lane];
        const float d = b * (v - p);
        float acc = 0.f;
#pragma unroll
        for (int r = 0; r < RROWS; r++)
        {
            s[r] = fmaf(elem_to_float(k[warp + RW * r]), d, s[r]);
            acc = fmaf(elem_to_float(q[warp + RW * r]), s[r], acc);
        }
        red[1][warp][lane] = acc;
        __syncthreads();
        if (warp == 0)
        {
            float o = 0.f;
#pragma unroll
            for (int w = 0; w < RW; w++) o += red[1][w][lane];
            if (live) O[(tok * heads + h) * dv + col] = (elem_t)(pack2(o * scale, 0.f) & 0xffffu);
        }
    }
    if (ST != 0 && live)
    {
#pragma unroll
        for (int r = 0; r < RROWS; r++) ST[(stateBase + warp + RW * r) * dv + col] = s[r];
    }
}
