"""Peer timings for `attend bench linear --backend cuda`: flash-linear-attention's (fla) Triton chunk kernels at the
issue's shape (bf16, B = 1, H = 16, D = 128, T = 16k by default), forward and forward+backward, timed with CUDA events
(triton.testing.do_bench, median, after warm-up and autotune), next to our numbers read from the JSON that
`attend bench linear --backend cuda --json FILE` wrote in the same run. Prints one table: ours vs theirs in M tokens/s
and the ratio. fla is not installed on the GPU machine: run with PYTHONPATH pointing at a copy of its `fla` package.

Usage: python3 linear_peers.py [--ours FILE] [--T 16384] [--H 16] [--D 128]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", default=None, help="JSON of attend bench linear --backend cuda")
    p.add_argument("--T", type=int, default=16384)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--warmup", type=int, default=100, help="ms")
    p.add_argument("--rep", type=int, default=400, help="ms")
    p.add_argument("--methods", default="linear_attn,retnet,simple_gla,gla,delta,gated_delta")
    p.add_argument("--skip-forward", action="store_true", help="time only forward+backward (fla's forwards were timed in an earlier call)")
    p.add_argument("--budget", type=float, default=1e9, help="seconds: forward+backward timings start only while this much time is left")
    p.add_argument("--autotune-ms", default=None,
                   help="W,R: fla's Triton autotuner times each config with warmup W ms and rep R ms instead of 25,100 "
                        "(every config is still tried; only the selection's timing is shorter)")
    return p.parse_args()


def shorten_autotune(warmup, rep):
    """Wraps triton.autotune (before fla is imported) so each candidate config is timed for `rep` ms, not 100 ms.
    fla's backward kernels carry many configs each; at the defaults their autotuning took minutes of device time."""
    import triton.runtime.autotuner as at
    original = at.autotune

    def autotune(*args, **kwargs):
        kwargs.setdefault("warmup", warmup)
        kwargs.setdefault("rep", rep)
        return original(*args, **kwargs)
    at.autotune = autotune
    triton.autotune = autotune


def inputs(T, H, D, kind, device="cuda"):
    torch.manual_seed(0)
    B = 1
    q = torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16)
    k = torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16)
    v = torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16)
    extra = {}
    if kind in ("simple_gla", "gated_delta"):
        extra["g"] = (F.logsigmoid(torch.randn(B, T, H, device=device)) / 16).float()
    if kind in ("gla", "kda"):
        extra["g"] = (F.logsigmoid(torch.randn(B, T, H, D, device=device)) / 16).float()
    if kind in ("delta", "gated_delta", "kda"):
        k = F.normalize(k.float(), p=2, dim=-1).to(torch.bfloat16)
        extra["beta"] = torch.rand(B, T, H, device=device, dtype=torch.bfloat16).sigmoid()
    if kind == "retnet":
        extra["g_gamma"] = torch.log(1 - torch.pow(2.0, -5.0 - 0.5 * torch.arange(H, device=device, dtype=torch.float32)))
    return q, k, v, extra


def make(kind, T, H, D):
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.simple_gla import chunk_simple_gla
    from fla.ops.gla import chunk_gla
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    q, k, v, extra = inputs(T, H, D, kind)
    scale = D ** -0.5
    if kind == "linear_attn":
        fn = lambda q, k, v: chunk_linear_attn(q, k, v, scale=scale, normalize=False)[0]
    elif kind == "retnet":
        fn = lambda q, k, v: chunk_simple_gla(q, k, v, g_gamma=extra["g_gamma"], scale=scale)[0]
    elif kind == "simple_gla":
        fn = lambda q, k, v: chunk_simple_gla(q, k, v, g=extra["g"], scale=scale)[0]
    elif kind == "gla":
        fn = lambda q, k, v: chunk_gla(q, k, v, g=extra["g"], scale=scale)[0]
    elif kind == "delta":
        fn = lambda q, k, v: chunk_delta_rule(q, k, v, beta=extra["beta"], scale=scale)[0]
    elif kind == "gated_delta":
        fn = lambda q, k, v: chunk_gated_delta_rule(q, k, v, g=extra["g"], beta=extra["beta"], scale=scale)[0]
    elif kind == "kda":
        # Kimi Delta Attention: the gate per key channel [B, T, H, D] (log α, given directly: no in-kernel gate projection).
        from fla.ops.kda import chunk_kda
        fn = lambda q, k, v: chunk_kda(q, k, v, g=extra["g"], beta=extra["beta"], scale=scale)[0]
    else:
        raise ValueError(kind)
    return fn, q, k, v, extra


def time_fwd(kind, T, H, D, warmup, rep):
    fn, q, k, v, _ = make(kind, T, H, D)
    with torch.no_grad():
        return triton.testing.do_bench(lambda: fn(q, k, v), warmup=warmup, rep=rep, return_mode="median")


def time_fwd_bwd(kind, T, H, D, warmup, rep):
    fn, q, k, v, extra = make(kind, T, H, D)
    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    grads = [qg, kg, vg]
    if "g" in extra:
        # The gate's gradient too (ours computes d log gate for simple GLA and GLA): the lambda reads extra["g"].
        extra["g"].requires_grad_(True)
        grads.append(extra["g"])
    do = torch.randn_like(v)

    def step():
        o = fn(qg, kg, vg)
        o.backward(do)
    return triton.testing.do_bench(step, warmup=warmup, rep=rep, grad_to_none=grads, return_mode="median")


def main():
    a = parse()
    ours, ours_fb = {}, {}
    if a.ours and os.path.exists(a.ours):
        with open(a.ours) as f:
            data = json.load(f)
        for r in data["results"]:
            if r["form"] == "chunked" and r["T"] == a.T and r.get("tokens_per_s"):
                ours[r["method"]] = r["tokens_per_s"]
            if r["form"] == "fwd+bwd" and r["T"] == a.T and r.get("tokens_per_s"):
                ours_fb[r["method"]] = r["tokens_per_s"]
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    if a.autotune_ms:
        w, r = (int(x) for x in a.autotune_ms.split(","))
        shorten_autotune(w, r)
        print(f"fla autotune: each config timed with warmup {w} ms, rep {r} ms", flush=True)
    try:
        import fla
        print(f"fla {getattr(fla, '__version__', '?')} from {fla.__file__}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"fla import failed: {e!r}")
        return 2
    start = time.time()
    kinds = a.methods.split(",")
    fwds, fbs = {}, {}
    # All forwards first (autotuning fla's forward kernels is the quicker part), then forward+backward while time is left.
    for kind in ([] if a.skip_forward else kinds):
        try:
            fwds[kind] = time_fwd(kind, a.T, a.H, a.D, a.warmup, a.rep)
            print(f"  fla {kind}: forward {fwds[kind]:.3f} ms ({time.time() - start:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  fla {kind}: forward FAILED {type(e).__name__}: {e}", flush=True)
        torch.cuda.empty_cache()
    for kind in kinds:
        if time.time() - start > a.budget:
            print(f"  fla {kind}: forward+backward not timed (time budget {a.budget:.0f} s spent)", flush=True)
            continue
        try:
            fbs[kind] = time_fwd_bwd(kind, a.T, a.H, a.D, a.warmup, a.rep)
            print(f"  fla {kind}: forward+backward {fbs[kind]:.3f} ms ({time.time() - start:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  fla {kind}: forward+backward FAILED {type(e).__name__}: {e}", flush=True)
        torch.cuda.empty_cache()
    rows = [(kind, fwds.get(kind), fbs.get(kind)) for kind in kinds]
    T = a.T
    print()
    print(f"bf16, B = 1, H = {a.H}, D = {a.D}, T = {T}; M tokens/s = T / median time (CUDA events)")
    print(f"{'method':<12} {'fla fwd':>9} {'fla fwd+bwd':>12} {'ours fwd':>9} {'ours/fla fwd':>13} {'ours fwd+bwd':>13} {'ours/fla f+b':>13}")
    out = []
    for kind, fwd, fb in rows:
        theirs = T / (fwd / 1e3) / 1e6 if fwd else None
        theirs_fb = T / (fb / 1e3) / 1e6 if fb else None
        mine = ours.get(kind)
        mine_m = mine / 1e6 if mine else None
        ratio = (mine_m / theirs) if (mine_m and theirs) else None
        mine_fb = ours_fb.get(kind) / 1e6 if ours_fb.get(kind) else None
        ratio_fb = (mine_fb / theirs_fb) if (mine_fb and theirs_fb) else None
        f = lambda x, w, p=1: (f"{x:{w}.{p}f}" if x is not None else f"{'-':>{w}}")
        print(f"{kind:<12} {f(theirs, 9)} {f(theirs_fb, 12)} {f(mine_m, 9)} {f(ratio, 13, 2)} {f(mine_fb, 13)} {f(ratio_fb, 13, 2)}")
        out.append({"method": kind, "T": T, "H": a.H, "D": a.D, "fla_fwd_ms": fwd, "fla_fwd_bwd_ms": fb,
                    "fla_fwd_mtok_s": theirs, "fla_fwd_bwd_mtok_s": theirs_fb, "ours_fwd_mtok_s": mine_m, "ratio_fwd": ratio,
                    "ours_fwd_bwd_mtok_s": mine_fb, "ratio_fwd_bwd": ratio_fb})
    print("ours fwd+bwd: the CUDA chunked backward covers linear_attn, retnet, simple_gla, gla (with the gate's gradient), delta and gated_delta (with dβ and the gate's gradient)")
    print("JSON " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
