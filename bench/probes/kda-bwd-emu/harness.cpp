// Host emulation of attend_kda_bwd_chunk: the kernel's own text (kernel.inc, extracted from linear_delta_bwd.cu) run with
// KT std::threads per CTA and a std::barrier for __syncthreads, float elements; inputs from a double-precision chunked
// forward and reverse chain; gradients compared with central finite differences of the plain recurrence. Varlen
// sequences of 70, 1, 0, 45 and 64 tokens, H = 2 query heads on 1 kv head, scale 0.7, gates log U(0.5, 1) × argv[1].
// It runs the kernel's index arithmetic, masks, barriers and atomics as written (not the GPU's exp2.approx or memory
// model), in float32 with float elements: rel L2 ≈ 1e-7..1e-5 when the kernel is right. Run by run.sh.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <thread>
#include <barrier>
#include <mutex>
#include <random>
#include <functional>
#ifndef DK
#define DK 8
#endif
#ifndef DV
#define DV 8
#endif
#define CHUNK 64
typedef float elem_t;
struct DeltaRow { int seq, tokStart, len, pad; };
#define __restrict__
struct TI { int x; };
thread_local TI threadIdx;
struct BI { int x, y, z; } blockIdx;
std::barrier<>* g_bar;
std::mutex g_mu;
unsigned char* g_smem;
#define __syncthreads() g_bar->arrive_and_wait()
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> l(g_mu); float o = *p; *p = o + v; return o; }
inline float exp_e(float x) { return expf(x); }
inline float ld_elem(const float* p) { return *p; }
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
    // The kernel, every (chunk, head).
    std::vector<float> fq(q.begin(), q.end()), fk(k.begin(), k.end()), fv(v.begin(), v.end()), fdO(dO.begin(), dO.end()), fb(beta.begin(), beta.end()), fg(g.begin(), g.end());
    std::vector<float> gq(q.size(), NAN), gk(k.size(), 0.f), gv(v.size(), 0.f), gb(beta.size(), NAN), gg(g.size(), NAN);
    std::vector<unsigned char> smem(K_SMEM_BYTES);
    for (size_t ci = 0; ci < chunks.size(); ci++) for (int h = 0; h < H; h++) {
        blockIdx = {(int)ci, h, 0}; g_smem = smem.data(); for (auto& x : smem) x = 0xFF;
        std::barrier<> bar(KT); g_bar = &bar;
        std::vector<std::thread> th;
        for (int t = 0; t < KT; t++) th.emplace_back([&, t] { threadIdx.x = t;
            attend_kda_bwd_chunk(fq.data(), fk.data(), fv.data(), fdO.data(), Dn.data(), dD.data(), W.data(), Uu.data(), Hck.data(), dHck.data(),
                fb.data(), fg.data(), gq.data(), gk.data(), gv.data(), gb.data(), gg.data(), chunks.data(), H, Hkv, (float)scale); });
        for (auto& x : th) x.join();
    }
    // Finite differences.
    bool failed = false;
    auto check = [&](const char* name, std::vector<double>& x, std::vector<float>& grad) {
        double num = 0, den = 0, worst = 0; int nan = 0;
        for (size_t i = 0; i < x.size(); i++) {
            double keep = x[i], hh = 1e-6;
            x[i] = keep + hh; double up = Loss(); x[i] = keep - hh; double dn = Loss(); x[i] = keep;
            double fd = (up - dn) / (2 * hh);
            if (std::isnan(grad[i])) nan++;
            num += (grad[i] - fd) * (grad[i] - fd); den += fd * fd; worst = std::max(worst, fabs(grad[i] - fd));
        }
        double rel = sqrt(num / den);
        printf("%-6s rel L2 %.3e  worst abs %.3e  NaN %d  (n %zu)\n", name, rel, worst, nan, x.size());
        if (nan > 0 || !(rel < 1e-4)) failed = true;
    };
    check("dq", q, gq); check("dk", k, gk); check("dv", v, gv); check("dbeta", beta, gb); check("dg", g, gg);
    return failed ? 1 : 0;
}
