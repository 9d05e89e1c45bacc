// Attend: chunked linear attention with the additive update, on tensor cores (mma.sync m16n8k16, bf16/fp16 in,
// float32 accumulation, float32 state).
//
//   S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t      (S: [DK, DV] per query head, causal inclusive)
//
// Decay (GATE): 0 none; 1 a scalar per token and head (log α from a per-head constant, or from a [tokens, H] gate:
// RetNet, Lightning, simple GLA); 2 a gate per token, head and key channel ([tokens, H, DK]: GLA).
//
// Work split. A CTA owns one (segment, query head, 64-column slice of V) and walks the segment's 64-token chunks in
// order, keeping its [DK, 64] slice of the state in float32 registers (the state accumulators of the K̂ᵀV product).
// Per chunk: A = Q Kᵀ masked (and decayed) inside the chunk, O = A V + Q̂ S, then S = decay ⊙ S + K̂ᵀ V. The state
// read by Q̂ S is rounded to the element type in shared memory (like the chunked kernels of flash-linear-attention).
// Pass 2 (the backward's forward sweep) is pass 1 without Q and outputs: it writes the state at each chunk's start.
// Segments split long sequences so the grid fills the GPU: pass 0 runs every segment but a sequence's last from a
// zero state and writes its local state and total log decay (partState, partDecay); pass 1 starts each segment from
// the sequence's initial state folded with the local states of the segments before it, writes the outputs, and the
// last segment writes the final state. Q, K, V, gate tiles stream through shared memory with cp.async, double
// buffered; rows past a chunk's end are zero-filled (zero keys and values add nothing; a zero log gate decays nothing).
//
// GATE 2 inside a chunk: A_ij = Σ_c q_ic k_jc exp(b_ic − b_jc) (b = in-chunk cumulative log gate) is computed per
// 16-key sub-block J as (q_i ⊙ exp(b_i − b_e)) · (k_j ⊙ exp(b_e − b_j)) with b_e the cumulative gate at J's last row:
// both factors are ≤ 1 for the blocks below the diagonal; on the diagonal block the query factor is exp of the decay
// over at most 15 tokens, clamped at e^80 (exact unless the gates sum below −80 within 16 tokens). These products run
// in bf16 whatever the element type (bf16 has float32's range).
//
// Defines: DK (64 | 128), ELEM_BF16 (1 bf16, 0 fp16), GATE (0 | 1 | 2). Headers: mma_tiles.cuh, linear_elem.cuh, linear_tiles.cuh
// (expanded into the source by KernelCompiler.Source; NVRTC itself is given no include path).

#ifndef DK
#error "DK must be defined"
#endif

#if GATE == 2
#define NWARPS 8     // two groups of 4 warps, one per 64-column half of a 128-column value block, sharing the gate work
#define VH 2
#else
#define NWARPS 4
#define VH 1
#endif
#define NT (NWARPS * 32)
#define CHUNK 64
#define BV 64
#define HEAD_DIM DK
#define DC (DK / 8)
#define KS (DK / 16)
#define MS (DK / 64)

typedef unsigned short elem_t;

#include "mma_tiles.cuh"
#include "linear_elem.cuh"
#include "linear_tiles.cuh"

struct LinSeg { int seq, tokStart, len, part, firstPart, index, isLast, pad; };

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void mma_bf16(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Shared memory (bytes): Q, K (2 stages each), V (2 stages), the state tile (2 buffers, so one barrier per chunk
// suffices; 1 for GATE 2, which has no room for two), then per gate kind: GATE 1 the raw scalar gates (2 stages);
// GATE 2 K̂ (decayed keys of the state update), K̃ (bf16 keys of the gated intra-chunk product), the raw gate tiles
// (2 stages) and the cumulative log decay.
#define Q_BYTES (CHUNK * DK * 2)
#define V_BYTES (CHUNK * BV * 2)
#define S_BYTES (DK * BV * 2)
#define OFF_Q 0
#define OFF_K (OFF_Q + 2 * Q_BYTES)
#define OFF_V (OFF_K + 2 * Q_BYTES)
#define OFF_S (OFF_V + 2 * VH * V_BYTES)
#if GATE == 0
#define SMEM_BYTES (OFF_S + 2 * S_BYTES)
#elif GATE == 1
#define OFF_GR (OFF_S + 2 * S_BYTES)
#define SMEM_BYTES (OFF_GR + 2 * CHUNK * 4)
#else
#define OFF_KH (OFF_S + VH * S_BYTES)
#define OFF_KT (OFF_KH + Q_BYTES)
#define OFF_G (OFF_KT + Q_BYTES)
#define SMEM_BYTES (OFF_G + 2 * CHUNK * DK * 4)
#endif

extern "C" __global__ void __launch_bounds__(NT)
attend_linear_chunk(
    const elem_t* __restrict__ Q, const elem_t* __restrict__ K, const elem_t* __restrict__ V, elem_t* __restrict__ O,
    const float* __restrict__ gate,          // GATE 1: [tokens, H] log α (unless headLogDecay); GATE 2: [tokens, H, DK]
    const float* __restrict__ headLogDecay,  // GATE 1: [H] log γ, or null to read `gate`
    const float* __restrict__ S0,            // [N, H, DK, dv] or null (zero)
    float* __restrict__ ST,                  // [N, H, DK, dv] or null
    float* __restrict__ partState,           // [parts, H, DK, dv]
    float* __restrict__ partDecay,           // [parts, H, DK] (GATE 2) or [parts, H] (GATE 1)
    const LinSeg* __restrict__ segs,
    int heads, int kvHeads, int dv, float scale, int pass,
    elem_t* __restrict__ chunkStates)        // pass 2: [chunks, H, DK, dv], the state at each chunk's start (seg.pad: the segment's first chunk)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y;
    const int wq = warp & 3, vh = warp >> 2;    // query rows / state rows of this warp; its value half (GATE 2)
    const int vb = blockIdx.x * VH + vh;       // this warp's 64-column value block
    const LinSeg seg = segs[blockIdx.z];
    const int hk = h / (heads / kvHeads);
    const long long qStride = (long long)heads * DK, kStride = (long long)kvHeads * DK;
    const long long vStride = (long long)kvHeads * dv, oStride = (long long)heads * dv;
    const elem_t* qBase = Q + (long long)seg.tokStart * qStride + (long long)h * DK;
    const elem_t* kBase = K + (long long)seg.tokStart * kStride + (long long)hk * DK;
    const elem_t* vBase = V + (long long)seg.tokStart * vStride + (long long)hk * dv + blockIdx.x * VH * BV;
    const unsigned base = smem_addr(smem);
    const int stateRow0 = wq * 16 * MS;     // this warp's first state row (key channel)
    const int wr = wq * 16;                 // this warp's first query row in a chunk
#if GATE == 2
    const float* gBase = gate + ((long long)seg.tokStart * heads + h) * DK;
    float decayAcc = 0.f;                   // thread c < DK: the segment's total log decay of channel c
#elif GATE == 1
    float decayAcc = 0.f;
#endif
    (void)qBase;

    // The state slice, as the accumulators of K̂ᵀV: element (m, j, e) is row stateRow0 + 16m + g + 8(e>>1), column 8j + 2t + (e&1).
    float st[MS][8][4];
#pragma unroll
    for (int m = 0; m < MS; m++)
#pragma unroll
        for (int j = 0; j < 8; j++) st[m][j][0] = st[m][j][1] = st[m][j][2] = st[m][j][3] = 0.f;

    if (pass != 0)
    {
        // The segment's initial state: the sequence's own, then folded with the local states of the earlier segments.
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
                    if (S0 != 0) s = *(const float2*)(S0 + (((long long)seg.seq * heads + h) * DK + row) * dv + col);
                    for (int i = 0; i < seg.index; i++)
                    {
                        const int p = seg.firstPart + i;
#if GATE == 1
                        const float f = exp_e(partDecay[(long long)p * heads + h]);
#elif GATE == 2
                        const float f = exp_e(partDecay[((long long)p * heads + h) * DK + row]);
#else
                        const float f = 1.f;
#endif
                        const float2 l = *(const float2*)(partState + (((long long)p * heads + h) * DK + row) * dv + col);
                        s.x = fmaf(f, s.x, l.x);
                        s.y = fmaf(f, s.y, l.y);
                    }
                    st[m][j][2 * half] = s.x;
                    st[m][j][2 * half + 1] = s.y;
                    *(unsigned*)(smem + OFF_S + vh * S_BYTES + voff(row, j) + 4 * t) = pack2(s.x, s.y);
                }
            }
    }

    const int nChunks = (seg.len + CHUNK - 1) / CHUNK;
    if (nChunks > 0)
    {
        const int valid = seg.len < CHUNK ? seg.len : CHUNK;
        if (pass == 1) load_tile<CHUNK>(base + OFF_Q, qBase, qStride, valid, tid);
        load_tile<CHUNK>(base + OFF_K, kBase, kStride, valid, tid);
#pragma unroll
        for (int hv = 0; hv < VH; hv++) load_vtile(base + OFF_V + hv * V_BYTES, vBase + hv * BV, vStride, valid, tid);
#if GATE == 2
        load_gtile(base + OFF_G, gBase, (long long)heads * DK, valid, DK, tid);
#elif GATE == 1
        if (headLogDecay == 0 && tid < CHUNK)
            cp_async4(base + OFF_GR + tid * 4, tid < valid ? gate + (long long)(seg.tokStart + tid) * heads + h : gate, tid < valid ? 4 : 0);
#endif
    }
    cp_async_commit();

    for (int c = 0; c < nChunks; c++)
    {
        const int stage = c & 1;
        const int c0 = c * CHUNK;
        const int len = seg.len - c0 < CHUNK ? seg.len - c0 : CHUNK;
        if (pass == 2)
        {
            // The backward's checkpoint: the state at this chunk's start, rounded to the element type.
            elem_t* dst = chunkStates + ((long long)(seg.pad + c) * heads + h) * DK * dv + vb * BV;
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
        // This chunk's tiles have landed and every warp is done with the previous chunk: the other stage is free.
        cp_async_wait<0>();
        __syncthreads();
        if (c + 1 < nChunks)
        {
            const int n0 = c0 + CHUNK;
            const int nvalid = seg.len - n0 < CHUNK ? seg.len - n0 : CHUNK;
            const int ns = stage ^ 1;
            if (pass == 1) load_tile<CHUNK>(base + OFF_Q + ns * Q_BYTES, qBase + (long long)n0 * qStride, qStride, nvalid, tid);
            load_tile<CHUNK>(base + OFF_K + ns * Q_BYTES, kBase + (long long)n0 * kStride, kStride, nvalid, tid);
#pragma unroll
            for (int hv = 0; hv < VH; hv++)
                load_vtile(base + OFF_V + (ns * VH + hv) * V_BYTES, vBase + (long long)n0 * vStride + hv * BV, vStride, nvalid, tid);
#if GATE == 2
            load_gtile(base + OFF_G + ns * CHUNK * DK * 4, gBase + (long long)n0 * heads * DK, (long long)heads * DK, nvalid, DK, tid);
#elif GATE == 1
            if (headLogDecay == 0 && tid < CHUNK)
                cp_async4(base + OFF_GR + (ns * CHUNK + tid) * 4, tid < nvalid ? gate + (long long)(seg.tokStart + n0 + tid) * heads + h : gate,
                          tid < nvalid ? 4 : 0);
#endif
        }
        cp_async_commit();

        const unsigned sQ = base + OFF_Q + stage * Q_BYTES;
        const unsigned sK = base + OFF_K + stage * Q_BYTES;
        const unsigned sV = base + OFF_V + (stage * VH + vh) * V_BYTES;

        // The in-chunk cumulative log decay b (inclusive); rows past the end decay nothing, so b[CHUNK-1] is the chunk's total.
#if GATE == 1
        float b0, b1;   // b[2 lane], b[2 lane + 1]
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
                const float2 a = *(const float2*)(smem + OFF_GR + (stage * CHUNK + i0) * 4);
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
        decayAcc += bLast;
#elif GATE == 2
        // In place: the raw gate tile of this stage becomes the cumulative log decay (the next chunk's gates go to the other stage).
        float* const sB = (float*)(smem + OFF_G + stage * CHUNK * DK * 4);
        if (tid < DK)
        {
            // 16 rows at a time: their loads are independent, so the scan waits for one shared-memory latency per 16
            // rows instead of one per row.
            float run = 0.f;
#pragma unroll
            for (int i0 = 0; i0 < CHUNK; i0 += 16)
            {
                float y[16];
#pragma unroll
                for (int i = 0; i < 16; i++) y[i] = sB[(i0 + i) * DK + tid];
#pragma unroll
                for (int i = 0; i < 16; i++)
                {
                    run += y[i];
                    sB[(i0 + i) * DK + tid] = run;
                }
            }
            decayAcc += run;
        }
        __syncthreads();
#endif

        // GATE 2: decayed keys K̂_j = k_j ⊙ exp(b_last − b_j) for the state update and K̃_j = k_j ⊙ exp(b_e(j) − b_j) in
        // bf16 for the intra-chunk product (pass 1 only: passes 0 and 2 compute no output; GATE 1 scales the key
        // fragments of the state update in registers instead).
#if GATE == 2
#pragma unroll
        for (int i = 0; i < CHUNK * DC / NT; i++)
        {
            const int idx = tid + i * NT;
            const int r = idx / DC, cc = idx % DC;
            const unsigned off = tile_offset(r, cc);
            const uint4 kv = *(const uint4*)(smem + OFF_K + stage * Q_BYTES + off);
            const unsigned kw[4] = {kv.x, kv.y, kv.z, kv.w};
            unsigned hw[4];
            unsigned tw[4];
            const int rEnd = r | 15;
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int ch = cc * 8 + 2 * e;
                const float br0 = sB[r * DK + ch], br1 = sB[r * DK + ch + 1];
                const float lo = elem_lo(kw[e]), hi = elem_hi(kw[e]);
                hw[e] = pack2(lo * exp_e(sB[(CHUNK - 1) * DK + ch] - br0), hi * exp_e(sB[(CHUNK - 1) * DK + ch + 1] - br1));
                if (pass == 1) tw[e] = pack_bf16(lo * exp_e(sB[rEnd * DK + ch] - br0), hi * exp_e(sB[rEnd * DK + ch + 1] - br1));
            }
            if (pass == 1) *(uint4*)(smem + OFF_KT + off) = make_uint4(tw[0], tw[1], tw[2], tw[3]);
            *(uint4*)(smem + OFF_KH + off) = make_uint4(hw[0], hw[1], hw[2], hw[3]);
        }
        __syncthreads();
        const unsigned sKh = base + OFF_KH;
#else
        const unsigned sKh = sK;
#endif

        if (pass == 1)
        {
            // A = Q Kᵀ for this warp's 16 query rows against the keys up to its own 16-key block.
            float sc[8][4];
#pragma unroll
            for (int j = 0; j < 8; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#if GATE != 2
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
            {
                unsigned a0, a1, a2, a3;
                ldsm_x4(sQ + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
                for (int np = 0; np < 4; np++)
                {
                    if (np > wq) break;
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(sK + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                    mma16816(sc[2 * np], a0, a1, a2, a3, b0, b1);
                    mma16816(sc[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
#else
            const unsigned sKt = base + OFF_KT;
#pragma unroll
            for (int np = 0; np < 4; np++)
            {
                if (np > wq) break;
                const int rEnd = np * 16 + 15;
#pragma unroll
                for (int kk = 0; kk < KS; kk++)
                {
                    unsigned a[4];
                    ldsm_x4(sQ + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a[0], a[1], a[2], a[3]);
#pragma unroll
                    for (int e = 0; e < 4; e++)
                    {
                        const int row = wr + g + 8 * (e & 1);
                        const int ch = kk * 16 + 2 * t + 8 * (e >> 1);
                        const float x0 = fminf(sB[row * DK + ch] - sB[rEnd * DK + ch], 80.f);
                        const float x1 = fminf(sB[row * DK + ch + 1] - sB[rEnd * DK + ch + 1], 80.f);
                        a[e] = pack_bf16(elem_lo(a[e]) * exp_e(x0), elem_hi(a[e]) * exp_e(x1));
                    }
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(sKt + tile_offset(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
                    mma_bf16(sc[2 * np], a[0], a[1], a[2], a[3], b0, b1);
                    mma_bf16(sc[2 * np + 1], a[0], a[1], a[2], a[3], b2, b3);
                }
            }
#endif
            // Causal mask inside the chunk (inclusive); GATE 1 decays each pair by exp(b_i − b_j).
#if GATE == 1
            const float bRow0 = bget(b0, b1, wr + g), bRow1 = bget(b0, b1, wr + g + 8);
#endif
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                if (j > 2 * wq + 1) break;   // key tiles past this warp's rows were never accumulated: they stay 0
#if GATE == 1
                const float bc0 = bget(b0, b1, 8 * j + 2 * t), bc1 = bget(b0, b1, 8 * j + 2 * t + 1);
#endif
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    const int row = wr + g + 8 * (e >> 1), col = 8 * j + 2 * t + (e & 1);
                    if (col > row) sc[j][e] = 0.f;
#if GATE == 1
                    else sc[j][e] *= exp_e(((e >> 1) ? bRow1 : bRow0) - ((e & 1) ? bc1 : bc0));
#endif
                }
            }

            // O = Q̂ S (the state before this chunk, decayed to each row) + A V.
            float oa[8][4];
#pragma unroll
            for (int j = 0; j < 8; j++) oa[j][0] = oa[j][1] = oa[j][2] = oa[j][3] = 0.f;
#if GATE == 2
            const unsigned sS = base + OFF_S + vh * S_BYTES;
#else
            const unsigned sS = base + OFF_S + stage * S_BYTES;
#endif
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
            {
                unsigned a[4];
                ldsm_x4(sQ + tile_offset(wr + (lane & 15), 2 * kk + (lane >> 4)), a[0], a[1], a[2], a[3]);
#if GATE == 2
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    const int row = wr + g + 8 * (e & 1);
                    const int ch = kk * 16 + 2 * t + 8 * (e >> 1);
                    a[e] = pack2(elem_lo(a[e]) * exp_e(sB[row * DK + ch]), elem_hi(a[e]) * exp_e(sB[row * DK + ch + 1]));
                }
#endif
#pragma unroll
                for (int dp = 0; dp < 4; dp++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(sS + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                    mma16816(oa[2 * dp], a[0], a[1], a[2], a[3], b0, b1);
                    mma16816(oa[2 * dp + 1], a[0], a[1], a[2], a[3], b2, b3);
                }
            }
#if GATE == 1
            {
                const float f0 = exp_e(bRow0), f1 = exp_e(bRow1);
#pragma unroll
                for (int j = 0; j < 8; j++)
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
                const unsigned p0 = pack2(sc[2 * kk][0], sc[2 * kk][1]);
                const unsigned p1 = pack2(sc[2 * kk][2], sc[2 * kk][3]);
                const unsigned p2 = pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                const unsigned p3 = pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < 4; dp++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(sV + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                    mma16816(oa[2 * dp], p0, p1, p2, p3, b0, b1);
                    mma16816(oa[2 * dp + 1], p0, p1, p2, p3, b2, b3);
                }
            }
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int row = wr + g + 8 * half;
                if (row < len)
                {
                    elem_t* out = O + (long long)(seg.tokStart + c0 + row) * oStride + (long long)h * dv + vb * BV;
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        *(unsigned*)(out + 8 * j + 2 * t) = pack2(oa[j][2 * half] * scale, oa[j][2 * half + 1] * scale);
                }
            }
        }

        // S = decay ⊙ S + K̂ᵀ V.
#if GATE == 1
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
                ldsm_x4_t(sKh + tile_offset(kk * 16 + (lane & 7) + ((lane >> 4) << 3), (stateRow0 + 16 * m) / 8 + ((lane >> 3) & 1)),
                          a[m][0], a[m][1], a[m][2], a[m][3]);
#if GATE == 1
            {
                // K̂ = K ⊙ exp(b_last − b_token): a0/a1 hold tokens 2t, 2t+1 of this 16-token step, a2/a3 tokens 2t+8, 2t+9.
                const int tk = kk * 16 + 2 * t;
                const float f0 = exp_e(bLast - bget(b0, b1, tk)), f1 = exp_e(bLast - bget(b0, b1, tk + 1));
                const float f8 = exp_e(bLast - bget(b0, b1, tk + 8)), f9 = exp_e(bLast - bget(b0, b1, tk + 9));
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    a[m][0] = pack2(elem_lo(a[m][0]) * f0, elem_hi(a[m][0]) * f1);
                    a[m][1] = pack2(elem_lo(a[m][1]) * f0, elem_hi(a[m][1]) * f1);
                    a[m][2] = pack2(elem_lo(a[m][2]) * f8, elem_hi(a[m][2]) * f9);
                    a[m][3] = pack2(elem_lo(a[m][3]) * f8, elem_hi(a[m][3]) * f9);
                }
            }
#endif
#pragma unroll
            for (int dp = 0; dp < 4; dp++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(sV + voff(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)), b0, b1, b2, b3);
#pragma unroll
                for (int m = 0; m < MS; m++)
                {
                    mma16816(st[m][2 * dp], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
                    mma16816(st[m][2 * dp + 1], a[m][0], a[m][1], a[m][2], a[m][3], b2, b3);
                }
            }
        }

        // The state tile of the next chunk: GATE 0/1 write the other buffer (its last reader, the previous chunk, is done
        // since the barrier at the top); GATE 2 has one buffer and waits until every warp has read it.
#if GATE == 2
        __syncthreads();
        const int sNext = OFF_S + vh * S_BYTES;
#else
        const int sNext = OFF_S + (stage ^ 1) * S_BYTES;
#endif
        if (pass == 1)
        {
#pragma unroll
            for (int m = 0; m < MS; m++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int row = stateRow0 + 16 * m + g + 8 * half;
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        *(unsigned*)(smem + sNext + voff(row, j) + 4 * t) = pack2(st[m][j][2 * half], st[m][j][2 * half + 1]);
                }
        }
    }
    cp_async_wait<0>();

    // Pass 0: the segment's local state and total log decay. Pass 1: the sequence's final state from its last segment.
    float* target = 0;
    long long targetRow0 = 0;
    if (pass == 0)
    {
        target = partState;
        targetRow0 = ((long long)seg.part * heads + h) * DK;
#if GATE == 1
        if (vb == 0 && tid == 0) partDecay[(long long)seg.part * heads + h] = decayAcc;
#elif GATE == 2
        if (blockIdx.x == 0 && tid < DK) partDecay[((long long)seg.part * heads + h) * DK + tid] = decayAcc;
#endif
    }
    else if (seg.isLast && ST != 0)
    {
        target = ST;
        targetRow0 = ((long long)seg.seq * heads + h) * DK;
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
#if GATE == 0
    (void)partDecay;
    (void)gate;
    (void)headLogDecay;
#endif
}
