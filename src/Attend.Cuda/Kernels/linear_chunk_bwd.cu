// Attend: the chunked backward of linear attention with the additive update and no decay or a fixed decay per head
// (GATE 0 | 1 with headLogDecay), on tensor cores (mma.sync m16n8k16, bf16/fp16 in, float32 accumulation).
//
// Forward (linear_chunk.cu): S_t = γ S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t. Per 64-token chunk with b_t = t·log γ
// (t = 1..len, the in-chunk cumulative log decay), D_ts = e^{b_t − b_s} for s ≤ t (else 0), H0 the state at the chunk's
// start and dH the gradient of the state at the chunk's end:
//
//   dA  = dO Vᵀ ⊙ D                         A = scale · Q Kᵀ ⊙ D
//   dQ  = scale · (dA K + diag(e^b) dO H0ᵀ)
//   dK  = scale · dAᵀ Q + diag(e^{b_C − b}) V dHᵀ
//   dV  = Aᵀ dO + diag(e^{b_C − b}) K dH
//   dH(previous chunk) = e^{b_C} dH + scale · (diag(e^b) Q)ᵀ dO,  dS0 = dH before the first chunk
//
// Three launches: the forward kernel (linear_chunk.cu, pass 2) writes H0 of every chunk (element type, like the
// state the forward's Q̂S reads); attend_linear_dstate walks each segment's chunks last to first with its [DK, 64]
// slice of dH in float32 registers and writes dH of every chunk (element type) and dS0 (float32), on the forward's
// segments mirrored (pass 0: local contributions of all but a sequence's first segment; pass 1: the rest); then
// attend_linear_chunk_bwd, one CTA per (chunk, query head), computes dQ, dK, dV of the chunk from its tiles, H0 and dH.
// The gradients are float32: dQ [tokens, H, DK] stored, dK [tokens, Hkv, DK] and dV [tokens, Hkv, dv] stored when
// H = Hkv, else added atomically over the query heads of a group (the caller zeroes them first).
//
// attend_linear_chunk_bwd, per warp (4 warps, 16 rows of the chunk each): phase Q takes its rows as queries (dA, then
// dQ); phase K takes its rows as keys and computes the transposed products directly (dAᵀ = V dOᵀ, Aᵀ = K Qᵀ, both
// masked for t ≥ s), so no tile goes through shared memory transposed. The state region holds H0 in phase Q and dH in
// phase K (so two CTAs fit an SM at DK = DV = 128). dv is 64 or 128 (one or two 64-column value blocks).
//
// Defines: DK (64 | 128), ELEM_BF16 (1 bf16, 0 fp16), GATE (0 | 1). No headers: NVRTC needs none.

#ifndef DK
#error "DK must be defined"
#endif
#if GATE == 2
#error "the chunked backward covers no decay and a fixed decay per head"
#endif

#define NWARPS 4
#define NT (NWARPS * 32)
#define CHUNK 64
#define BV 64
#define MAXVB 2
#define HEAD_DIM DK
#define DC (DK / 8)
#define KS (DK / 16)
#define MS (DK / 64)

typedef unsigned short elem_t;

#include "mma_tiles.cuh"

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][64] tile (value blocks, state slices).
__device__ __forceinline__ unsigned voff(int row, int chunk)
{
    return (unsigned)((row * BV + ((chunk ^ (row & 7)) << 3)) * 2);
}

__device__ __forceinline__ float elem_lo(unsigned x)
{
#if ELEM_BF16
    return __uint_as_float(x << 16);
#else
    float f;
    asm("{.reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l;}" : "=f"(f) : "r"(x));
    return f;
#endif
}

__device__ __forceinline__ float elem_hi(unsigned x)
{
#if ELEM_BF16
    return __uint_as_float(x & 0xffff0000u);
#else
    float f;
    asm("{.reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h;}" : "=f"(f) : "r"(x));
    return f;
#endif
}

__device__ __forceinline__ float exp_e(float x) { return fast_exp2(x * 1.4426950408889634f); }

// b of chunk row x: lg · (x + 1), clamped at the chunk's length (rows past it hold zeros; the clamp keeps their exps finite).
__device__ __forceinline__ float bat(float lg, int x, int len) { return lg * (float)(x + 1 < len ? x + 1 : len); }

// Scales an element pair by f.
__device__ __forceinline__ unsigned scale2(unsigned x, float f) { return pack2(elem_lo(x) * f, elem_hi(x) * f); }

// Copies CHUNK rows of a [rows][BV] slice (global row stride `stride` elements) into a swizzled tile; rows past `valid` are zero-filled.
__device__ __forceinline__ void load_vtile(unsigned tile, const elem_t* g, long long stride, int valid, int tid)
{
#pragma unroll
    for (int i = 0; i < CHUNK * (BV / 8) / NT; i++)
    {
        const int idx = tid + i * NT;
        const int r = idx / (BV / 8), c = idx % (BV / 8);
        const bool ok = r < valid;
        const elem_t* src = ok ? g + (long long)r * stride + c * 8 : g;
        cp_async16(tile + voff(r, c), src, ok ? 16 : 0);
    }
}

// Copies a [DK][BV] state slice (global row stride `stride` elements) into a swizzled tile.
__device__ __forceinline__ void load_stile(unsigned tile, const elem_t* g, long long stride, int tid)
{
#pragma unroll
    for (int i = 0; i < DK * (BV / 8) / NT; i++)
    {
        const int idx = tid + i * NT;
        const int r = idx / (BV / 8), c = idx % (BV / 8);
        cp_async16(tile + voff(r, c), g + (long long)r * stride + c * 8, 16);
    }
}

// One chunk: its sequence, first token and length (1..64).
struct LinChunk { int seq, tokStart, len, pad; };

// ---------------------------------------------------------------------------------------------------------------
// dH of every chunk, walking each segment's chunks last to first. CTA = (64 value columns, query head, segment), on
// the forward's segment table (LinSeg; chunk0 = the segment's first global chunk). Pass 0: every segment but a sequence's
// first computes its local contribution to the gradient at its start from zero (partLocal, slot firstPart + index − 1);
// pass 1: each segment starts from the sequence's dS_T folded with the local contributions of the segments after it
// (each decayed by its total e^{len · log γ}), writes dH of its chunks and, the first segment, dS0.
// ---------------------------------------------------------------------------------------------------------------
#define DS_Q_BYTES (CHUNK * DK * 2)
#define DS_V_BYTES (CHUNK * BV * 2)
#define DS_OFF_Q 0
#define DS_OFF_DO (2 * DS_Q_BYTES)
#define DS_SMEM_BYTES (DS_OFF_DO + 2 * DS_V_BYTES)

struct LinSeg { int seq, tokStart, len, part, firstPart, index, isLast, chunk0; };

extern "C" __global__ void __launch_bounds__(NT)
attend_linear_dstate(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ dO,
    const float* __restrict__ headLogDecay,   // [H] log γ (GATE 1)
    const float* __restrict__ dST,            // [N, H, DK, dv] or null (zero)
    float* __restrict__ dS0,                  // [N, H, DK, dv] or null (not wanted)
    elem_t* __restrict__ dHs,                 // [chunks, H, DK, dv]: the gradient of the state at each chunk's end
    float* __restrict__ partLocal,            // [parts, H, DK, dv]: local contributions of segments after a sequence's first
    const LinSeg* __restrict__ segs,
    int heads, int dv, float scale, int pass)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, vb = blockIdx.x, z = blockIdx.z;
    const LinSeg sq = segs[z];
    if (pass == 0 && sq.index == 0) return;   // the whole CTA: no barrier is reached
    const long long qStride = (long long)heads * DK, oStride = (long long)heads * dv;
    const elem_t* qBase = Q + (long long)sq.tokStart * qStride + (long long)h * DK;
    const elem_t* oBase = dO + (long long)sq.tokStart * oStride + (long long)h * dv + vb * BV;
    const unsigned base = smem_addr(smem);
    const int stateRow0 = warp * 16 * MS;
#if GATE == 1
    const float lg = headLogDecay[h];
#else
    const float lg = 0.f;
    (void)headLogDecay;
#endif
    const long long stateHead = ((long long)sq.seq * heads + h) * DK;

    // dS slice as accumulators: element (m, j, e) is row stateRow0 + 16m + g + 8(e>>1), column 8j + 2t + (e&1) of this value block.
    float st[MS][8][4];
    int zLast = z;
    if (pass == 1) while (!segs[zLast].isLast) zLast++;
#pragma unroll
    for (int m = 0; m < MS; m++)
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                const int col = vb * BV + 8 * j + 2 * t;
                float2 s = make_float2(0.f, 0.f);
                if (pass == 1)
                {
                    if (dST != 0) s = *(const float2*)(dST + (stateHead + row) * dv + col);
                    for (int y = zLast; y > z; y--)
                    {
                        const LinSeg o = segs[y];
                        const float f = exp_e(lg * (float)o.len);
                        const float2 l = *(const float2*)(partLocal + (((long long)(o.firstPart + o.index - 1) * heads + h) * DK + row) * dv + col);
                        s.x = fmaf(f, s.x, l.x);
                        s.y = fmaf(f, s.y, l.y);
                    }
                }
                st[m][j][2 * half] = s.x;
                st[m][j][2 * half + 1] = s.y;
            }
        }

    const int nChunks = (sq.len + CHUNK - 1) / CHUNK;
    if (nChunks > 0)
    {
        const int c0 = (nChunks - 1) * CHUNK;
        const int valid = sq.len - c0;
        load_tile<CHUNK>(base + DS_OFF_Q, qBase + (long long)c0 * qStride, qStride, valid, tid);
        load_vtile(base + DS_OFF_DO, oBase + (long long)c0 * oStride, oStride, valid, tid);
    }
    cp_async_commit();

    for (int i = 0; i < nChunks; i++)
    {
        const int c = nChunks - 1 - i;   // chunks last to first
        const int stage = i & 1;
        const int c0 = c * CHUNK;
        const int len = sq.len - c0 < CHUNK ? sq.len - c0 : CHUNK;

        // The gradient of the state at this chunk's end.
        if (pass == 1)
        {
            elem_t* dst = dHs + ((long long)(sq.chunk0 + c) * heads + h) * DK * dv + vb * BV;
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        *(unsigned*)(dst + (long long)row * dv + 8 * j + 2 * t) = pack2(st[m][j][2 * half], st[m][j][2 * half + 1]);
                }
        }

        cp_async_wait<0>();
        __syncthreads();
        if (c > 0)
        {
            const int n0 = c0 - CHUNK;   // the previous chunk is whole
            const int ns = stage ^ 1;
            load_tile<CHUNK>(base + DS_OFF_Q + ns * DS_Q_BYTES, qBase + (long long)n0 * qStride, qStride, CHUNK, tid);
            load_vtile(base + DS_OFF_DO + ns * DS_V_BYTES, oBase + (long long)n0 * oStride, oStride, CHUNK, tid);
        }
        cp_async_commit();

        const unsigned sQ = base + DS_OFF_Q + stage * DS_Q_BYTES;
        const unsigned sO = base + DS_OFF_DO + stage * DS_V_BYTES;

        // dH ← e^{b_C} dH + (Q ⊙ scale·e^{b})ᵀ dO.
#if GATE == 1
        {
            const float f = exp_e(lg * (float)len);
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) st[m][j][e] *= f;
        }
#endif
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            unsigned a[MS][4];
#pragma unroll
            for (int m = 0; m < MS; m++)
                ldsm_x4_t(sQ + tile_offset(kk * 16 + (lane & 7) + ((lane >> 4) << 3), (stateRow0 + 16 * m) / 8 + ((lane >> 3) & 1)),
                          a[m][0], a[m][1], a[m][2], a[m][3]);
            {
                // a0/a1 hold tokens 2t, 2t+1 of this 16-token step, a2/a3 tokens 2t+8, 2t+9 (rows past len are zero).
                const int tk = kk * 16 + 2 * t;
                const float f0 = scale * exp_e(lg * (float)(tk + 1)), f1 = scale * exp_e(lg * (float)(tk + 2));
                const float f8 = scale * exp_e(lg * (float)(tk + 9)), f9 = scale * exp_e(lg * (float)(tk + 10));
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    a[m][0] = pack2(elem_lo(a[m][0]) * f0, elem_hi(a[m][0]) * f1);
                    a[m][1] = pack2(elem_lo(a[m][1]) * f0, elem_hi(a[m][1]) * f1);
                    a[m][2] = pack2(elem_lo(a[m][2]) * f8, elem_hi(a[m][2]) * f9);
                    a[m][3] = pack2(elem_lo(a[m][3]) * f8, elem_hi(a[m][3]) * f9);
                }
            }
#pragma unroll
            for (int dp = 0; dp < 4; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sO + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    mma16816(st[m][2 * dp], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
                    mma16816(st[m][2 * dp + 1], a[m][0], a[m][1], a[m][2], a[m][3], b2, b3);
                }
            }
        }
    }
    cp_async_wait<0>();

    // Pass 0: this segment's local contribution. Pass 1: dS0 from the sequence's first segment.
    float* target = 0;
    long long targetRow0 = 0;
    if (pass == 0)
    {
        target = partLocal;
        targetRow0 = ((long long)(sq.firstPart + sq.index - 1) * heads + h) * DK;
    }
    else if (sq.index == 0 && dS0 != 0)
    {
        target = dS0;
        targetRow0 = stateHead;
    }
    if (target != 0)
    {
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                for (int j = 0; j < 8; j++)
                    *(float2*)(target + (targetRow0 + row) * dv + vb * BV + 8 * j + 2 * t) = make_float2(st[m][j][2 * half], st[m][j][2 * half + 1]);
            }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// dQ, dK, dV of one chunk. CTA = (chunk, query head).
// ---------------------------------------------------------------------------------------------------------------
#define Q_BYTES (CHUNK * DK * 2)
#define V_BYTES (CHUNK * BV * 2)
#define S_BYTES (DK * BV * 2)
#define OFF_Q 0
#define OFF_K (OFF_Q + Q_BYTES)
#define OFF_V (OFF_K + Q_BYTES)
#define OFF_DO (OFF_V + MAXVB * V_BYTES)
#define OFF_X (OFF_DO + MAXVB * V_BYTES)
#define SMEM_BYTES (OFF_X + MAXVB * S_BYTES)

// Writes (or adds, when `add`) a 16-row warp tile of float32 accumulators acc[NJ][4] to rows wr + g (+8) of a
// [tokens, heads, width] array; rows at or past `len` are skipped.
template <int NJ>
__device__ __forceinline__ void write_rows(float* out, float (*acc)[4], long long tok0, long long rowStride, int wr, int len, int g, int t, bool add, float f)
{
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int row = wr + g + 8 * half;
        if (row < len)
        {
            float* p = out + (tok0 + row) * rowStride + 2 * t;
#pragma unroll
            for (int j = 0; j < NJ; j++)
            {
                const float x = acc[j][2 * half] * f, y = acc[j][2 * half + 1] * f;
                if (add)
                {
                    atomicAdd(p + 8 * j, x);
                    atomicAdd(p + 8 * j + 1, y);
                }
                else *(float2*)(p + 8 * j) = make_float2(x, y);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(NT)
attend_linear_chunk_bwd(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ headLogDecay,   // [H] log γ (GATE 1)
    const elem_t* __restrict__ H0s,           // [chunks, H, DK, dv]: the state at each chunk's start
    const elem_t* __restrict__ dHs,           // [chunks, H, DK, dv]: the gradient of the state at each chunk's end
    float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,
    const LinChunk* __restrict__ chunks,
    int heads, int kvHeads, int dv, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, ci = blockIdx.x;
    const LinChunk ch = chunks[ci];
    const int len = ch.len;
    const int group = heads / kvHeads, hk = h / group;
    const bool add = group > 1;
    const int nvb = dv / BV;
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK;
    const long long vStride = (long long)kvHeads * dv, oStride = (long long)heads * dv;
    const long long tok0 = ch.tokStart;
    const elem_t* qBase = Q + tok0 * qStride + (long long)h * DK;
    const elem_t* kBase = K + tok0 * kStride + (long long)hk * DK;
    const elem_t* vBase = V + tok0 * vStride + (long long)hk * dv;
    const elem_t* oBase = dO + tok0 * oStride + (long long)h * dv;
    const long long stateAt = ((long long)ci * heads + h) * DK * dv;
    const unsigned base = smem_addr(smem);
    const unsigned sQ = base + OFF_Q, sK = base + OFF_K;
    const int wr = 16 * w;
#if GATE == 1
    const float lg = headLogDecay[h];
#else
    const float lg = 0.f;
    (void)headLogDecay;
#endif
    // b of this thread's two rows (t ≤ len: lg · (t + 1); rows past len hold zeros, their b is clamped) and of the chunk.
    const float bR0 = bat(lg, wr + g, len), bR1 = bat(lg, wr + g + 8, len);
    const float bC = lg * (float)len;

    load_tile<CHUNK>(sQ, qBase, qStride, len, tid);
    load_tile<CHUNK>(sK, kBase, kStride, len, tid);
    for (int vb = 0; vb < nvb; vb++)
    {
        load_vtile(base + OFF_V + vb * V_BYTES, vBase + vb * BV, vStride, len, tid);
        load_vtile(base + OFF_DO + vb * V_BYTES, oBase + vb * BV, oStride, len, tid);
        load_stile(base + OFF_X + vb * S_BYTES, H0s + stateAt + vb * BV, dv, tid);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // ---- Phase Q: this warp's rows as queries. ----
    {
        // dA = dO Vᵀ ⊙ D for the keys up to this warp's own 16-key block.
        float da[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) da[j][0] = da[j][1] = da[j][2] = da[j][3] = 0.f;
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sV = base + OFF_V + vb * V_BYTES, sO = base + OFF_DO + vb * V_BYTES;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sO + voff(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
                for (int np = 0; np < 4; np++)
                {
                    if (np > w) break;
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(sV + voff(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                    mma16816(da[2 * np], a0, a1, a2, a3, b0, b1);
                    mma16816(da[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            if (j > 2 * w + 1) break;
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int row = wr + g + 8 * (e >> 1), col = 8 * j + 2 * t + (e & 1);
                if (col > row) da[j][e] = 0.f;
#if GATE == 1
                else da[j][e] *= exp_e(((e >> 1) ? bR1 : bR0) - bat(lg, col, len));
#endif
            }
        }

        // dQ = dA K + diag(e^b) dO H0ᵀ (times scale when written).
        float dq[DK / 8][4];
#pragma unroll
        for (int j = 0; j < DK / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk > w) break;
            const unsigned p0 = pack2(da[2 * kk][0], da[2 * kk][1]);
            const unsigned p1 = pack2(da[2 * kk][2], da[2 * kk][3]);
            const unsigned p2 = pack2(da[2 * kk + 1][0], da[2 * kk + 1][1]);
            const unsigned p3 = pack2(da[2 * kk + 1][2], da[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < DK / 16; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sK + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(dq[2 * dp], p0, p1, p2, p3, b0, b1);
                mma16816(dq[2 * dp + 1], p0, p1, p2, p3, b2, b3);
            }
        }
        const float e0 = exp_e(bR0), e1 = exp_e(bR1);
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sO = base + OFF_DO + vb * V_BYTES, sX = base + OFF_X + vb * S_BYTES;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sO + voff(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#if GATE == 1
                a0 = scale2(a0, e0); a1 = scale2(a1, e1); a2 = scale2(a2, e0); a3 = scale2(a3, e1);
#endif
#pragma unroll
                for (int np = 0; np < DK / 16; np++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(sX + voff(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                    mma16816(dq[2 * np], a0, a1, a2, a3, b0, b1);
                    mma16816(dq[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
        (void)e0; (void)e1;
        write_rows<DK / 8>(dQ + (long long)h * DK, dq, tok0, qStride, wr, len, g, t, false, scale);
    }

    // The state region now takes dH (every warp is done with H0).
    __syncthreads();
    for (int vb = 0; vb < nvb; vb++) load_stile(base + OFF_X + vb * S_BYTES, dHs + stateAt + vb * BV, dv, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // ---- Phase K: this warp's rows as keys. ----
    const float d0 = exp_e(bC - bR0), d1 = exp_e(bC - bR1);   // e^{b_C − b_s} of this thread's rows
    {
        // dAᵀ = V dOᵀ ⊙ Dᵀ for the queries from this warp's own 16-token block on (t ≥ s).
        float dat[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) dat[j][0] = dat[j][1] = dat[j][2] = dat[j][3] = 0.f;
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sV = base + OFF_V + vb * V_BYTES, sO = base + OFF_DO + vb * V_BYTES;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sV + voff(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
                for (int np = 0; np < 4; np++)
                {
                    if (np < w) continue;
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(sO + voff(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                    mma16816(dat[2 * np], a0, a1, a2, a3, b0, b1);
                    mma16816(dat[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            if (j < 2 * w) continue;
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int row = wr + g + 8 * (e >> 1), col = 8 * j + 2 * t + (e & 1);
                if (col < row) dat[j][e] = 0.f;
#if GATE == 1
                else dat[j][e] *= exp_e(bat(lg, col, len) - ((e >> 1) ? bR1 : bR0));
#endif
            }
        }

        // dK = scale · dAᵀ Q + diag(e^{b_C − b}) V dHᵀ.
        float dk[DK / 8][4];
#pragma unroll
        for (int j = 0; j < DK / 8; j++) dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk < w) continue;
            const unsigned p0 = pack2(dat[2 * kk][0] * scale, dat[2 * kk][1] * scale);
            const unsigned p1 = pack2(dat[2 * kk][2] * scale, dat[2 * kk][3] * scale);
            const unsigned p2 = pack2(dat[2 * kk + 1][0] * scale, dat[2 * kk + 1][1] * scale);
            const unsigned p3 = pack2(dat[2 * kk + 1][2] * scale, dat[2 * kk + 1][3] * scale);
#pragma unroll
            for (int dp = 0; dp < DK / 16; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sQ + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(dk[2 * dp], p0, p1, p2, p3, b0, b1);
                mma16816(dk[2 * dp + 1], p0, p1, p2, p3, b2, b3);
            }
        }
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sV = base + OFF_V + vb * V_BYTES, sX = base + OFF_X + vb * S_BYTES;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sV + voff(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#if GATE == 1
                a0 = scale2(a0, d0); a1 = scale2(a1, d1); a2 = scale2(a2, d0); a3 = scale2(a3, d1);
#endif
#pragma unroll
                for (int np = 0; np < DK / 16; np++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(sX + voff(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                    mma16816(dk[2 * np], a0, a1, a2, a3, b0, b1);
                    mma16816(dk[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
        write_rows<DK / 8>(dK + (long long)hk * DK, dk, tok0, kStride, wr, len, g, t, add, 1.f);
    }
    {
        // Aᵀ = scale · K Qᵀ ⊙ Dᵀ (t ≥ s).
        float at[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) at[j][0] = at[j][1] = at[j][2] = at[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sK + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < 4; np++)
            {
                if (np < w) continue;
                unsigned b0, b1, b2, b3;
                ldsm_x4(sQ + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816(at[2 * np], a0, a1, a2, a3, b0, b1);
                mma16816(at[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            if (j < 2 * w) continue;
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int row = wr + g + 8 * (e >> 1), col = 8 * j + 2 * t + (e & 1);
                if (col < row) at[j][e] = 0.f;
#if GATE == 1
                else at[j][e] *= scale * exp_e(bat(lg, col, len) - ((e >> 1) ? bR1 : bR0));
#else
                else at[j][e] *= scale;
#endif
            }
        }

        // dV = Aᵀ dO + diag(e^{b_C − b}) K dH, one 64-column value block at a time.
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sO = base + OFF_DO + vb * V_BYTES, sX = base + OFF_X + vb * S_BYTES;
            float dvv[8][4];
#pragma unroll
            for (int j = 0; j < 8; j++) dvv[j][0] = dvv[j][1] = dvv[j][2] = dvv[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                if (kk < w) continue;
                const unsigned p0 = pack2(at[2 * kk][0], at[2 * kk][1]);
                const unsigned p1 = pack2(at[2 * kk][2], at[2 * kk][3]);
                const unsigned p2 = pack2(at[2 * kk + 1][0], at[2 * kk + 1][1]);
                const unsigned p3 = pack2(at[2 * kk + 1][2], at[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < 4; dp++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(sO + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                    mma16816(dvv[2 * dp], p0, p1, p2, p3, b0, b1);
                    mma16816(dvv[2 * dp + 1], p0, p1, p2, p3, b2, b3);
                }
            }
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sK + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#if GATE == 1
                a0 = scale2(a0, d0); a1 = scale2(a1, d1); a2 = scale2(a2, d0); a3 = scale2(a3, d1);
#endif
#pragma unroll
                for (int dp = 0; dp < 4; dp++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(sX + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                    mma16816(dvv[2 * dp], a0, a1, a2, a3, b0, b1);
                    mma16816(dvv[2 * dp + 1], a0, a1, a2, a3, b2, b3);
                }
            }
            write_rows<8>(dV + (long long)hk * dv + vb * BV, dvv, tok0, vStride, wr, len, g, t, add, 1.f);
        }
    }
    (void)d0; (void)d1;
}
