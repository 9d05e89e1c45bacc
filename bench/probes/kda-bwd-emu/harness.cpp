// Host emulation of attend_kda_bwd_chunk (v1, tensor cores): the kernel's own text and the helpers it uses (kernel.inc,
// cut from linear_delta_bwd.cu by run.sh) run with one std::thread per CUDA thread (256 per CTA), a std::barrier for
// __syncthreads and one per warp for the warp-collective instructions, which get host versions with the PTX fragment
// layouts: ldmatrix (.x4 and .x4.trans), mma.sync m16n8k16 (row.col, bf16 operands, float32 accumulators), shuffles;
// cp.async is a copy (zero-fill past the source size), bf16 rounding is round-to-nearest-even as cvt.rn.bf16x2.f32.
// Inputs: q, k, v, dO, S0, dS_T rounded to bf16 (so the double problem is the rounded one), w, u, δ, dδ, T, the chunk-start
// states and the state gradients from a double-precision chunked forward and reverse chain, rounded to bf16 as the GPU
// stores them. Gradients are compared with central finite differences of the plain recurrence on a random sample of
// entries (every entry is NaN-checked). Varlen sequences of 70, 1, 0, 45 and 64 tokens, H = 2 query heads on 1 kv head,
// scale 0.7, gates log U(0.5, 1) × argv[1]. Run by run.sh. Expect rel L2 of a few 1e-3 (bf16 intermediates).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <vector>
#include <thread>
#include <barrier>
#include <mutex>
#include <random>
#include <algorithm>
#ifndef DK
#define DK 64
#endif
#ifndef DV
#define DV 64
#endif
#define CHUNK 64
#define ELEM_BF16 1
#define BV 16
#define VC 2
#define NT 128
typedef unsigned short elem_t;
struct DeltaRow { int seq, tokStart, len, pad; };
#define __restrict__
#define __device__
#define __forceinline__ inline
struct float2 { float x, y; };
struct uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
struct TI { int x; };
thread_local TI threadIdx;
struct BI { int x, y, z; } blockIdx;
std::barrier<>* g_bar;
std::mutex g_mu;
unsigned char* g_smem;
struct WarpX { std::barrier<>* bar; unsigned u[32][8]; float f[32]; };
WarpX g_warps[8];
#define __syncthreads() g_bar->arrive_and_wait()
inline WarpX& WX() { return g_warps[threadIdx.x >> 5]; }
inline int LANE() { return threadIdx.x & 31; }
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> l(g_mu); float o = *p; *p = o + v; return o; }
inline float shfl_any(float v, int src) { WarpX& w = WX(); w.f[LANE()] = v; w.bar->arrive_and_wait(); float r = w.f[src]; w.bar->arrive_and_wait(); return r; }
inline float __shfl_xor_sync(unsigned, float v, int o) { return shfl_any(v, LANE() ^ o); }
inline float __shfl_sync(unsigned, float v, int s) { return shfl_any(v, s & 31); }
inline float __shfl_down_sync(unsigned, float v, int o) { int s = LANE() + o; return shfl_any(v, s < 32 ? s : LANE()); }
inline float __shfl_up_sync(unsigned, float v, int o) { int s = LANE() - o; return shfl_any(v, s >= 0 ? s : LANE()); }
inline unsigned smem_addr(const void* p) { return (unsigned)((const unsigned char*)p - g_smem); }
inline void cp_async16(unsigned dst, const void* src, int bytes) { memset(g_smem + dst, 0, 16); if (bytes) memcpy(g_smem + dst, src, bytes); }
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
inline unsigned lds32(unsigned addr) { unsigned v; memcpy(&v, g_smem + addr, 4); return v; }
inline void sts32(unsigned addr, unsigned v) { memcpy(g_smem + addr, &v, 4); }
inline unsigned short lds16(unsigned addr) { unsigned short v; memcpy(&v, g_smem + addr, 2); return v; }
inline void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    WarpX& w = WX(); int l = LANE(); w.u[l][0] = addr; w.bar->arrive_and_wait();
    unsigned r[4]; for (int m = 0; m < 4; m++) r[m] = lds32(w.u[m * 8 + l / 4][0] + (l % 4) * 4);
    w.bar->arrive_and_wait(); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
inline void ldsm_x4_t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    WarpX& w = WX(); int l = LANE(); w.u[l][0] = addr; w.bar->arrive_and_wait();
    unsigned r[4];
    for (int m = 0; m < 4; m++)
        r[m] = (unsigned)lds16(w.u[m * 8 + 2 * (l % 4)][0] + (l / 4) * 2) | ((unsigned)lds16(w.u[m * 8 + 2 * (l % 4) + 1][0] + (l / 4) * 2) << 16);
    w.bar->arrive_and_wait(); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
inline float bf(unsigned short x) { unsigned u = (unsigned)x << 16; float f; memcpy(&f, &u, 4); return f; }
inline unsigned short to_bf(float f) { unsigned u; memcpy(&u, &f, 4); if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; u += 0x7fffu + ((u >> 16) & 1u); return (unsigned short)(u >> 16); }
inline float elem_lo(unsigned x) { return bf((unsigned short)(x & 0xffffu)); }
inline float elem_hi(unsigned x) { return bf((unsigned short)(x >> 16)); }
inline unsigned pack2(float lo, float hi) { return (unsigned)to_bf(lo) | ((unsigned)to_bf(hi) << 16); }
inline float fast_exp2(float x) { float y = exp2f(x); return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y; }
inline float exp_e(float x) { return fast_exp2(x * 1.4426950408889634f); }
inline void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    WarpX& w = WX(); int l = LANE();
    w.u[l][0] = a0; w.u[l][1] = a1; w.u[l][2] = a2; w.u[l][3] = a3; w.u[l][4] = b0; w.u[l][5] = b1;
    w.bar->arrive_and_wait();
    auto A = [&](int r, int k) { unsigned x = w.u[4 * (r % 8) + (k % 8) / 2][(k < 8 ? 0 : 2) + (r < 8 ? 0 : 1)]; return k % 2 ? elem_hi(x) : elem_lo(x); };
    auto B = [&](int k, int n) { unsigned x = w.u[4 * n + (k % 8) / 2][k < 8 ? 4 : 5]; return k % 2 ? elem_hi(x) : elem_lo(x); };
    const int g = l >> 2, t = l & 3;
    float out[4];
    for (int e = 0; e < 4; e++)
    {
        const int r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
        float s = 0.f; for (int k = 0; k < 16; k++) s += A(r, k) * B(k, n);
        out[e] = c[e] + s;
    }
    w.bar->arrive_and_wait();
    for (int e = 0; e < 4; e++) c[e] = out[e];
}
using std::min;
#include "kernel.inc"


int H = 2, Hkv = 1; double scale = 0.7;
std::vector<int> lens = {70, 1, 0, 45, 64};
int T; // total tokens
std::vector<double> q, k, v, g, beta, S0, dO, dST;

double Loss() {
    double L = 0; int start = 0;
    for (size_t n = 0; n < lens.size(); n++) {
        for (int h = 0; h < H; h++) {
            int hk = h / (H / Hkv);
            std::vector<double> S(DK * DV);
            for (int i = 0; i < DK * DV; i++) S[i] = S0[(n * H + h) * DK * DV + i];
            for (int t = 0; t < lens[n]; t++) {
                long tok = start + t;
                for (int r = 0; r < DK; r++) for (int c = 0; c < DV; c++) S[r * DV + c] *= exp(g[(tok * H + h) * DK + r]);
                double b = beta[tok * H + h];
                std::vector<double> d(DV);
                for (int c = 0; c < DV; c++) { double p = 0; for (int r = 0; r < DK; r++) p += k[(tok * Hkv + hk) * DK + r] * S[r * DV + c]; d[c] = b * (v[(tok * Hkv + hk) * DV + c] - p); }
                for (int r = 0; r < DK; r++) for (int c = 0; c < DV; c++) S[r * DV + c] += k[(tok * Hkv + hk) * DK + r] * d[c];
                for (int c = 0; c < DV; c++) { double o = 0; for (int r = 0; r < DK; r++) o += q[(tok * H + h) * DK + r] * S[r * DV + c]; L += dO[(tok * H + h) * DV + c] * scale * o; }
            }
            for (int i = 0; i < DK * DV; i++) L += dST[(n * H + h) * DK * DV + i] * S[i];
        }
        start += lens[n];
    }
    return L;
}

int main(int argc, char** argv) {
    double gateScale = argc > 1 ? atof(argv[1]) : 1.0;
    T = 0; for (int l : lens) T += l;
    std::mt19937_64 rng(12345);
    std::normal_distribution<double> N(0, 1); std::uniform_real_distribution<double> U(0, 1);
    auto fill = [&](std::vector<double>& x, size_t n, double s) { x.resize(n); for (auto& e : x) e = s * N(rng); };
    fill(q, (size_t)T * H * DK, 0.4); fill(k, (size_t)T * Hkv * DK, 0.4); fill(v, (size_t)T * Hkv * DV, 1);
    g.resize((size_t)T * H * DK); for (auto& e : g) e = gateScale * log(0.5 + 0.5 * U(rng));
    beta.resize((size_t)T * H); for (auto& e : beta) e = 0.05 + 0.95 * U(rng);
    fill(S0, lens.size() * H * DK * DV, 0.3); fill(dO, (size_t)T * H * DV, 1); fill(dST, lens.size() * H * DK * DV, 1);
    // The element-type inputs rounded to bf16 and the float32 ones to float: the double problem is the kernel's.
    for (auto* x : {&q, &k, &v, &S0, &dO, &dST}) for (auto& e : *x) e = bf(to_bf((float)e));
    for (auto* x : {&g, &beta}) for (auto& e : *x) e = (float)e;
    std::vector<float> Tmg((size_t)T * H * 64, 0.f);

    // Kernel inputs (float) from a double chunked forward and reverse chain.
    std::vector<float> W((size_t)T * H * DK), Uu((size_t)T * H * DV), Dn((size_t)T * H * DV), dD((size_t)T * H * DV);
    std::vector<DeltaRow> chunks; std::vector<float> Hck, dHck;
    { int start = 0; for (size_t n = 0; n < lens.size(); n++) { for (int c0 = 0; c0 < lens[n]; c0 += 64) chunks.push_back({(int)n, start + c0, std::min(64, lens[n] - c0), 0}); start += lens[n]; } }
    Hck.resize(chunks.size() * H * DK * DV); dHck.resize(chunks.size() * H * DK * DV);
    for (int h = 0; h < H; h++) {
        int hk = h / (H / Hkv);
        // per sequence: forward over its chunks, then reverse
        for (size_t n = 0; n < lens.size(); n++) {
            std::vector<int> mine; for (size_t ci = 0; ci < chunks.size(); ci++) if (chunks[ci].seq == (int)n) mine.push_back(ci);
            std::vector<double> S(DK * DV); for (int i = 0; i < DK * DV; i++) S[i] = S0[(n * H + h) * DK * DV + i];
            struct CK { std::vector<double> b, A, w, u, d, Qt, Kh, S; int C, t0; };
            std::vector<CK> ks;
            for (int ci : mine) {
                CK c; c.C = chunks[ci].len; c.t0 = chunks[ci].tokStart; int C = c.C;
                c.b.assign(C * DK, 0); for (int i = 0; i < C; i++) for (int r = 0; r < DK; r++) c.b[i * DK + r] = (i ? c.b[(i - 1) * DK + r] : 0) + g[((long)(c.t0 + i) * H + h) * DK + r];
                auto K = [&](int i, int r) { return k[((long)(c.t0 + i) * Hkv + hk) * DK + r]; };
                auto Q = [&](int i, int r) { return q[((long)(c.t0 + i) * H + h) * DK + r]; };
                auto B = [&](int i) { return beta[(long)(c.t0 + i) * H + h]; };
                std::vector<double> L(C * C, 0), Tm(C * C, 0); c.A.assign(C * C, 0);
                for (int i = 0; i < C; i++) for (int j = 0; j < C; j++) {
                    double sl = 0, sa = 0; for (int r = 0; r < DK; r++) { double e = exp(c.b[i * DK + r] - c.b[j * DK + r]); sl += K(i, r) * K(j, r) * e; sa += Q(i, r) * K(j, r) * e; }
                    if (j < i) L[i * C + j] = B(i) * sl; if (j <= i) c.A[i * C + j] = sa; }
                for (int col = 0; col < C; col++) for (int i = 0; i < C; i++) { double x = i == col; for (int j = 0; j < i; j++) x -= L[i * C + j] * Tm[j * C + col]; Tm[i * C + col] = x; }
                for (int i = 0; i < C; i++) for (int col = 0; col < C; col++) Tmg[((size_t)(c.t0 + i) * H + h) * 64 + col] = (float)Tm[i * C + col];
                c.w.assign(C * DK, 0); c.u.assign(C * DV, 0); c.d.assign(C * DV, 0); c.Qt.assign(C * DK, 0); c.Kh.assign(C * DK, 0); c.S = S;
                for (int i = 0; i < C; i++) {
                    for (int r = 0; r < DK; r++) { double x = 0; for (int j = 0; j < C; j++) x += Tm[i * C + j] * B(j) * K(j, r) * exp(c.b[j * DK + r]); c.w[i * DK + r] = x;
                        c.Qt[i * DK + r] = Q(i, r) * exp(c.b[i * DK + r]); c.Kh[i * DK + r] = K(i, r) * exp(c.b[(C - 1) * DK + r] - c.b[i * DK + r]); }
                    for (int cc = 0; cc < DV; cc++) { double x = 0; for (int j = 0; j < C; j++) x += Tm[i * C + j] * B(j) * v[((long)(c.t0 + j) * Hkv + hk) * DV + cc]; c.u[i * DV + cc] = x; }
                }
                for (int i = 0; i < C; i++) for (int cc = 0; cc < DV; cc++) { double x = c.u[i * DV + cc]; for (int r = 0; r < DK; r++) x -= c.w[i * DK + r] * S[r * DV + cc]; c.d[i * DV + cc] = x; }
                std::vector<double> Sn(DK * DV);
                for (int r = 0; r < DK; r++) for (int cc = 0; cc < DV; cc++) { double x = exp(c.b[(C - 1) * DK + r]) * S[r * DV + cc]; for (int j = 0; j < C; j++) x += c.Kh[j * DK + r] * c.d[j * DV + cc]; Sn[r * DV + cc] = x; }
                for (int i = 0; i < C; i++) { long row = (long)(c.t0 + i) * H + h;
                    for (int r = 0; r < DK; r++) W[row * DK + r] = c.w[i * DK + r];
                    for (int cc = 0; cc < DV; cc++) { Uu[row * DV + cc] = c.u[i * DV + cc]; Dn[row * DV + cc] = c.d[i * DV + cc]; } }
                for (int i = 0; i < DK * DV; i++) Hck[((long)ci * H + h) * DK * DV + i] = S[i];
                S = Sn; ks.push_back(c);
            }
            std::vector<double> X(DK * DV); for (int i = 0; i < DK * DV; i++) X[i] = dST[(n * H + h) * DK * DV + i];
            for (int m = (int)mine.size() - 1; m >= 0; m--) {
                CK& c = ks[m]; int C = c.C, ci = mine[m];
                for (int i = 0; i < DK * DV; i++) dHck[((long)ci * H + h) * DK * DV + i] = X[i];
                auto DO = [&](int i, int cc) { return dO[((long)(c.t0 + i) * H + h) * DV + cc]; };
                std::vector<double> dd(C * DV);
                for (int j = 0; j < C; j++) for (int cc = 0; cc < DV; cc++) { double x = 0; for (int i = j; i < C; i++) x += scale * c.A[i * C + j] * DO(i, cc); for (int r = 0; r < DK; r++) x += c.Kh[j * DK + r] * X[r * DV + cc]; dd[j * DV + cc] = x; dD[((long)(c.t0 + j) * H + h) * DV + cc] = x; }
                std::vector<double> Xp(DK * DV);
                for (int r = 0; r < DK; r++) for (int cc = 0; cc < DV; cc++) { double x = exp(c.b[(C - 1) * DK + r]) * X[r * DV + cc]; for (int i = 0; i < C; i++) x += scale * c.Qt[i * DK + r] * DO(i, cc) - c.w[i * DK + r] * dd[i * DV + cc]; Xp[r * DV + cc] = x; }
                X = Xp;
            }
        }
    }
    // The kernel, every (chunk, head), on bf16 copies of the element-type inputs.
    auto B16 = [](const auto& x) { std::vector<elem_t> o(x.size()); for (size_t i = 0; i < x.size(); i++) o[i] = to_bf((float)x[i]); return o; };
    std::vector<elem_t> bq = B16(q), bk = B16(k), bv = B16(v), bdO = B16(dO), bDn = B16(Dn), bdD = B16(dD), bW = B16(W), bU = B16(Uu), bT = B16(Tmg), bH = B16(Hck), bX = B16(dHck);
    std::vector<float> fb(beta.begin(), beta.end()), fg(g.begin(), g.end());
    std::vector<float> gq(q.size(), NAN), gk(k.size(), 0.f), gv(v.size(), 0.f), gb(beta.size(), NAN), gg(g.size(), NAN);
    std::vector<unsigned char> smem(KB_SMEM_BYTES);
    for (size_t ci = 0; ci < chunks.size(); ci++) for (int h = 0; h < H; h++) {
        blockIdx = {(int)ci, h, 0}; g_smem = smem.data(); for (auto& x : smem) x = 0xFF;
        std::barrier<> bar(KT); g_bar = &bar;
        std::vector<std::barrier<>*> wb; for (int w = 0; w < KT / 32; w++) { wb.push_back(new std::barrier<>(32)); g_warps[w].bar = wb.back(); }
        std::vector<std::thread> th;
        for (int t = 0; t < KT; t++) th.emplace_back([&, t] { threadIdx.x = t;
            attend_kda_bwd_chunk(bq.data(), bk.data(), bv.data(), bdO.data(), bDn.data(), bdD.data(), bW.data(), bU.data(), bT.data(), bH.data(), bX.data(),
                fb.data(), fg.data(), gq.data(), gk.data(), gv.data(), gb.data(), gg.data(), chunks.data(), H, Hkv, (float)scale); });
        for (auto& x : th) x.join();
        for (auto* b : wb) delete b;
    }
    // Finite differences on a sample of entries; NaN over all.
    bool failed = false;
    std::mt19937_64 pick(777);
    auto check = [&](const char* name, std::vector<double>& x, std::vector<float>& grad) {
        double num = 0, den = 0, worst = 0; int nan = 0;
        for (size_t i = 0; i < x.size(); i++) if (std::isnan(grad[i])) nan++;
        const int samples = 60;
        for (int sIdx = 0; sIdx < samples; sIdx++) {
            size_t i = pick() % x.size();
            double keep = x[i], hh = 1e-5 * std::max(1.0, fabs(keep));
            x[i] = keep + hh; double up = Loss(); x[i] = keep - hh; double dn = Loss(); x[i] = keep;
            double fd = (up - dn) / (2 * hh);
            num += (grad[i] - fd) * (grad[i] - fd); den += fd * fd; worst = std::max(worst, fabs(grad[i] - fd));
        }
        double rel = sqrt(num / den);
        printf("%-6s rel L2 %.3e  worst abs %.3e  NaN %d  (%d of %zu sampled)\n", name, rel, worst, nan, samples, x.size());
        fflush(stdout);
        if (nan > 0 || !(rel < 2e-2)) failed = true;
    };
    check("dq", q, gq); check("dk", k, gk); check("dv", v, gv); check("dbeta", beta, gb); check("dg", g, gg);
    return failed ? 1 : 0;
}
