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
    p.add_argument("--bypass-hopper-guard", action="store_true",
                   help="let fla 0.5.2 run its gated chunk_bwd_dqkwg on Triton 3.4-3.7.0 on Hopper, which it refuses (fla #640: "
                        "'produces incorrect results'); use with --verify, which compares fla's output and gradients with a float32 "
                        "reference and leaves a method untimed when they disagree")
    p.add_argument("--verify", action="store_true",
                   help="before timing a method's forward+backward, compare fla's output and gradients with a float32 chunked "
                        "reference written here (torch autograd) on the same inputs, and print the relative L2 errors")
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


def make(kind, T, H, D, extra_override=None):
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.simple_gla import chunk_simple_gla
    from fla.ops.gla import chunk_gla
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    q, k, v, extra = inputs(T, H, D, kind)
    if extra_override is not None:
        extra = extra_override
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


def reference(kind, q, k, v, extra, scale, C=64):
    """The method's own recurrence in float32, chunk by chunk (C tokens), differentiable by torch autograd: an oracle for
    fla's gradients that shares no code with fla. Inside a chunk, b is the cumulative log decay (per token, or per key
    channel for GLA and KDA) and every decay e^{b_i - b_j} is formed from b directly (scalar gates) or as e^{b_i} e^{-b_j} (GLA, KDA:
    with this script's gates |b| stays below about 25 inside a chunk, far inside float32's range). The delta rules solve
    (I + L) delta = beta (v - e^b k S) with L_ij = beta_i e^{b_i - b_j} k_i.k_j (j < i), as the WY form does."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dev = q.device
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))  # [B, H, T, .]
    g = extra.get("g")
    if kind == "retnet":
        glog = extra["g_gamma"].float().view(1, H, 1).expand(B, H, T)
    elif kind in ("simple_gla", "gated_delta"):
        glog = g.float().transpose(1, 2)  # [B, H, T]
    elif kind in ("gla", "kda"):
        glog = g.float().transpose(1, 2)  # [B, H, T, K]
    else:
        glog = None
    beta = extra["beta"].float().transpose(1, 2) if kind in ("delta", "gated_delta", "kda") else None
    S = torch.zeros(B, H, K, V, device=dev, dtype=torch.float32)
    outs = []
    for c0 in range(0, T, C):
        c1 = min(T, c0 + C)
        L = c1 - c0
        qc, kc, vc = qf[:, :, c0:c1], kf[:, :, c0:c1], vf[:, :, c0:c1]
        causal = torch.ones(L, L, device=dev, dtype=torch.bool).tril()
        if kind == "gla":
            b = glog[:, :, c0:c1].cumsum(2)  # [B, H, L, K]
            bC = b[:, :, -1:]  # [B, H, 1, K]
            qt, kt = qc * b.exp(), kc * (-b).exp()
            A = (qt @ kt.transpose(-1, -2)).masked_fill(~causal, 0.0)
            o = scale * (qt @ S + A @ vc)
            S = bC.transpose(-1, -2).exp() * S + (kc * (bC - b).exp()).transpose(-1, -2) @ vc
        elif kind == "kda":
            # The delta rule with the gate per key channel: the same solve, every decay factored per channel.
            b = glog[:, :, c0:c1].cumsum(2)  # [B, H, L, K]
            bC = b[:, :, -1:]
            qt, kp, km = qc * b.exp(), kc * b.exp(), kc * (-b).exp()
            bet = beta[:, :, c0:c1]
            strict = torch.ones(L, L, device=dev, dtype=torch.bool).tril(-1)
            Lm = (bet[..., :, None] * (kp @ km.transpose(-1, -2))).masked_fill(~strict, 0.0)
            eye = torch.eye(L, device=dev, dtype=torch.float32)
            delta = torch.linalg.solve_triangular(eye + Lm, bet[..., None] * (vc - kp @ S), upper=False, unitriangular=True)
            A = (qt @ km.transpose(-1, -2)).masked_fill(~causal, 0.0)
            o = scale * (qt @ S + A @ delta)
            S = bC.transpose(-1, -2).exp() * S + (kc * (bC - b).exp()).transpose(-1, -2) @ delta
        else:
            b = glog[:, :, c0:c1].cumsum(2) if glog is not None else torch.zeros(B, H, L, device=dev)
            Dm = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # e^{b_i - b_j}, j <= i
            eb = b.exp()[..., None]
            if beta is None:
                A = (qc @ kc.transpose(-1, -2)) * Dm
                o = scale * (eb * (qc @ S) + A @ vc)
                S = b[..., -1:, None].exp() * S + (kc * (b[..., -1:] - b).exp()[..., None]).transpose(-1, -2) @ vc
            else:
                bet = beta[:, :, c0:c1]
                strict = torch.ones(L, L, device=dev, dtype=torch.bool).tril(-1)
                Lm = (bet[..., :, None] * Dm * (kc @ kc.transpose(-1, -2))).masked_fill(~strict, 0.0)
                eye = torch.eye(L, device=dev, dtype=torch.float32)
                rhs = bet[..., None] * (vc - eb * (kc @ S))
                delta = torch.linalg.solve_triangular(eye + Lm, rhs, upper=False, unitriangular=True)
                A = (qc @ kc.transpose(-1, -2)) * Dm
                o = scale * (eb * (qc @ S) + A @ delta)
                S = b[..., -1:, None].exp() * S + (kc * (b[..., -1:] - b).exp()[..., None]).transpose(-1, -2) @ delta
        outs.append(o)
    return torch.cat(outs, dim=2).transpose(1, 2)  # [B, T, H, V]


def recurrent(kind, q, k, v, extra, scale):
    """Token by token, float64: S_t = decay_t S_{t-1} + update; o_t = scale q_t S_t. Only for `selftest`."""
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64, device=q.device)
    out = []
    for t in range(T):
        qt, kt, vt = (x[:, t].double() for x in (q, k, v))  # [B, H, .]
        if kind == "retnet":
            S = extra["g_gamma"].double().exp().view(1, H, 1, 1) * S
        elif kind in ("simple_gla", "gated_delta"):
            S = extra["g"][:, t].double().exp()[..., None, None] * S
        elif kind in ("gla", "kda"):
            S = extra["g"][:, t].double().exp()[..., None] * S
        if kind in ("delta", "gated_delta", "kda"):
            bt = extra["beta"][:, t].double()[..., None]
            delta = bt * (vt - (kt[..., None, :] @ S).squeeze(-2))
            S = S + kt[..., :, None] * delta[..., None, :]
        else:
            S = S + kt[..., :, None] * vt[..., None, :]
        out.append(scale * (qt[..., None, :] @ S).squeeze(-2))
    return torch.stack(out, dim=1)


def selftest(device="cuda"):
    """The chunked reference against the token recurrence on small random inputs (T not a multiple of the chunk)."""
    worst = 0.0
    for kind in ("linear_attn", "retnet", "simple_gla", "gla", "delta", "gated_delta", "kda"):
        q, k, v, extra = inputs(150, 2, 32, kind, device=device)
        e = rel_l2(reference(kind, q, k, v, extra, 32 ** -0.5, C=64), recurrent(kind, q, k, v, extra, 32 ** -0.5))
        print(f"  reference selftest {kind}: chunked vs token recurrence, relative L2 {e:.1e}", flush=True)
        worst = max(worst, e)
    if worst > 1e-4:
        raise RuntimeError(f"the reference disagrees with the recurrence ({worst:.1e}): verify results are void")


def rel_l2(a, e):
    a, e = a.float(), e.float()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


VERIFY_TOLERANCE = 2e-2  # relative L2 of bf16 results against float32; bf16 rounding alone gives about 2e-3 to 5e-3


def verify(kind, T, H, D):
    """fla's output and gradients (dq, dk, dv, and dg and dbeta where the method has them) against `reference` on the
    inputs the timing uses. The reference runs on float32 copies of the same rounded inputs, so its gradients are
    float32 too. Prints the relative L2 errors and returns them with "ok": every one finite and within
    VERIFY_TOLERANCE; a method that fails is not timed."""
    fn, q, k, v, extra = make(kind, T, H, D)
    names = ["q", "k", "v"] + [n for n in ("g", "beta") if n in extra]
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    extra_fla = dict(extra)
    for n in ("g", "beta"):
        if n in extra:
            extra_fla[n] = extra[n].detach().clone().requires_grad_(True)
            leaves.append(extra_fla[n])
    torch.manual_seed(1)
    do = torch.randn_like(v)
    fn_fla, *_ = make(kind, T, H, D, extra_override=extra_fla)
    o = fn_fla(*leaves[:3])
    grads = torch.autograd.grad(o, leaves, do)
    ref_leaves = [x.detach().float().requires_grad_(True) for x in (q, k, v)]
    extra_ref = dict(extra)
    for n in ("g", "beta"):
        if n in extra:
            extra_ref[n] = extra[n].detach().float().requires_grad_(True)
            ref_leaves.append(extra_ref[n])
    o_ref = reference(kind, *ref_leaves[:3], extra_ref, D ** -0.5)
    ref_grads = torch.autograd.grad(o_ref, ref_leaves, do.float())
    errs = {"o": rel_l2(o, o_ref)}
    for n, a, e in zip(names, grads, ref_grads):
        errs["d" + n] = rel_l2(a, e)
    finite = all(torch.isfinite(x).all().item() for x in (o, *grads))
    ok = finite and all(e <= VERIFY_TOLERANCE for e in errs.values())
    print(f"  fla {kind}: verify against the float32 reference, relative L2: "
          + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()) + ("" if finite else "  NON-FINITE VALUES")
          + ("" if ok else f"  FAILED (tolerance {VERIFY_TOLERANCE:g}): not timed"), flush=True)
    del o, grads, o_ref, ref_grads
    torch.cuda.empty_cache()
    return dict(errs, ok=ok)


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
    if a.bypass_hopper_guard:
        import fla.ops.common.chunk_o as chunk_o
        chunk_o.TRITON_ABOVE_3_7_1 = True
        print("fla's Hopper guard for gated chunk_bwd_dqkwg bypassed (fla #640): its gradients are verified below", flush=True)
    if a.verify:
        selftest()
    start = time.time()
    kinds = a.methods.split(",")
    verified = {}
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
        if a.verify:
            try:
                verified[kind] = verify(kind, a.T, a.H, a.D)
            except Exception as e:  # noqa: BLE001
                print(f"  fla {kind}: verify FAILED {type(e).__name__}: {e}: not timed", flush=True)
                verified[kind] = {"ok": False}
            torch.cuda.empty_cache()
            if not verified[kind]["ok"]:
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
                    "ours_fwd_bwd_mtok_s": mine_fb, "ratio_fwd_bwd": ratio_fb, "fla_rel_l2_vs_reference": verified.get(kind),
                    "fla_guard_bypassed": a.bypass_hopper_guard})
    print("ours fwd+bwd: the CUDA chunked backward covers linear_attn, retnet, simple_gla, gla (with the gate's gradient), delta and gated_delta (with dβ and the gate's gradient)")
    print("JSON " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
