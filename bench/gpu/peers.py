# PyTorch peers for bench/gpu/run.sh: times SDPA with each backend forced (flash, cuDNN, memory-efficient) and compiled
# flex_attention on the shapes `attend bench --backend cuda` ran (read from its JSON), with CUDA events (median of
# repeated runs after warm-up, random inputs), and prints one table: ours, theirs, ratio. Before that, the error check
# on the same inputs: q, k, v are written as .npy, `attend run --backend cuda` computes ours, SDPA computes theirs, and
# both are compared with a float64 reference (the bar: ours <= 1e-2 and <= 2x SDPA flash's error).
import argparse, json, math, os, subprocess, sys, warnings
import numpy as np, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
warnings.filterwarnings('ignore')
torch.backends.cuda.matmul.allow_tf32 = False

ap = argparse.ArgumentParser()
ap.add_argument('--ours', required=True); ap.add_argument('--attend', required=True); ap.add_argument('--out', required=True)
ap.add_argument('--quick', action='store_true')
args = ap.parse_args()
BACKENDS = (('flash', SDPBackend.FLASH_ATTENTION), ('cudnn', SDPBackend.CUDNN_ATTENTION), ('efficient', SDPBackend.EFFICIENT_ATTENTION))

def mask_dense(spec, T, device='cuda'):
    q = torch.arange(T, device=device)[:, None]; k = torch.arange(T, device=device)[None, :]
    vis = torch.ones(T, T, dtype=torch.bool, device=device)
    for term in spec.split('+'):
        name, _, arg = term.partition(':')
        if name == 'full': continue
        if name == 'causal': vis &= k <= q
        elif name == 'window':
            l, r = arg.split(','); vis &= (k >= q - int(l)) & (k <= q + int(r))
        elif name == 'blockcausal': vis &= (k // int(arg)) <= (q // int(arg))
        elif name == 'doc':
            offs = [int(x) for x in arg.split(',')]; doc = torch.zeros(T, dtype=torch.long, device=device)
            for i in range(1, len(offs) - 1): doc[offs[i]:] += 1
            vis &= doc[:, None] == doc[None, :]
        else: raise ValueError(term)
    return vis

def mask_mod(spec, T):
    terms = []
    for term in spec.split('+'):
        name, _, arg = term.partition(':')
        if name == 'causal': terms.append(lambda b, h, q, k: k <= q)
        elif name == 'window':
            l, r = (int(x) for x in arg.split(','))
            terms.append(lambda b, h, q, k, l=l, r=r: (k >= q - l) & (k <= q + r))
        elif name == 'blockcausal':
            c = int(arg); terms.append(lambda b, h, q, k, c=c: (k // c) <= (q // c))
        elif name == 'doc':
            offs = [int(x) for x in arg.split(',')]; doc = torch.zeros(T, dtype=torch.long, device='cuda')
            for i in range(1, len(offs) - 1): doc[offs[i]:] += 1
            terms.append(lambda b, h, q, k, doc=doc: doc[q] == doc[k])
    def m(b, h, q, k):
        r = terms[0](b, h, q, k)
        for t in terms[1:]: r = r & t(b, h, q, k)
        return r
    return m

def bench_ms(fn, min_ms=1000.0, reps=10):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts, total = [], 0.0
    while len(ts) < reps or (total < min_ms and len(ts) < 200):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); t = a.elapsed_time(b); ts.append(t); total += t
    ts.sort()
    return ts[len(ts) // 2], ts[-1] - ts[0]

def sdpa(q, k, v, spec, be):
    # q, k, v as [B, H, T, D]; the fused backends take GQA only through enable_gqa where they support it, else repeated heads.
    T = q.shape[2]
    causal = spec == 'causal'
    attn_mask = None if spec in ('full', 'causal') else mask_dense(spec, T)
    def call(kk, vv, gqa):
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, kk, vv, attn_mask=attn_mask, is_causal=causal, enable_gqa=gqa)
    try:
        call(k, v, True); torch.cuda.synchronize(); return (lambda: call(k, v, True)), ''
    except Exception:
        g = q.shape[1] // k.shape[1]
        kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        call(kr, vr, False); torch.cuda.synchronize(); return (lambda: call(kr, vr, False)), ' (K/V heads repeated)'

# ---- 1. error on the same inputs: ours through `attend run --backend cuda`, SDPA backends, float64 reference ----
print('-- error vs float64 reference on the same bf16 inputs (relative L2 over the whole output)')
err_ok = True
for (T, H, Hkv, D, spec) in ((1023, 16, 4, 128, 'causal'), (777, 8, 8, 64, 'full'), (2048, 16, 2, 128, 'causal')):
    torch.manual_seed(T * 7 + D)
    q = torch.randn(1, T, H, D, device='cuda').bfloat16(); k = torch.randn(1, T, Hkv, D, device='cuda').bfloat16(); v = torch.randn(1, T, Hkv, D, device='cuda').bfloat16()
    d = '/tmp/attend-errcase'; os.makedirs(d, exist_ok=True)
    for name, t in (('q', q), ('k', k), ('v', v)): np.save(f'{d}/{name}.npy', t.float().cpu().numpy())
    cmd = [args.attend, 'run', '--backend', 'cuda', '--q', f'{d}/q.npy', '--k', f'{d}/k.npy', '--v', f'{d}/v.npy', '--out', f'{d}/o.npy'] + ([] if spec == 'full' else ['--mask', spec])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print('  attend run failed:', r.stdout, r.stderr); err_ok = False; continue
    ours = torch.from_numpy(np.load(f'{d}/o.npy')).cuda().double()
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    g = H // Hkv; kd = kd.repeat_interleave(g, 1); vd = vd.repeat_interleave(g, 1)
    s = (qd @ kd.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(~mask_dense(spec, T), float('-inf'))
    ref = (torch.softmax(s, -1) @ vd).transpose(1, 2)
    rel = lambda o: ((o.double() - ref).norm() / ref.norm()).item()
    line = f'  T={T} H={H}/{Hkv} D={D} {spec:7s} ours={rel(ours):.2e}'
    theirs = {}
    for name, be in BACKENDS:
        try:
            fn, _ = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), spec, be)
            theirs[name] = rel(fn().transpose(1, 2)); line += f' sdpa-{name}={theirs[name]:.2e}'
        except Exception as e:
            line += f' sdpa-{name}=n/a'
    base = theirs.get('flash') or min(theirs.values())
    ok = rel(ours) <= 1e-2 and rel(ours) <= 2 * base
    err_ok &= ok
    print(line + f'  ours/flash={rel(ours) / base:.2f}  {"ok" if ok else "FAIL"}')

# ---- 2. speed on the bench shapes ----
ours = json.load(open(args.ours))
print(f"-- speed: {ours['device']}; ceilings: cuBLAS bf16 {ours['gemm_tflops']:.0f} TFLOP/s, copy {ours['copy_gbps']:.0f} GB/s; NVRTC {ours['compile_seconds']:.1f} s (apart)")
flex = None
try:
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    flex = torch.compile(flex_attention, dynamic=False)
except Exception as e:
    print('flex_attention unavailable:', e)
rows, decode_rows, backward_rows = [], [], []
for r in ours['results']:
    if r.get('kind') == 'decode':
        decode_rows.append(r); continue
    if r.get('kind') == 'backward':
        backward_rows.append(r); continue
    if not r['passed']:
        rows.append((r, {}, 'ours FAILED')); continue
    T, H, Hkv, D, spec = r['tokens'], r['heads'], r['kv_heads'], r['dim'], r['mask']
    torch.manual_seed(T)
    q = torch.randn(1, H, T, D, device='cuda', dtype=torch.bfloat16); k = torch.randn(1, Hkv, T, D, device='cuda', dtype=torch.bfloat16); v = torch.randn(1, Hkv, T, D, device='cuda', dtype=torch.bfloat16)
    pairs = int(mask_dense(spec, T).sum().item()) if T <= 32768 else None
    flops = 4 * H * D * pairs
    res, note = {}, ''
    for name, be in BACKENDS:
        if spec not in ('full', 'causal') and name == 'flash':
            continue  # the flash backend takes no arbitrary mask
        try:
            fn, n = sdpa(q, k, v, spec, be); ms, sp = bench_ms(fn); res[name] = flops / ms / 1e9; note += (' efficient: K/V heads repeated' if n and name == 'efficient' else '')
        except Exception as e:
            res[name] = None
        torch.cuda.empty_cache()
    masked = spec != 'full'
    if flex is not None and masked and (T == 16384 or spec.startswith('window')) and not os.environ.get('PEERS_NO_FLEX'):
        try:
            bm = create_block_mask(mask_mod(spec, T), None, None, T, T, device='cuda')
            fn = lambda: flex(q, k, v, block_mask=bm, enable_gqa=(H != Hkv))
            ms, sp = bench_ms(fn); res['flex'] = flops / ms / 1e9
        except Exception as e:
            res['flex'] = None; note += f' flex: {type(e).__name__}'
    rows.append((r, res, note))

hdr = f"{'case':22s} {'T':>6s} {'H':>6s} {'D':>4s} {'ours':>7s} {'flash':>7s} {'cuDNN':>7s} {'effic.':>7s} {'flex':>7s} {'/flash':>7s} {'/cuDNN':>7s} {'/flex':>7s}"
print('\nTFLOP/s (forward, bf16, effective FLOPs = 4*H*D*visible pairs; CUDA events, median)')
print(hdr); print('-' * len(hdr))
f = lambda x: f'{x:7.1f}' if x else '    n/a'
ratio = lambda a, b: f'{a / b:7.2f}' if a and b else '    n/a'
for r, res, note in rows:
    o = r.get('tflops') if r['passed'] else None
    print(f"{r['name']:22s} {r['tokens']:6d} {str(r['heads'])+'/'+str(r['kv_heads']):>6s} {r['dim']:4d} {f(o)} {f(res.get('flash'))} {f(res.get('cudnn'))} {f(res.get('efficient'))} {f(res.get('flex'))} "
          f"{ratio(o, res.get('flash'))} {ratio(o, res.get('cudnn'))} {ratio(o, res.get('flex'))}{note}")
# ---- 2b. backward (causal): SDPA's backward alone (graph kept, retain_graph), CUDA events ----
bwd = []
if backward_rows:
    print('\nBackward TFLOP/s (causal, 2.5 x forward FLOPs)')
    print(f"{'T':>6s} {'H':>5s} {'D':>4s} {'ours':>7s} {'flash':>7s} {'cuDNN':>7s} {'/flash':>7s} {'/cuDNN':>7s}")
for r in backward_rows:
    T, H, Hkv, D = r['tokens'], r['heads'], r['kv_heads'], r['dim']
    flops = 2.5 * 4 * H * D * (T * (T + 1) / 2)
    res = {}
    for name, be in BACKENDS[:2]:
        try:
            q = torch.randn(1, H, T, D, device='cuda', dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(1, Hkv, T, D, device='cuda', dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(1, Hkv, T, D, device='cuda', dtype=torch.bfloat16, requires_grad=True)
            with sdpa_kernel(be):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            g = torch.randn_like(out)
            ms, sp = bench_ms(lambda: out.backward(g, retain_graph=True), min_ms=300)
            res[name] = flops / ms / 1e9
        except Exception as e:
            res[name] = None
        torch.cuda.empty_cache()
    o = r['tflops'] if r['passed'] else None
    print(f"{T:6d} {str(H)+'/'+str(Hkv):>5s} {D:4d} {f(o)} {f(res.get('flash'))} {f(res.get('cudnn'))} {ratio(o, res.get('flash'))} {ratio(o, res.get('cudnn'))}  {r['name']}")
    bwd.append({'ours': r, 'peers': res})

# ---- 3. decode: one query token per sequence against the cache; bytes of K+V read per second ----
dec = []
if decode_rows:
    print('\nDecode GB/s (K+V bytes read / time; ours from a shuffled paged cache, SDPA from contiguous K/V)')
    print(f"{'cache':>7s} {'B':>2s} {'H':>5s} {'ours':>7s} {'flash':>7s} {'cuDNN':>7s} {'effic.':>7s} {'/best':>7s}")
for r in decode_rows:
    B, T, H, Hkv, D = r['batch'], r['tokens'], r['heads'], r['kv_heads'], r['dim']
    q = torch.randn(B, H, 1, D, device='cuda', dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, T, D, device='cuda', dtype=torch.bfloat16); v = torch.randn(B, Hkv, T, D, device='cuda', dtype=torch.bfloat16)
    nbytes = 2 * B * T * Hkv * D * 2
    res = {}
    for name, be in BACKENDS:
        try:
            fn, n = sdpa(q, k, v, 'full', be)
            if n: res[name] = None; continue  # a repeated-heads peer would read 4x the bytes: not comparable
            ms, sp = bench_ms(fn, min_ms=300); res[name] = nbytes / ms / 1e6
        except Exception:
            res[name] = None
    del k, v; torch.cuda.empty_cache()
    o = r['gbps'] if r['passed'] else None
    best = max([x for x in res.values() if x] or [0])
    print(f"{T:7d} {B:2d} {str(H)+'/'+str(Hkv):>5s} {f(o)} {f(res.get('flash'))} {f(res.get('cudnn'))} {f(res.get('efficient'))} {ratio(o, best)}")
    dec.append({'ours': r, 'peers_gbps': res})
json.dump({'forward': [{'ours': r, 'peers': res, 'note': note} for r, res, note in rows], 'backward': bwd, 'decode': dec}, open(os.path.join(args.out, 'table.json'), 'w'), indent=1)
sys.exit(0 if err_ok else 1)
