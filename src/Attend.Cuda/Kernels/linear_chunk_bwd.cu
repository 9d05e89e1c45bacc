// Attend: the chunked backward of linear attention with the additive update, on tensor cores (mma.sync m16n8k16,
// bf16/fp16 in, float32 accumulation). Decay (GATE): 0 none; 1 a scalar per token and head (a fixed γ per head through
// headLogDecay, or a [tokens, H] log gate: simple GLA); 2 a gate per token, head and key channel ([tokens, H, DK]: GLA).
//
// Forward (linear_chunk.cu): S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t. Per 64-token chunk with b_t the
// in-chunk cumulative log decay (inclusive; per key channel for GATE 2), H0 the state at the chunk's start and dH the
// gradient of the state at the chunk's end. Scalar decay (D_ts = e^{b_t − b_s} for s ≤ t, else 0):
//
//   dA  = dO Vᵀ ⊙ D                         A = scale · Q Kᵀ ⊙ D
//   dQ  = scale · (dA K + diag(e^b) dO H0ᵀ)
//   dK  = scale · dAᵀ Q + diag(e^{b_C − b}) V dHᵀ
//   dV  = Aᵀ dO + diag(e^{b_C − b}) K dH
//   dH(previous chunk) = e^{b_C} dH + scale · (diag(e^b) Q)ᵀ dO,  dS0 = dH before the first chunk
//
// Channel gate (GATE 2): the decay sits inside the products (A_ts = scale Σ_i q_ti k_si e^{b_ti − b_si}), so dA = dO Vᵀ
// masked, and each warp's 16-row block takes its last row r as the reference: e^{b_t − b_s} = e^{b_t − b_r} e^{b_r − b_s},
// one factor on an operand and one on the float32 result, each ≤ 1 except on the diagonal block, where the factor
// ≥ 1 is clamped at e^80 (exact unless a channel's gates sum below −80 within 16 tokens; the forward's bound). GATE 2 runs
// on bf16 only (its scaled operands need bf16's exponent range).
//
// Gate gradient (gate given and dG wanted): with b the in-chunk cumulative gate, dL/db_t = q_t ⊙ dq_t − k_t ⊙ dk_t,
// plus ⟨S_C, dH⟩ (row-wise, S_C the state at the chunk's end) at the chunk's last token; d log α_r is the reverse
// cumulative sum of dL/db inside the chunk (every gate of the chunk reaches b_C). GATE 1 sums the channels.
//
// Three launches: the forward kernel (linear_chunk.cu, pass 2) writes H0 of every chunk (element type, like the
// state the forward's Q̂S reads) and, for the gate gradient, the final states (float32); attend_linear_dstate walks each
// segment's chunks last to first with its [DK, 64] slice of dH in float32 registers and writes dH of every chunk
// (element type) and dS0 (float32), on the forward's segments mirrored (pass 0: local contributions and total log decays
// of all but a sequence's first segment; pass 1: the rest); then attend_linear_chunk_bwd, one CTA per (chunk, query
// head), computes dQ, dK, dV (and dG) of the chunk from its tiles, H0 and dH (GATE 2 builds have
// attend_linear_chunk_bwd_cg at the end of this file instead: 8 warps in two groups).
// The gradients are float32: dQ [tokens, H, DK] stored, dK [tokens, Hkv, DK] and dV [tokens, Hkv, dv] stored when
// H = Hkv, else added atomically over the query heads of a group (the caller zeroes them first); dG like the gate.
//
// attend_linear_chunk_bwd, per warp (4 warps, 16 rows of the chunk each): phase Q takes its rows as queries (dA, then
// dQ); phase K takes its rows as keys and computes the transposed products directly (dAᵀ = V dOᵀ, Aᵀ = K Qᵀ, both
// masked for t ≥ s), so no tile goes through shared memory transposed. The state region holds H0 in phase Q and dH in
// phase K (so two CTAs fit an SM at DK = DV = 128 without a channel gate). dv is 64 or 128 (one or two 64-column blocks).
//
// Defines: DK (64 | 128), ELEM_BF16 (1 bf16, 0 fp16), GATE (0 | 1 | 2). Headers: mma_tiles.cuh, linear_elem.cuh, linear_tiles.cuh
// (expanded into the source by KernelCompiler.Source; NVRTC itself is given no include path).

#ifndef DK
#error "DK must be defined"
#endif
#if GATE == 2 && !ELEM_BF16
#error "the channel-gate backward runs on bf16 only"
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
#include "linear_elem.cuh"
#include "linear_tiles.cuh"

// Scales an element pair by f.
__device__ __forceinline__ unsigned scale2(unsigned x, float f) { return pack2(elem_lo(x) * f, elem_hi(x) * f); }

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
// dH of every chunk, walking each segment's chunks last to first. CTA = (64 value columns (GATE 2: 128, two groups of
// 4 warps sharing the Q and gate tiles), query head, segment), on
// the forward's segment table (LinSeg; chunk0 = the segment's first global chunk). Pass 0: every segment but a sequence's
// first computes its local contribution to the gradient at its start from zero (partLocal, slot firstPart + index − 1)
// and its total log decay (partDecay, same slot; GATE 1 [parts, H], GATE 2 [parts, H, DK]); pass 1: each segment starts
// from the sequence's dS_T folded with the local contributions of the segments after it (each decayed by its total),
// writes dH of its chunks and, the first segment, dS0.
// ---------------------------------------------------------------------------------------------------------------
// GATE 2: a CTA takes two value blocks (8 warps, warps 4–7 the second block), so the Q tile and the [64][DK] gate tile,
// which do not depend on the value block, are read and scanned once for both (the sweep moves about half the bytes).
#if GATE == 2
#define DS_NVB 2
#else
#define DS_NVB 1
#endif
#define DS_NT (DS_NVB * NT)
#define DS_Q_BYTES (CHUNK * DK * 2)
#define DS_V_BYTES (CHUNK * BV * 2)
#define DS_OFF_Q 0
#define DS_OFF_DO (2 * DS_Q_BYTES)
#define DS_OFF_G (DS_OFF_DO + 2 * DS_NVB * DS_V_BYTES)
#if GATE == 2
#define DS_G_BYTES (CHUNK * DK * 4)
#elif GATE == 1
#define DS_G_BYTES (CHUNK * 4)
#else
#define DS_G_BYTES 0
#endif
#define DS_SMEM_BYTES (DS_OFF_G + 2 * DS_G_BYTES)

struct LinSeg { int seq, tokStart, len, part, firstPart, index, isLast, chunk0; };

#if GATE == 1
// b of the chunk's 64 rows for lane `lane` (rows 2·lane, 2·lane + 1): from a fixed log γ (lg · (x + 1), clamped at the
// chunk's length) or, when `raw` is not null, the inclusive warp scan of the raw gates (zero past the chunk's end).
__device__ __forceinline__ void chunk_b(const float* raw, float lg, int len, int lane, float& b0, float& b1)
{
    const int i0 = 2 * lane, i1 = 2 * lane + 1;
    if (raw == 0)
    {
        b0 = lg * (float)(i0 < len ? i0 + 1 : len);
        b1 = lg * (float)(i1 < len ? i1 + 1 : len);
        return;
    }
    const float2 a = *(const float2*)(raw + i0);
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
#endif

extern "C" __global__ void __launch_bounds__(DS_NT)
attend_linear_dstate(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ dO,
    const float* __restrict__ gate,           // GATE 1: [tokens, H] log α (when headLogDecay is null); GATE 2: [tokens, H, DK]
    const float* __restrict__ headLogDecay,   // GATE 1: [H] log γ, or null to read `gate`
    const float* __restrict__ dST,            // [N, H, DK, dv] or null (zero)
    float* __restrict__ dS0,                  // [N, H, DK, dv] or null (not wanted)
    elem_t* __restrict__ dHs,                 // [chunks, H, DK, dv]: the gradient of the state at each chunk's end
    float* __restrict__ partLocal,            // [parts, H, DK, dv]: local contributions of segments after a sequence's first
    float* __restrict__ partDecay,            // GATE 1 [parts, H], GATE 2 [parts, H, DK]: those segments' total log decays
    const LinSeg* __restrict__ segs,
    int heads, int dv, float scale, int pass)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = (tid >> 5) & (NWARPS - 1), ltid = tid & (NT - 1);
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, vb = blockIdx.x * DS_NVB + tid / NT, z = blockIdx.z;
    const int vbl = vb % DS_NVB;   // this thread's value block within the CTA
    const LinSeg sq = segs[z];
    if (pass == 0 && sq.index == 0) return;   // the whole CTA: no barrier is reached
    const long long qStride = (long long)heads * DK, oStride = (long long)heads * dv;
    const elem_t* qBase = Q + (long long)sq.tokStart * qStride + (long long)h * DK;
    const elem_t* oBase = dO + (long long)sq.tokStart * oStride + (long long)h * dv + vb * BV;
    const unsigned base = smem_addr(smem);
    const int stateRow0 = warp * 16 * MS;
#if GATE == 1
    const bool gated = headLogDecay == 0;
    const float lg = gated ? 0.f : headLogDecay[h];
    float decayAcc = 0.f;                     // the segment's total log decay
#elif GATE == 2
    const float* gBase = gate + ((long long)sq.tokStart * heads + h) * DK;
    float decayAcc = 0.f;                     // thread c < DK: the segment's total log decay of channel c
    (void)headLogDecay;
#else
    (void)headLogDecay;
    (void)gate;
    (void)partDecay;
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
                        const long long slot = (long long)(o.firstPart + o.index - 1) * heads + h;
#if GATE == 1
                        const float f = exp_e(gated ? partDecay[slot] : lg * (float)o.len);
#elif GATE == 2
                        const float f = exp_e(partDecay[slot * DK + row]);
#else
                        const float f = 1.f;
#endif
                        const float2 l = *(const float2*)(partLocal + (slot * DK + row) * dv + col);
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
        if (tid < NT) load_tile<CHUNK>(base + DS_OFF_Q, qBase + (long long)c0 * qStride, qStride, valid, tid);
        load_vtile(base + DS_OFF_DO + vbl * DS_V_BYTES, oBase + (long long)c0 * oStride, oStride, valid, ltid);
#if GATE == 1
        if (gated && tid < CHUNK)
            cp_async4(base + DS_OFF_G + tid * 4, tid < valid ? gate + (long long)(sq.tokStart + c0 + tid) * heads + h : gate, tid < valid ? 4 : 0);
#elif GATE == 2
        if (tid < NT) load_gtile(base + DS_OFF_G, gBase + (long long)c0 * heads * DK, (long long)heads * DK, valid, DK, tid);
#endif
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
            if (tid < NT) load_tile<CHUNK>(base + DS_OFF_Q + ns * DS_Q_BYTES, qBase + (long long)n0 * qStride, qStride, CHUNK, tid);
            load_vtile(base + DS_OFF_DO + (ns * DS_NVB + vbl) * DS_V_BYTES, oBase + (long long)n0 * oStride, oStride, CHUNK, ltid);
#if GATE == 1
            if (gated && tid < CHUNK) cp_async4(base + DS_OFF_G + (ns * CHUNK + tid) * 4, gate + (long long)(sq.tokStart + n0 + tid) * heads + h, 4);
#elif GATE == 2
            if (tid < NT) load_gtile(base + DS_OFF_G + ns * DS_G_BYTES, gBase + (long long)n0 * heads * DK, (long long)heads * DK, CHUNK, DK, tid);
#endif
        }
        cp_async_commit();

        const unsigned sQ = base + DS_OFF_Q + stage * DS_Q_BYTES;
        const unsigned sO = base + DS_OFF_DO + (stage * DS_NVB + vbl) * DS_V_BYTES;

        // dH ← e^{b_C} dH + (Q ⊙ scale·e^{b})ᵀ dO.
#if GATE == 1
        float b0, b1;
        chunk_b(gated ? (const float*)(smem + DS_OFF_G + stage * DS_G_BYTES) : (const float*)0, lg, len, lane, b0, b1);
        const float bLast = __shfl_sync(0xffffffffu, b1, 31);
        decayAcc += bLast;
        {
            const float f = exp_e(bLast);
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) st[m][j][e] *= f;
        }
#elif GATE == 2
        // In place: the raw gate tile of this stage becomes the cumulative log decay (the previous chunk's gates go to the other stage).
        float* const sB = (float*)(smem + DS_OFF_G + stage * DS_G_BYTES);
        if (tid < DK)
        {
            // 16 rows at a time: their loads are independent, so the scan waits for one shared-memory latency per 16
            // rows instead of one per row.
            float run = 0.f;
#pragma unroll
            for (int x0 = 0; x0 < CHUNK; x0 += 16)
            {
                float y[16];
#pragma unroll
                for (int i = 0; i < 16; i++) y[i] = sB[(x0 + i) * DK + tid];
#pragma unroll
                for (int i = 0; i < 16; i++)
                {
                    run += y[i];
                    sB[(x0 + i) * DK + tid] = run;
                }
            }
            decayAcc += run;
        }
        __syncthreads();
#pragma unroll
        for (int m = 0; m < MS; m++)
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const float f = exp_e(sB[(CHUNK - 1) * DK + stateRow0 + 16 * m + g + 8 * half]);
#pragma unroll
                for (int j = 0; j < 8; j++)
                {
                    st[m][j][2 * half] *= f;
                    st[m][j][2 * half + 1] *= f;
                }
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
                // a0/a1 hold tokens 2t, 2t+1 of this 16-token step, a2/a3 tokens 2t+8, 2t+9 (rows past len are zero);
                // a0/a2 key channel stateRow0 + 16m + g, a1/a3 that + 8.
                const int tk = kk * 16 + 2 * t;
#if GATE == 1
                const float f0 = scale * exp_e(bget(b0, b1, tk)), f1 = scale * exp_e(bget(b0, b1, tk + 1));
                const float f8 = scale * exp_e(bget(b0, b1, tk + 8)), f9 = scale * exp_e(bget(b0, b1, tk + 9));
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    a[m][0] = pack2(elem_lo(a[m][0]) * f0, elem_hi(a[m][0]) * f1);
                    a[m][1] = pack2(elem_lo(a[m][1]) * f0, elem_hi(a[m][1]) * f1);
                    a[m][2] = pack2(elem_lo(a[m][2]) * f8, elem_hi(a[m][2]) * f9);
                    a[m][3] = pack2(elem_lo(a[m][3]) * f8, elem_hi(a[m][3]) * f9);
                }
#elif GATE == 2
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    const int ch = stateRow0 + 16 * m + g;
                    a[m][0] = pack2(elem_lo(a[m][0]) * scale * exp_e(sB[tk * DK + ch]), elem_hi(a[m][0]) * scale * exp_e(sB[(tk + 1) * DK + ch]));
                    a[m][1] = pack2(elem_lo(a[m][1]) * scale * exp_e(sB[tk * DK + ch + 8]), elem_hi(a[m][1]) * scale * exp_e(sB[(tk + 1) * DK + ch + 8]));
                    a[m][2] = pack2(elem_lo(a[m][2]) * scale * exp_e(sB[(tk + 8) * DK + ch]), elem_hi(a[m][2]) * scale * exp_e(sB[(tk + 9) * DK + ch]));
                    a[m][3] = pack2(elem_lo(a[m][3]) * scale * exp_e(sB[(tk + 8) * DK + ch + 8]), elem_hi(a[m][3]) * scale * exp_e(sB[(tk + 9) * DK + ch + 8]));
                }
#else
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    a[m][0] = scale2(a[m][0], scale);
                    a[m][1] = scale2(a[m][1], scale);
                    a[m][2] = scale2(a[m][2], scale);
                    a[m][3] = scale2(a[m][3], scale);
                }
#endif
            }
#pragma unroll
            for (int dp = 0; dp < 4; dp++)
            {
                unsigned b0_, b1_, b2_, b3_;
                ldsm_x4_t(sO + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0_, b1_, b2_, b3_);
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    mma16816(st[m][2 * dp], a[m][0], a[m][1], a[m][2], a[m][3], b0_, b1_);
                    mma16816(st[m][2 * dp + 1], a[m][0], a[m][1], a[m][2], a[m][3], b2_, b3_);
                }
            }
        }
    }
    cp_async_wait<0>();

    // Pass 0: this segment's local contribution and total log decay. Pass 1: dS0 from the sequence's first segment.
    float* target = 0;
    long long targetRow0 = 0;
    if (pass == 0)
    {
        const long long slot = (long long)(sq.firstPart + sq.index - 1) * heads + h;
        target = partLocal;
        targetRow0 = slot * DK;
#if GATE == 1
        if (vb == 0 && tid == 0) partDecay[slot] = decayAcc;
#elif GATE == 2
        if (vb == 0 && tid < DK) partDecay[slot * DK + tid] = decayAcc;
#endif
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
// dQ, dK, dV (and dG) of one chunk. CTA = (chunk, query head).
// ---------------------------------------------------------------------------------------------------------------
#define Q_BYTES (CHUNK * DK * 2)
#define V_BYTES (CHUNK * BV * 2)
#define S_BYTES (DK * BV * 2)
#define OFF_Q 0
#define OFF_K (OFF_Q + Q_BYTES)
#define OFF_V (OFF_K + Q_BYTES)
#define OFF_DO (OFF_V + MAXVB * V_BYTES)
#define OFF_X (OFF_DO + MAXVB * V_BYTES)
#define OFF_B (OFF_X + MAXVB * S_BYTES)
#if GATE == 2
#define DKP (DK + 4)                                   // padded row of the cumulative gate tile (bank spread)
#define SMEM_BYTES (OFF_B + CHUNK * DKP * 4)
#elif GATE == 1
#define SMEM_BYTES (OFF_B + 2 * CHUNK * 4 + 16)        // b per row, d b per row, the state term
#else
#define SMEM_BYTES OFF_B
#endif

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

// x rounded to the element type, as the products' operands are.
__device__ __forceinline__ float rnd_elem(float x) { return elem_lo(pack2(x, 0.f)); }

// The value of a warp tile's diagonal element (row = column) for this thread's rows wr + g (d0) and wr + g + 8 (d1),
// given to every lane of the quad that holds those rows (one lane holds it; the others add zero).
__device__ __forceinline__ void quad_diagonal(float (*acc)[4], int wr, int g, int t, float& d0, float& d1)
{
    d0 = 0.f;
    d1 = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
        {
            const int row = wr + g + 8 * (e >> 1), col = 8 * j + 2 * t + (e & 1);
            if (col == row)
            {
                if (e >> 1) d1 = acc[j][e];
                else d0 = acc[j][e];
            }
        }
    d0 += __shfl_xor_sync(0xffffffffu, d0, 1);
    d0 += __shfl_xor_sync(0xffffffffu, d0, 2);
    d1 += __shfl_xor_sync(0xffffffffu, d1, 1);
    d1 += __shfl_xor_sync(0xffffffffu, d1, 2);
}

// The element pair (col, col + 1) of row `row` of a swizzled [rows][DK] tile, as one register.
__device__ __forceinline__ unsigned tile_pair(const unsigned char* tile, int row, int col)
{
    return *(const unsigned*)(tile + tile_offset(row, col >> 3) + (col & 7) * 2);
}

// ⟨S, dH⟩ of state row `row`: S from the element-type checkpoints (sE) or float32 (sF), dH element type; dv columns.
__device__ __forceinline__ float row_dot(const elem_t* sE, const float* sF, const elem_t* dH, int dv)
{
    float acc = 0.f;
    for (int j = 0; j < dv; j += 8)
    {
        const uint4 d = *(const uint4*)(dH + j);
        const unsigned dw[4] = {d.x, d.y, d.z, d.w};
        float s[8];
        if (sE != 0)
        {
            const uint4 e = *(const uint4*)(sE + j);
            const unsigned ew[4] = {e.x, e.y, e.z, e.w};
#pragma unroll
            for (int u = 0; u < 4; u++) { s[2 * u] = elem_lo(ew[u]); s[2 * u + 1] = elem_hi(ew[u]); }
        }
        else
        {
            const float4 a = *(const float4*)(sF + j), b = *(const float4*)(sF + j + 4);
            s[0] = a.x; s[1] = a.y; s[2] = a.z; s[3] = a.w; s[4] = b.x; s[5] = b.y; s[6] = b.z; s[7] = b.w;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) acc += s[2 * u] * elem_lo(dw[u]) + s[2 * u + 1] * elem_hi(dw[u]);
    }
    return acc;
}

// No gate or a scalar gate; the channel gate (GATE 2) has its own chunk kernel, attend_linear_chunk_bwd_cg, below.
#if GATE != 2
extern "C" __global__ void __launch_bounds__(NT)
attend_linear_chunk_bwd(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ gate,           // GATE 1: [tokens, H] log α (when headLogDecay is null); GATE 2: [tokens, H, DK]
    const float* __restrict__ headLogDecay,   // GATE 1: [H] log γ, or null to read `gate`
    const elem_t* __restrict__ H0s,           // [chunks, H, DK, dv]: the state at each chunk's start
    const elem_t* __restrict__ dHs,           // [chunks, H, DK, dv]: the gradient of the state at each chunk's end
    const float* __restrict__ finalStates,    // [N, H, DK, dv]: each sequence's final state (read for dG only)
    float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,
    float* __restrict__ dG,                   // like `gate`, or null (not wanted)
    const LinChunk* __restrict__ chunks,      // pad: 1 for a sequence's last chunk
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

    // The in-chunk cumulative log decay b: rows past len hold zero gates, so their b stays at b_{len−1} (finite exps).
#if GATE == 1
    float* const sb = (float*)(smem + OFF_B);
    float* const sdb = sb + CHUNK;
    float* const sStateTerm = sb + 2 * CHUNK;
    const bool gated = headLogDecay == 0;
    if (w == 0)
    {
        float b0, b1;
        const int i0 = 2 * lane, i1 = 2 * lane + 1;
        if (!gated)
        {
            const float lg = headLogDecay[h];
            b0 = lg * (float)(i0 < len ? i0 + 1 : len);
            b1 = lg * (float)(i1 < len ? i1 + 1 : len);
        }
        else
        {
            const float a0 = i0 < len ? gate[(tok0 + i0) * heads + h] : 0.f, a1 = i1 < len ? gate[(tok0 + i1) * heads + h] : 0.f;
            const float pair = a0 + a1;
            float scan = pair;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1)
            {
                const float y = __shfl_up_sync(0xffffffffu, scan, o);
                if (lane >= o) scan += y;
            }
            b0 = scan - pair + a0;
            b1 = scan;
        }
        sb[i0] = b0;
        sb[i1] = b1;
        if (lane == 0) *sStateTerm = 0.f;
    }
    __syncthreads();
    const float bR0 = sb[wr + g], bR1 = sb[wr + g + 8];   // b of this thread's two rows
    const float bC = sb[CHUNK - 1];                        // b of the chunk's last token
    float db0 = 0.f, db1 = 0.f;                            // this thread's part of d b of its two rows
#else
    (void)gate;
    (void)headLogDecay;
#endif

    // ---- Phase Q: this warp's rows as queries. ----
    {
        // dA = dO Vᵀ (⊙ D for a scalar decay) for the keys up to this warp's own 16-key block.
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
                else da[j][e] *= exp_e(((e >> 1) ? bR1 : bR0) - sb[col]);
#endif
            }
        }

        // dQ = scale · (dA K + diag(e^b) dO H0ᵀ); GATE 2: scale · e^{b_t − b_r} ⊙ (dA (K ⊙ e^{b_r − b_s}) + dO (H0 ⊙ e^{b_r})ᵀ).
        // With a gate the scale goes into the dA operand (rounded as phase K's scale·dAᵀ is, so each pair's two copies in
        // q ⊙ dq and k ⊙ dk cancel in the gate gradient) and into the state term; without one it multiplies the result.
#if GATE == 0
        const float daScale = 1.f, dqScale = scale;
#else
        const float daScale = scale, dqScale = 1.f;
#endif
        float dq[DK / 8][4];
#pragma unroll
        for (int j = 0; j < DK / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk > w) break;
            const unsigned p0 = pack2(da[2 * kk][0] * daScale, da[2 * kk][1] * daScale);
            const unsigned p1 = pack2(da[2 * kk][2] * daScale, da[2 * kk][3] * daScale);
            const unsigned p2 = pack2(da[2 * kk + 1][0] * daScale, da[2 * kk + 1][1] * daScale);
            const unsigned p3 = pack2(da[2 * kk + 1][2] * daScale, da[2 * kk + 1][3] * daScale);
#pragma unroll
            for (int dp = 0; dp < DK / 16; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sK + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(dq[2 * dp], p0, p1, p2, p3, b0, b1);
                mma16816(dq[2 * dp + 1], p0, p1, p2, p3, b2, b3);
            }
        }
#if GATE == 1
        const float e0 = scale * exp_e(bR0), e1 = scale * exp_e(bR1);
#endif
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
        write_rows<DK / 8>(dQ + (long long)h * DK, dq, tok0, qStride, wr, len, g, t, false, dqScale);

        // The gate gradient's query part, q ⊙ dq: GATE 1 summed per row in registers, GATE 2 kept in dG (this thread
        // reads it back in phase K; the rows' owners sum it up after the last barrier). The diagonal pair s = t adds
        // the same term to q ⊙ dq and k ⊙ dk (its decay is e^0, so it has no gate gradient): its copy in dq, recomputed
        // with the same roundings as the product made it, is left out here and its copy in dk in phase K, so the two
        // roundings do not swamp small gate gradients.
#if GATE != 0
        if (dG != 0)
        {
            float dd0, dd1;
            quad_diagonal(da, wr, g, t, dd0, dd1);
            dd0 = rnd_elem(dd0 * scale);
            dd1 = rnd_elem(dd1 * scale);
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = wr + g + 8 * half;
                const float dd = half ? dd1 : dd0;
#pragma unroll
                for (int j = 0; j < DK / 8; j++)
                {
                    const int col = 8 * j + 2 * t;
                    const unsigned qp = tile_pair(smem + OFF_Q, row, col), kp = tile_pair(smem + OFF_K, row, col);
                    const float k0 = elem_lo(kp), k1 = elem_hi(kp);
                    const float x = (dq[j][2 * half] - dd * k0) * elem_lo(qp), y = (dq[j][2 * half + 1] - dd * k1) * elem_hi(qp);
                    if (half == 0) db0 += x + y;
                    else db1 += x + y;
                }
            }
        }
#endif
    }

    // The state region now takes dH (every warp is done with H0).
    __syncthreads();
    for (int vb = 0; vb < nvb; vb++) load_stile(base + OFF_X + vb * S_BYTES, dHs + stateAt + vb * BV, dv, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // ---- Phase K: this warp's rows as keys. ----
#if GATE == 1
    const float d0 = exp_e(bC - bR0), d1 = exp_e(bC - bR1);   // e^{b_C − b_s} of this thread's rows
#endif
    {
        // dAᵀ = V dOᵀ (⊙ Dᵀ for a scalar decay) for the queries from this warp's own 16-token block on (t ≥ s).
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
                else dat[j][e] *= exp_e(sb[col] - ((e >> 1) ? bR1 : bR0));
#endif
            }
        }

        // dK = scale · dAᵀ Q + diag(e^{b_C − b}) V dHᵀ; GATE 2: e^{b_r − b_s} ⊙ (scale · dAᵀ (Q ⊙ e^{b_t − b_r}) + V (dH ⊙ e^{b_C − b_r})ᵀ).
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

        // The gate gradient's key part, − k ⊙ dk (this head's dk, before any sum over a group), its diagonal term left out.
#if GATE != 0
        if (dG != 0)
        {
            float dd0, dd1;
            quad_diagonal(dat, wr, g, t, dd0, dd1);
            dd0 = rnd_elem(dd0 * scale);
            dd1 = rnd_elem(dd1 * scale);
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = wr + g + 8 * half;
                const float dd = half ? dd1 : dd0;
#pragma unroll
                for (int j = 0; j < DK / 8; j++)
                {
                    const int col = 8 * j + 2 * t;
                    const unsigned kp = tile_pair(smem + OFF_K, row, col), qp = tile_pair(smem + OFF_Q, row, col);
                    const float q0 = elem_lo(qp), q1 = elem_hi(qp);
                    const float x = (dk[j][2 * half] - dd * q0) * elem_lo(kp), y = (dk[j][2 * half + 1] - dd * q1) * elem_hi(kp);
                    if (half == 0) db0 -= x + y;
                    else db1 -= x + y;
                }
            }
        }
#endif
    }
    {
        // Aᵀ = scale · K Qᵀ ⊙ Dᵀ (t ≥ s); GATE 2: scale · (K ⊙ e^{b_r − b_s}) (Q ⊙ e^{b_t − b_r})ᵀ.
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
                else at[j][e] *= scale * exp_e(sb[col] - ((e >> 1) ? bR1 : bR0));
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
#if GATE == 1
    (void)d0; (void)d1;
#endif

    // ---- The gate gradient: d log α_r = ⟨S_C, dH⟩ + Σ_{t ≥ r in the chunk} d b_t (S_C: the next chunk's checkpoint, or
    // the sequence's final state after its last chunk). ----
#if GATE == 1
    if (dG != 0)
    {
        db0 += __shfl_xor_sync(0xffffffffu, db0, 1);
        db0 += __shfl_xor_sync(0xffffffffu, db0, 2);
        db1 += __shfl_xor_sync(0xffffffffu, db1, 1);
        db1 += __shfl_xor_sync(0xffffffffu, db1, 2);
        if (t == 0)
        {
            sdb[wr + g] = db0;
            sdb[wr + g + 8] = db1;
        }
        float term = 0.f;
        if (tid < DK)
        {
            const elem_t* dh = dHs + stateAt + (long long)tid * dv;
            term = ch.pad ? row_dot(0, finalStates + (((long long)ch.seq * heads + h) * DK + tid) * dv, dh, dv)
                          : row_dot(H0s + stateAt + (long long)heads * DK * dv + (long long)tid * dv, 0, dh, dv);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) term += __shfl_xor_sync(0xffffffffu, term, o);
        if (lane == 0) atomicAdd(sStateTerm, term);
        __syncthreads();
        if (w == 0)
        {
            // Reverse cumulative sum: lane l holds rows 2l, 2l+1.
            const float x0 = sdb[2 * lane], x1 = sdb[2 * lane + 1];
            const float pair = x0 + x1;
            float scan = pair;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1)
            {
                const float y = __shfl_up_sync(0xffffffffu, scan, o);
                if (lane >= o) scan += y;
            }
            const float total = __shfl_sync(0xffffffffu, scan, 31);
            const float s0 = total - scan + pair + *sStateTerm, s1 = s0 - x0;
            if (2 * lane < len) dG[(tok0 + 2 * lane) * heads + h] = s0;
            if (2 * lane + 1 < len) dG[(tok0 + 2 * lane + 1) * heads + h] = s1;
        }
    }
#else
    (void)finalStates;
    (void)dG;
#endif
}
#endif   // GATE != 2

#if GATE == 2
// ---------------------------------------------------------------------------------------------------------------
// The channel-gate chunk backward with 8 warps (attend_linear_chunk_bwd_cg; the host launches it for GATE 2 in place of
// attend_linear_chunk_bwd). The same products as above, on two warp groups that run side by side on one CTA per SM
// (two warps per scheduler instead of one, so one group's exps and loads hide behind the other's products):
//   group 0 (warps 0–3): phase Q (dA, dq, q ⊙ dq) for its 16 rows as queries, then dv of the odd value blocks;
//   group 1 (warps 4–7): phase K (dAᵀ, dk, − k ⊙ dk) for the same 16 rows as keys, then dv of the even value blocks
//   (each group recomputes Aᵀ of its rows: 64 products, against 96 or 192 more on the busier group).
// H0 and dH both sit in shared memory from the start (the second cp.async group, behind the tiles and the gate the
// cumulative scan needs first). The gate gradient's two parts go to one shared tile in H0's region: group 0 writes
// q ⊙ dq once it has read H0 (a named barrier of its 4 warps) and arrives at a second named barrier, at which group 1
// waits before subtracting k ⊙ dk in place; after the last barrier thread c < DK runs the reverse cumulative sum down
// key channel c in shared memory (a global read-modify-write per row before: a dependent global latency per step),
// starting from ⟨S_C, dH⟩_c (dH from shared memory, S_C's row read with every load in flight). Computed once per chunk
// instead of per fragment: the per-warp factors of the state terms (scale · e^{b_r} on H0, e^{b_C − b_r} on dH), and
// Q̂_w = Q ⊙ e^{min(b_u − b_r, 80)} (rows u ≥ 16w, one tile per warp w: 160 rows), the query operand of dk's in-chunk
// product and of Aᵀ, and K̃_w = K ⊙ e^{b_r − b_s} (rows s ≤ 16w + 15: 160 rows), the key operand of dq's in-chunk product
// and of Aᵀ (K̃_3, whose reference is the chunk's last row, is also dv's K ⊙ e^{b_C − b_s}): each element once per warp
// that uses it, by 16-byte items over all 256 threads, where before every fragment the products loaded was scaled with an
// exp per element (up to ~1,400 exps per thread). Three K̃ tiles take the raw Q and K tiles' place; the gate gradient
// reads raw q and k from global memory.
// ---------------------------------------------------------------------------------------------------------------
#define CG_NT (2 * NT)
#define CG_OFF_H0 OFF_X                                       // H0, then (group 0, after its last H0 read) q ⊙ dq
#define CG_OFF_DH (CG_OFF_H0 + MAXVB * S_BYTES)
#define CG_OFF_B (CG_OFF_DH + MAXVB * S_BYTES)
#define CG_OFF_F (CG_OFF_B + CHUNK * DKP * 4)                 // [2][4][DK] float32: scale · e^{b_r}, e^{b_C − b_r} per warp
#define CG_OFF_QH (CG_OFF_F + 2 * NWARPS * DK * 4)            // Q̂_w = Q ⊙ e^{min(b_u − b_r, 80)}, rows u ≥ 16w, w = 0..3 (160 rows)
#define CG_OFF_KX (CG_OFF_QH + 160 * DK * 2)                  // K̃_2 (48 rows); K̃_3, K̃_0, K̃_1 take the raw Q and K tiles' place
#define CG_SMEM_BYTES (CG_OFF_KX + 48 * DK * 2)

// First row of warp w's Q̂ tile in the Q̂ region (its rows 16w..63 stored from there: 64, 48, 32, 16 rows).
__device__ __forceinline__ int qh_row0(int w) { return 64 * w - 8 * w * (w - 1); }

// Byte offset of warp w's K̃ tile K̃_w = K ⊙ e^{b_r − b_s} (rows s ≤ 16w + 15, its row s is key s): K̃_3 (64 rows, the
// reference row is the chunk's last, so it is also dv's K ⊙ e^{b_C − b_s}), K̃_0 (16) and K̃_1 (32) where the raw Q and K
// tiles were (112 of their 128 rows), K̃_2 (48) in its own region.
__device__ __forceinline__ unsigned kt_off(int w)
{
    return w == 3 ? (unsigned)OFF_Q : w == 2 ? (unsigned)CG_OFF_KX : (unsigned)(OFF_Q + (64 + 16 * w) * DK * 2);
}

// Index of (row, col) in a [CHUNK][DK] float32 tile whose columns are XOR-swizzled by row (conflict-free float2 stores
// from the mma layout, conflict-free row reads by column); col and col ^ 1 stay adjacent.
__device__ __forceinline__ int pidx(int row, int col) { return row * DK + (col ^ ((row & 7) << 3)); }

__device__ __forceinline__ void group_bar0() { asm volatile("bar.sync 1, 128;\n" ::: "memory"); }
// Group 0 has written q ⊙ dq (arrive) / group 1 waits for it before subtracting k ⊙ dk in place (sync).
__device__ __forceinline__ void pq_arrive() { asm volatile("bar.arrive 2, 256;\n" ::: "memory"); }
__device__ __forceinline__ void pq_sync() { asm volatile("bar.sync 2, 256;\n" ::: "memory"); }

extern "C" __global__ void __launch_bounds__(CG_NT, 1)
attend_linear_chunk_bwd_cg(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, const elem_t* __restrict__ dO,
    const float* __restrict__ gate,           // [tokens, H, DK]
    const float* __restrict__ headLogDecay,   // unused (the channel gate has no fixed form)
    const elem_t* __restrict__ H0s,           // [chunks, H, DK, dv]: the state at each chunk's start
    const elem_t* __restrict__ dHs,           // [chunks, H, DK, dv]: the gradient of the state at each chunk's end
    const float* __restrict__ finalStates,    // [N, H, DK, dv]: each sequence's final state (read for dG only)
    float* __restrict__ dQ, float* __restrict__ dK, float* __restrict__ dV,
    float* __restrict__ dG,                   // like `gate`, or null (not wanted)
    const LinChunk* __restrict__ chunks,      // pad: 1 for a sequence's last chunk
    int heads, int kvHeads, int dv, float scale)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int grp = warp >> 2, w = warp & 3, gtid = tid & (NT - 1);
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
    float* const sB = (float*)(smem + CG_OFF_B);
    float* const sPq = (float*)(smem + CG_OFF_H0);
    const float* const sFH0 = (const float*)(smem + CG_OFF_F);   // [4][DK]: scale · e^{b_r}
    const float* const sFDH = sFH0 + NWARPS * DK;                // [4][DK]: e^{b_C − b_r}
    (void)headLogDecay;

    // The tiles and the gate first (one group each half of the CTA), the states second.
    if (grp == 0)
    {
        load_tile<CHUNK>(sQ, qBase, qStride, len, gtid);
        for (int vb = 0; vb < nvb; vb++) load_vtile(base + OFF_V + vb * V_BYTES, vBase + vb * BV, vStride, len, gtid);
        load_gtile(base + CG_OFF_B, gate + (tok0 * heads + h) * DK, (long long)heads * DK, len, DKP, gtid);
        cp_async_commit();
        for (int vb = 0; vb < nvb; vb++) load_stile(base + CG_OFF_H0 + vb * S_BYTES, H0s + stateAt + vb * BV, dv, gtid);
    }
    else
    {
        load_tile<CHUNK>(sK, kBase, kStride, len, gtid);
        for (int vb = 0; vb < nvb; vb++) load_vtile(base + OFF_DO + vb * V_BYTES, oBase + vb * BV, oStride, len, gtid);
        cp_async_commit();
        for (int vb = 0; vb < nvb; vb++) load_stile(base + CG_OFF_DH + vb * S_BYTES, dHs + stateAt + vb * BV, dv, gtid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // The in-chunk cumulative log decay, in place: thread (part p, channel c) scans rows p·RP .. p·RP + RP − 1 in
    // registers, then adds the earlier parts' totals (rows past len hold zero gates: b stays at b_{len−1}).
    {
        constexpr int PARTS = CG_NT / DK, RP = CHUNK / PARTS;
        const int c = tid % DK, p = tid / DK;
        float x[RP];
#pragma unroll
        for (int i = 0; i < RP; i++) x[i] = sB[(p * RP + i) * DKP + c];
#pragma unroll
        for (int i = 1; i < RP; i++) x[i] += x[i - 1];
        float* const tot = (float*)(smem + CG_OFF_QH);   // scratch: the parts' totals (Q̂ is written after)
        tot[p * DK + c] = x[RP - 1];
        __syncthreads();
        float off = 0.f;
        for (int q = 0; q < p; q++) off += tot[q * DK + c];
#pragma unroll
        for (int i = 0; i < RP; i++) sB[(p * RP + i) * DKP + c] = x[i] + off;
    }
    __syncthreads();
    for (int i = tid; i < NWARPS * DK; i += CG_NT)
    {
        const int ww = i / DK, c = i % DK;
        const float r = sB[(16 * ww + 15) * DKP + c];
        float* f = (float*)(smem + CG_OFF_F);
        f[i] = scale * exp_e(r);
        f[NWARPS * DK + i] = exp_e(sB[(CHUNK - 1) * DKP + c] - r);
    }
    // Q̂_w, the query operand of dk's in-chunk product and of Aᵀ at warp w's reference row (clamped on the diagonal
    // block, as those products scaled each fragment before): 8 channels of one row per item, 16-byte loads and stores.
    for (int i = tid; i < 160 * DC; i += CG_NT)
    {
        const int R = i / DC, c8 = i % DC;
        const int ww = R < 64 ? 0 : R < 112 ? 1 : R < 144 ? 2 : 3;
        const int u = R - qh_row0(ww) + 16 * ww;
        const uint4 x = *(const uint4*)(smem + OFF_Q + tile_offset(u, c8));
        const float* bu = sB + u * DKP + 8 * c8;
        const float* br = sB + (16 * ww + 15) * DKP + 8 * c8;
        float f[8];
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = exp_e(fminf(bu[j] - br[j], 80.f));
        uint4 y;
        y.x = pack2(elem_lo(x.x) * f[0], elem_hi(x.x) * f[1]);
        y.y = pack2(elem_lo(x.y) * f[2], elem_hi(x.y) * f[3]);
        y.z = pack2(elem_lo(x.z) * f[4], elem_hi(x.z) * f[5]);
        y.w = pack2(elem_lo(x.w) * f[6], elem_hi(x.w) * f[7]);
        *(uint4*)(smem + CG_OFF_QH + tile_offset(R, c8)) = y;
    }
    // K̃_w, the key operand of dq's in-chunk product, of Aᵀ and (K̃_3) of dv's state term; read from the raw K tile
    // into registers first, written after a barrier (three of the four tiles overwrite the raw Q and K tiles, which
    // nothing reads after this: the gate gradient reads raw q and k from global memory).
    constexpr int KT_ITEMS = (160 * DC + CG_NT - 1) / CG_NT;
    uint4 kt[KT_ITEMS];
#pragma unroll
    for (int n = 0; n < KT_ITEMS; n++)
    {
        const int i = tid + n * CG_NT;
        if (i < 160 * DC)
        {
            // Items 0..: K̃_3 rows 0..63, K̃_0 rows 0..15, K̃_1 rows 0..31, K̃_2 rows 0..47.
            const int R = i / DC, c8 = i % DC;
            const int ww = R < 64 ? 3 : R < 80 ? 0 : R < 112 ? 1 : 2;
            const int s = R < 64 ? R : R < 80 ? R - 64 : R < 112 ? R - 80 : R - 112;
            const uint4 x = *(const uint4*)(smem + OFF_K + tile_offset(s, c8));
            const float* bs = sB + s * DKP + 8 * c8;
            const float* br = sB + (16 * ww + 15) * DKP + 8 * c8;
            float f[8];
#pragma unroll
            for (int j = 0; j < 8; j++) f[j] = exp_e(br[j] - bs[j]);
            kt[n].x = pack2(elem_lo(x.x) * f[0], elem_hi(x.x) * f[1]);
            kt[n].y = pack2(elem_lo(x.y) * f[2], elem_hi(x.y) * f[3]);
            kt[n].z = pack2(elem_lo(x.z) * f[4], elem_hi(x.z) * f[5]);
            kt[n].w = pack2(elem_lo(x.w) * f[6], elem_hi(x.w) * f[7]);
        }
    }
    __syncthreads();   // every raw Q and K read done (Q̂ above, K̃ here)
#pragma unroll
    for (int n = 0; n < KT_ITEMS; n++)
    {
        const int i = tid + n * CG_NT;
        if (i < 160 * DC)
        {
            const int R = i / DC, c8 = i % DC;
            const int ww = R < 64 ? 3 : R < 80 ? 0 : R < 112 ? 1 : 2;
            const int s = R < 64 ? R : R < 80 ? R - 64 : R < 112 ? R - 80 : R - 112;
            *(uint4*)(smem + kt_off(ww) + tile_offset(s, c8)) = kt[n];
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    const int rr = wr + 15;   // this warp's reference row: e^{b_t − b_s} = e^{b_t − b_rr} e^{b_rr − b_s}
    const unsigned sQh = base + CG_OFF_QH + qh_row0(w) * DK * 2;   // Q̂_w: its row u − 16w is query u
    const unsigned sKt = base + kt_off(w);                          // K̃_w: its row s is key s
    const unsigned sKc = base + kt_off(3);                          // K̃_3 = K ⊙ e^{b_C − b_s}

    if (grp == 0)
    {
        // ---- Phase Q: this warp's rows as queries. ----
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
            }
        }

        // dQ = e^{b_t − b_r} ⊙ (scale · dA K̃_w + (dO H0ᵀ) ⊙ scale·e^{b_r}): the state term first, its factor (per key
        // channel, a column of dq) on the float32 result instead of on every H0 fragment; the scale in the dA operand
        // (rounded as group 1 rounds scale·dAᵀ).
        float dq[DK / 8][4];
#pragma unroll
        for (int j = 0; j < DK / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sO = base + OFF_DO + vb * V_BYTES, sX = base + CG_OFF_H0 + vb * S_BYTES;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sO + voff(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
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
#pragma unroll
        for (int j = 0; j < DK / 8; j++)
        {
            const float2 f = *(const float2*)(sFH0 + w * DK + 8 * j + 2 * t);
            dq[j][0] *= f.x; dq[j][1] *= f.y; dq[j][2] *= f.x; dq[j][3] *= f.y;
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
        {
            if (kk > w) break;
            const unsigned p0 = pack2(da[2 * kk][0] * scale, da[2 * kk][1] * scale);
            const unsigned p1 = pack2(da[2 * kk][2] * scale, da[2 * kk][3] * scale);
            const unsigned p2 = pack2(da[2 * kk + 1][0] * scale, da[2 * kk + 1][1] * scale);
            const unsigned p3 = pack2(da[2 * kk + 1][2] * scale, da[2 * kk + 1][3] * scale);
#pragma unroll
            for (int dp = 0; dp < DK / 16; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sKt + tile_offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(dq[2 * dp], p0, p1, p2, p3, b0, b1);
                mma16816(dq[2 * dp + 1], p0, p1, p2, p3, b2, b3);
            }
        }
        group_bar0();   // group 0 is done with H0: its region takes q ⊙ dq

        // dq's factor e^{min(b_t − b_r, 80)} and, with it, q ⊙ dq: its diagonal pair left out (recomputed with the
        // products' own roundings, k̃ the K̃_w element the product used; see attend_linear_chunk_bwd). One exp per element
        // serves both.
        float dd0 = 0.f, dd1 = 0.f;
        if (dG != 0)
        {
            quad_diagonal(da, wr, g, t, dd0, dd1);
            dd0 = rnd_elem(dd0 * scale);
            dd1 = rnd_elem(dd1 * scale);
        }
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            const float dd = half ? dd1 : dd0;
#pragma unroll
            for (int j = 0; j < DK / 8; j++)
            {
                const int col = 8 * j + 2 * t;
                const float2 r = *(const float2*)(sB + rr * DKP + col), b = *(const float2*)(sB + row * DKP + col);
                const float f0 = exp_e(fminf(b.x - r.x, 80.f)), f1 = exp_e(fminf(b.y - r.y, 80.f));
                dq[j][2 * half] *= f0;
                dq[j][2 * half + 1] *= f1;
                if (dG != 0)
                {
                    // q raw from global memory (rows past len: zero).
                    const unsigned qp = row < len ? *(const unsigned*)(qBase + (long long)row * qStride + col) : 0u;
                    const unsigned kp = tile_pair(smem + kt_off(w), row, col);
                    *(float2*)(sPq + pidx(row, col)) = make_float2((dq[j][2 * half] - dd * elem_lo(kp) * f0) * elem_lo(qp),
                                                                   (dq[j][2 * half + 1] - dd * elem_hi(kp) * f1) * elem_hi(qp));
                }
            }
        }
        write_rows<DK / 8>(dQ + (long long)h * DK, dq, tok0, qStride, wr, len, g, t, false, 1.f);
        pq_arrive();
    }
    else
    {
        // ---- Phase K: this warp's rows as keys. dAᵀ = V dOᵀ for the queries from this warp's own block on (t ≥ s). ----
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
            }
        }

        // dK = e^{b_r − b_s} ⊙ (scale · dAᵀ Q̂_w + (V dHᵀ) ⊙ e^{b_C − b_r}): the state term first, its factor (per key
        // channel, a column of dk) on the float32 result instead of on every dH fragment.
        float dk[DK / 8][4];
#pragma unroll
        for (int j = 0; j < DK / 8; j++) dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = 0.f;
        for (int vb = 0; vb < nvb; vb++)
        {
            const unsigned sV = base + OFF_V + vb * V_BYTES, sX = base + CG_OFF_DH + vb * S_BYTES;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sV + voff(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
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
#pragma unroll
        for (int j = 0; j < DK / 8; j++)
        {
            const float2 f = *(const float2*)(sFDH + w * DK + 8 * j + 2 * t);
            dk[j][0] *= f.x; dk[j][1] *= f.y; dk[j][2] *= f.x; dk[j][3] *= f.y;
        }
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
                ldsm_x4_t(sQh + tile_offset(kk * 16 - wr + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816(dk[2 * dp], p0, p1, p2, p3, b0, b1);
                mma16816(dk[2 * dp + 1], p0, p1, p2, p3, b2, b3);
            }
        }
        // dk's factor e^{b_r − b_s} and, with it, − k ⊙ dk (this head's dk, before any sum over a group), its diagonal
        // term left out (q̂ the Q̂_w element the product used), subtracted in place from q ⊙ dq once group 0 has written it.
        float dd0 = 0.f, dd1 = 0.f;
        if (dG != 0)
        {
            quad_diagonal(dat, wr, g, t, dd0, dd1);
            dd0 = rnd_elem(dd0 * scale);
            dd1 = rnd_elem(dd1 * scale);
        }
        pq_sync();
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int row = wr + g + 8 * half;
            const float dd = half ? dd1 : dd0;
#pragma unroll
            for (int j = 0; j < DK / 8; j++)
            {
                const int col = 8 * j + 2 * t;
                const float2 r = *(const float2*)(sB + rr * DKP + col), b = *(const float2*)(sB + row * DKP + col);
                const float f0 = exp_e(r.x - b.x), f1 = exp_e(r.y - b.y);
                dk[j][2 * half] *= f0;
                dk[j][2 * half + 1] *= f1;
                if (dG != 0)
                {
                    // k raw from global memory (rows past len: zero).
                    const unsigned kp = row < len ? *(const unsigned*)(kBase + (long long)row * kStride + col) : 0u;
                    const unsigned qp = tile_pair(smem + CG_OFF_QH + qh_row0(w) * DK * 2, row - wr, col);
                    float2* const pp = (float2*)(sPq + pidx(row, col));
                    const float2 qd = *pp;
                    *pp = make_float2(qd.x - (dk[j][2 * half] - dd * elem_lo(qp) * f0) * elem_lo(kp),
                                      qd.y - (dk[j][2 * half + 1] - dd * elem_hi(qp) * f1) * elem_hi(kp));
                }
            }
        }
        write_rows<DK / 8>(dK + (long long)hk * DK, dk, tok0, kStride, wr, len, g, t, add, 1.f);
    }

    // ---- Both groups: dV = Aᵀ dO + (K ⊙ e^{b_C − b_s}) dH for this warp's rows as keys, group 1 the even value blocks,
    // group 0 the odd. Aᵀ = scale · (K ⊙ e^{b_r − b_s}) (Q ⊙ e^{b_t − b_r})ᵀ (t ≥ s). ----
    if (1 - grp < nvb)   // dv = 64: group 1 alone
    {
        float at[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) at[j][0] = at[j][1] = at[j][2] = at[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
        {
            unsigned a0, a1, a2, a3;
            ldsm_x4(sKt + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < 4; np++)
            {
                if (np < w) continue;
                unsigned b0, b1, b2, b3;
                ldsm_x4(sQh + tile_offset(np * 16 - wr + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
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
                else at[j][e] *= scale;
            }
        }
        for (int vb = 1 - grp; vb < nvb; vb += 2)
        {
            const unsigned sO = base + OFF_DO + vb * V_BYTES, sX = base + CG_OFF_DH + vb * S_BYTES;
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
                ldsm_x4(sKc + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
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

    // ---- The gate gradient: d log α_r = ⟨S_C, dH⟩ + Σ_{t ≥ r in the chunk} (q ⊙ dq − k ⊙ dk)_t, thread c < DK down key
    // channel c (S_C: the next chunk's checkpoint, or the sequence's final state after its last chunk). ----
    if (dG != 0)
    {
        __syncthreads();   // both parts of every row are in the shared tiles
        if (tid < DK)
        {
            const int c = tid;
            float run = 0.f;
            const elem_t* sNext = H0s + stateAt + (long long)heads * DK * dv + (long long)c * dv;
            const float* sFinal = finalStates + (((long long)ch.seq * heads + h) * DK + c) * dv;
#pragma unroll
            for (int vb = 0; vb < MAXVB; vb++)
            {
                if (vb >= nvb) break;
                float sv[BV];
                if (ch.pad)
                {
#pragma unroll
                    for (int j = 0; j < BV; j += 4)
                    {
                        const float4 a = *(const float4*)(sFinal + vb * BV + j);
                        sv[j] = a.x; sv[j + 1] = a.y; sv[j + 2] = a.z; sv[j + 3] = a.w;
                    }
                }
                else
                {
#pragma unroll
                    for (int j = 0; j < BV; j += 8)
                    {
                        const uint4 e = *(const uint4*)(sNext + vb * BV + j);
                        sv[j] = elem_lo(e.x); sv[j + 1] = elem_hi(e.x); sv[j + 2] = elem_lo(e.y); sv[j + 3] = elem_hi(e.y);
                        sv[j + 4] = elem_lo(e.z); sv[j + 5] = elem_hi(e.z); sv[j + 6] = elem_lo(e.w); sv[j + 7] = elem_hi(e.w);
                    }
                }
#pragma unroll
                for (int j = 0; j < BV / 8; j++)
                {
                    const uint4 d = *(const uint4*)(smem + CG_OFF_DH + vb * S_BYTES + voff(c, j));
                    run += sv[8 * j] * elem_lo(d.x) + sv[8 * j + 1] * elem_hi(d.x) + sv[8 * j + 2] * elem_lo(d.y) + sv[8 * j + 3] * elem_hi(d.y)
                         + sv[8 * j + 4] * elem_lo(d.z) + sv[8 * j + 5] * elem_hi(d.z) + sv[8 * j + 6] * elem_lo(d.w) + sv[8 * j + 7] * elem_hi(d.w);
                }
            }
            float* out = dG + (tok0 * heads + h) * DK + c;
#pragma unroll 8
            for (int x = len - 1; x >= 0; x--)
            {
                run += sPq[pidx(x, c)];
                out[(long long)x * heads * DK] = run;
            }
        }
    }
}
#endif
