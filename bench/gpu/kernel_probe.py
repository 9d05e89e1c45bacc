# Kernel-level probe: compiles src/Attend.Cuda/Kernels/flash_forward.cu with NVRTC (through CuPy), checks it against a
# float64 reference on random data (fresh inputs, poisoned outputs) and times it beside PyTorch SDPA backends.
# Used while developing the kernel; the product path is `attend check/bench --backend cuda` (run.sh).
# main() compiles each entry of `variants` (flash_forward.cu's variant switches as -D defines), checks every one on small
# problems, then times them all (twice each) beside SDPA flash on the protocol shapes, so variants compare within one run.
import os, sys, time, math
import numpy as np, torch, cupy as cp
torch.backends.cuda.matmul.allow_tf32 = False
_PATH = sys.argv[1] if len(sys.argv) > 1 else 'src/Attend.Cuda/Kernels/flash_forward.cu'
# Expand `#include "x.cuh"` from the source's folder, as KernelCompiler.Source does for the embedded copies.
SRC = ''.join(open(os.path.join(os.path.dirname(_PATH), l.strip()[10:-1])).read() + '\n' if l.strip().startswith('#include "') else l
              for l in open(_PATH).read().splitlines(True))
BM, BN = 128, 64
VARIANT = {}   # extra defines (flash_forward.cu's variant switches) for the kernels ours() compiles
_mods = {}
def kernel(D, bf16, nw, mt, qreg, bn=64, softcap=0, alibi=0):
    key = (D, bf16, nw, mt, qreg, bn, softcap, alibi, tuple(sorted(VARIANT.items())))
    if key not in _mods:
        opts = tuple(f'-D{k}={v}' for k, v in VARIANT.items()) + (f'-DHEAD_DIM={D}', f'-DELEM_BF16={int(bf16)}', f'-DNWARPS={nw}', f'-DMT={mt}', f'-DBLOCK_N={bn}', f'-DQREG={qreg}',
                f'-DSOFTCAP={softcap}', f'-DALIBI={alibi}', '--use_fast_math', '-arch=sm_90a', '-std=c++17')
        t0 = time.time()
        m = cp.RawModule(code=SRC, options=opts, backend='nvrtc')
        k = m.get_function('attend_flash_forward')
        smem = (16 * mt * nw * D + 4 * bn * D) * 2
        k.max_dynamic_shared_size_bytes = smem
        print(f'  compiled {VARIANT} D={D} bf16={bf16} nw={nw} mt={mt} qreg={qreg} bn={bn} sc={softcap} al={alibi}: {time.time()-t0:.2f}s regs={k.num_regs} local={k.local_size_bytes} smem={smem}', flush=True)
        _mods[key] = (k, smem)
    return _mods[key]

def visible(mask, qpos, kpos):
    kind = mask[0]
    if kind == 'full': return np.ones(np.broadcast(qpos, kpos).shape, bool)
    if kind == 'causal': return kpos <= qpos
    if kind == 'window': return (kpos >= qpos - mask[1]) & (kpos <= qpos + mask[2])
    raise ValueError(kind)

def plan(mask, tq, tk, BN=64, BM=128):
    nqb, nkb = (tq + BM - 1) // BM, (tk + BN - 1) // BN
    rowptr, items, bits = [0], [], []
    shift = tk - tq
    for qb in range(nqb):
        q = np.arange(qb * BM, qb * BM + BM)[:, None]
        lo, hi = 0, nkb
        if mask[0] == 'causal': hi = min(nkb, (qb * BM + BM - 1 + shift) // BN + 1)
        if mask[0] == 'window': lo, hi = max(0, (qb * BM + shift - mask[1]) // BN), min(nkb, (qb * BM + BM - 1 + shift + mask[2]) // BN + 1)
        for kb in range(lo, hi):
            k = np.arange(kb * BN, kb * BN + BN)[None, :]
            vis = visible(mask, q + shift, k) & (q < tq) & (k < tk)
            validq = (q < tq) & (k < tk)
            if not vis.any(): continue
            if vis[np.broadcast_to(validq, vis.shape)].all():
                items.append((kb, -1))
            else:
                w = (vis.astype(np.uint64) << np.arange(BN, dtype=np.uint64)[None, :]).sum(axis=1, dtype=np.uint64)
                items.append((kb, len(bits) // BM)); bits.extend(w.tolist())
        rowptr.append(len(items))
    if not items: items = [(0, -1)]
    if not bits: bits = [0]
    return (cp.asarray(np.array(rowptr, np.int32)), cp.asarray(np.array(items, np.int32)), cp.asarray(np.array(bits, np.uint64)), nqb)

def ours(q, k, v, mask, cfg, scale=None, softcap=None, slopes=None, lse_out=True, pl=None):
    B, tq, H, D = q.shape; tk, hkv = k.shape[1], k.shape[2]
    bf16 = q.dtype == torch.bfloat16
    kern, smem = kernel(D, bf16, *cfg[:3], bn=(cfg[3] if len(cfg) > 3 else 64), softcap=int(softcap is not None), alibi=int(slopes is not None))
    o = torch.full_like(q, float('nan'))
    lse = torch.full((B, H, tq), float('nan'), device='cuda', dtype=torch.float32)
    bn = cfg[3] if len(cfg) > 3 else 64
    bm = 16 * cfg[0] * cfg[1]
    rowptr, items, bits, nqb = pl[(bn, bm)] if pl is not None else plan(mask, tq, tk, bn, bm)
    seqs = cp.asarray(np.array([[b, 0, tq, 0, tk] for b in range(B)], np.int32))
    sl = cp.asarray(np.asarray(slopes if slopes is not None else [0.0], np.float32))
    c = lambda t: cp.asarray(t.view(torch.int16))
    args = (c(q), c(k), c(v), c(o), cp.asarray(lse), seqs, rowptr, items, bits, sl,
            np.int32(H), np.int32(hkv), np.int32(tq), np.int32(tk), np.int32(0), np.int32(1), np.int32(nqb),
            np.float32(scale if scale else 1 / math.sqrt(D)), np.float32(softcap or 1.0))
    grid = (H, nqb, B)
    nt = cfg[0] * 32
    def launch(): kern(grid, (nt,), args, shared_mem=smem)
    launch()
    return o, lse, launch

def reference(q, k, v, mask, scale=None, softcap=None, slopes=None):
    B, tq, H, D = q.shape; tk, hkv = k.shape[1], k.shape[2]
    g = H // hkv
    qd, kd, vd = (x.double().permute(0, 2, 1, 3) for x in (q, k, v))
    kd = kd.repeat_interleave(g, 1); vd = vd.repeat_interleave(g, 1)
    s = (qd @ kd.transpose(-1, -2)) * (scale or 1 / math.sqrt(D))
    if softcap: s = softcap * torch.tanh(s / softcap)
    qpos = torch.arange(tq, device='cuda')[:, None] + tk - tq; kpos = torch.arange(tk, device='cuda')[None, :]
    if slopes is not None: s = s - torch.tensor(slopes, device='cuda', dtype=torch.float64)[None, :, None, None] * (qpos - kpos).abs()
    vis = torch.as_tensor(visible(mask, qpos.cpu().numpy(), kpos.cpu().numpy()), device='cuda')
    s = s.masked_fill(~vis, float('-inf'))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    o = (p @ vd).permute(0, 2, 1, 3)
    return o, lse

def relerr(a, b):
    return ((a.double() - b).norm() / b.norm()).item()

def check(name, B, tq, tk, H, hkv, D, dtype, mask, cfg, **mods):
    torch.manual_seed(hash((name, B, tq, tk, H, D)) & 0xffff)
    q = torch.randn(B, tq, H, D, device='cuda', dtype=dtype)
    k = torch.randn(B, tk, hkv, D, device='cuda', dtype=dtype)
    v = torch.randn(B, tk, hkv, D, device='cuda', dtype=dtype)
    o, lse, _ = ours(q, k, v, mask, cfg, **mods)
    torch.cuda.synchronize()
    ro, rl = reference(q, k, v, mask, **mods)
    fin = torch.isfinite(rl)
    e = relerr(o, ro); nan = torch.isnan(o).any().item()
    lerr = (lse[fin].double() - rl[fin]).abs().max().item() if fin.any() else 0.0
    lse_ok = bool(((lse == float('-inf')) == ~fin).all().item())
    ok = e <= 1e-2 and not nan and lerr < 2e-2 and lse_ok
    print(f'  {"ok  " if ok else "FAIL"} {name}: B={B} Tq={tq} Tk={tk} H={H}/{hkv} D={D} {str(dtype)[6:]} {mask} cfg={cfg} rel={e:.2e} lse_err={lerr:.1e} lse_inf_ok={lse_ok} nan={nan}', flush=True)
    return ok

def bench_ms(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts[-1] - ts[0]

def main():
    print('device:', torch.cuda.get_device_name(), 'torch', torch.__version__, flush=True)
    allok = True
    off = dict(MASK32=0, WSKIP=0, RSKIP=0, CSKIP=0, MMA_NOVOLATILE=0, SEPI=0)
    variants = {'v2': off, 'f2': {**off, 'MASK32': 1, 'WSKIP': 1}, 'f2+nv': {**off, 'MASK32': 1, 'WSKIP': 1, 'MMA_NOVOLATILE': 1},
                'f2+sepi': {**off, 'MASK32': 1, 'WSKIP': 1, 'SEPI': 1}, 'f2+nv+sepi': {**off, 'MASK32': 1, 'WSKIP': 1, 'MMA_NOVOLATILE': 1, 'SEPI': 1}}
    for name, var in variants.items():
        VARIANT.clear(); VARIANT.update(var)
        print('variant', name, flush=True)
        cfg = (4, 2, 0)
        allok &= check('causal gqa', 2, 333, 333, 8, 2, 128, torch.bfloat16, ('causal',), cfg)
        allok &= check('full d64 f16', 1, 200, 517, 4, 4, 64, torch.float16, ('full',), (4, 2, 1))
        allok &= check('decode', 3, 1, 300, 8, 1, 128, torch.bfloat16, ('causal',), cfg)
        allok &= check('window empty rows', 1, 300, 100, 4, 2, 128, torch.bfloat16, ('window', 16, 0), cfg)
        allok &= check('window 100', 2, 700, 700, 4, 2, 128, torch.bfloat16, ('window', 100, 0), cfg)
        allok &= check('window 40 d64', 1, 500, 500, 4, 2, 64, torch.bfloat16, ('window', 40, 0), (4, 2, 1))
        allok &= check('softcap alibi', 1, 257, 257, 4, 2, 128, torch.bfloat16, ('causal',), cfg, softcap=5.0, slopes=[0.5, 0.25, 0.125, 0.0625])
        allok &= check('d256 window', 1, 390, 390, 2, 1, 256, torch.bfloat16, ('window', 70, 0), (8, 1, 0))
    print('ALL OK' if allok else 'SOME FAILED', flush=True)
    from torch.nn.attention import sdpa_kernel, SDPBackend
    import torch.nn.functional as F
    H, hkv = 64, 8
    rows = [(128, 16384, ('causal',)), (128, 32768, ('causal',)), (128, 32768, ('window', 1024, 0)),
            (128, 4096, ('causal',)), (64, 16384, ('causal',))]
    for D, T, mask in rows:
        torch.manual_seed(T)
        q = torch.randn(1, T, H, D, device='cuda', dtype=torch.bfloat16)
        k = torch.randn(1, T, hkv, D, device='cuda', dtype=torch.bfloat16)
        v = torch.randn(1, T, hkv, D, device='cuda', dtype=torch.bfloat16)
        if mask[0] == 'causal': pairs = T * (T + 1) / 2
        else: pairs = sum(min(i, mask[1]) + 1 for i in range(T))
        flops = 4 * H * D * pairs
        cfg = (4, 2, 1) if D == 64 else (4, 2, 0)
        pl = {(64, 128): plan(mask, T, T, 64, 128)}
        computed = int(pl[(64, 128)][1].shape[0]) * 64 * 128
        line = f'D={D} T={T} {mask[:2]} pairs/computed={pairs / computed:.3f}:'
        for name, var in variants.items():
            VARIANT.clear(); VARIANT.update(var)
            _, _, launch = ours(q, k, v, mask, cfg, pl=pl)
            ms, sp = bench_ms(launch)
            ms2, _ = bench_ms(launch)
            line += f' {name}={flops/ms/1e9:5.1f}|{flops/ms2/1e9:5.1f}'
        if mask[0] == 'causal':
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ms, sp = bench_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True))
                ms2, sp = bench_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True))
            line += f' sdpa-flash={flops/ms/1e9:5.1f}|{flops/ms2/1e9:5.1f}'
        print(line, flush=True)
        del q, k, v
        torch.cuda.empty_cache()

main()
