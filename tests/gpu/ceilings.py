#!/usr/bin/env python3
"""tests/gpu/ceilings.py - the measured limits of this GPU that dstrain's step is judged
against, through PyTorch (the device image has it; nothing of dstrain is needed):

  copy       device-to-device copy rate (bytes read + written per second)
  gemm       BF16 GEMMs at the exact Linear shapes of a config's step (forward, input and
             weight gradient of every projection), and the sum over one step: the GEMM floor
  grouped    the routed experts' GEMMs: n_routed_experts groups of tokens*top_k/experts rows,
             as one grouped GEMM (torch._grouped_mm where this torch has it) and as a loop
  attention  fused causal attention at the config's head dims (d_qk = nope + rope, d_v),
             forward and forward+backward, per SDPA backend (cuDNN first)
  fp8        FP8 E4M3 GEMM with DeepSeek-V3's scaling (activations 1x128, weights 128x128)
             through torch._scaled_mm, where this torch and card accept it; per-tensor as well

Usage: python3 tests/gpu/ceilings.py CONFIG.toml [--reps N]
Prints a line per measurement and one "CEILING {json}" line each for scripts; without CUDA
or torch: "SKIP: ..." and exit 77. Timing: CUDA events around each call after warm-up, the
median of --reps (default 20), inputs random normal (never zeros), several input sets in
rotation where one set would fit in L2.
"""
import json
import math
import statistics
import sys


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


try:
    import tomllib
except ImportError:
    skip("needs Python 3.11+ (tomllib)")
try:
    import torch
    import torch.nn.functional as F
except ImportError:
    skip("no torch in this python")
if not torch.cuda.is_available():
    skip("no CUDA GPU visible to torch")

DEV = "cuda"
BF16 = torch.bfloat16


def timed(fn, reps, warmup=3):
    """Median seconds of fn() over reps calls, CUDA events around each."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def report(kind, name, seconds, **fig):
    fig.update(kind=kind, name=name, ms=round(seconds * 1e3, 4))
    text = ", ".join("%s %s" % (k, v) for k, v in fig.items() if k not in ("kind", "name"))
    print("%-10s %-44s %s" % (kind, name, text))
    print("CEILING " + json.dumps(fig))


def rotating(make, nbytes):
    """Enough input sets that the rotation does not stay in L2 (at least 4x L2 in all)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    n = max(1, min(8, math.ceil(4 * l2 / max(nbytes, 1))))
    sets = [make() for _ in range(n)]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % n
        return sets[state["i"]]
    return nxt


def copy_rate(reps):
    n = 1 << 30                                  # 2 GiB of BF16 each way
    src = torch.randn(n, device=DEV, dtype=BF16)
    dst = torch.empty_like(src)
    s = timed(lambda: dst.copy_(src), reps)
    report("copy", "device-to-device 2 GiB", s, TB_per_s=round(2 * src.numel() * 2 / s / 1e12, 3))
    del src, dst


def linears(m, tokens):
    """(name, rows, in, out, count per step) of every Linear of one step of the config."""
    h, H = m["hidden_size"], m["num_attention_heads"]
    dqk, dv = m["qk_nope_head_dim"] + m["qk_rope_head_dim"], m["v_head_dim"]
    layers, dense = m["num_hidden_layers"], m["first_k_dense_replace"]
    mtp = m.get("num_nextn_predict_layers", 0)
    att = layers + mtp
    out = []
    if m.get("q_lora_rank"):
        out += [("q_a", tokens, h, m["q_lora_rank"], att), ("q_b", tokens, m["q_lora_rank"], H * dqk, att)]
    else:
        out += [("q", tokens, h, H * dqk, att)]
    r = m["kv_lora_rank"]
    out += [("kv_a", tokens, h, r, att), ("kv_a rope", tokens, h, m["qk_rope_head_dim"], att),
            ("kv_b", tokens, r, H * (m["qk_nope_head_dim"] + dv), att), ("o", tokens, H * dv, h, att)]
    if dense:
        out += [("dense gate+up", tokens, h, 2 * m["intermediate_size"], dense),
                ("dense down", tokens, m["intermediate_size"], h, dense)]
    moe = layers - dense + mtp                   # the MTP block's FFN is an MoE layer in V3
    shared = m.get("n_shared_experts", 0) * m["moe_intermediate_size"]
    if shared and moe:
        out += [("shared gate+up", tokens, h, 2 * shared, moe), ("shared down", tokens, shared, h, moe)]
    if moe:
        out += [("router", tokens, h, m["n_routed_experts"], moe)]
    if mtp:
        out += [("mtp proj", tokens, 2 * h, h, mtp)]
    out += [("lm head", tokens, h, m["vocab_size"], 1 + mtp)]
    return out


def gemm_shapes(m, tokens, reps):
    """Each Linear's three GEMMs (y = x W^T, dx = dy W, dW = dy^T x); the step's sum."""
    total_s = total_f = 0.0
    for name, n, ic, oc, count in linears(m, tokens):
        flops = 2.0 * n * ic * oc
        for what, (a_shape, b_shape, tb) in {
            "fwd": ((n, ic), (oc, ic), True), "dgrad": ((n, oc), (oc, ic), False),
            "wgrad": ((oc, n), (n, ic), False)}.items():
            nxt = rotating(lambda: (torch.randn(*a_shape, device=DEV, dtype=BF16),
                                    torch.randn(*b_shape, device=DEV, dtype=BF16)),
                           2 * (a_shape[0] * a_shape[1] + b_shape[0] * b_shape[1]))

            def run():
                a, b = nxt()
                return a @ (b.t() if tb else b)
            s = timed(run, reps)
            total_s += s * count
            total_f += flops * count
            report("gemm", "%s %s %dx%dx%d (x%d)" % (name, what, n, ic, oc, count), s,
                   TFLOP_per_s=round(flops / s / 1e12, 1))
    report("gemm", "every Linear of one step (sum)", total_s, TFLOP_per_s=round(total_f / total_s / 1e12, 1))


def grouped(m, tokens, reps):
    E, k, h, f = m["n_routed_experts"], m["num_experts_per_tok"], m["hidden_size"], m["moe_intermediate_size"]
    rows = tokens * k // E
    for name, ic, oc in (("experts gate+up", h, 2 * f), ("experts down", f, h)):
        x = torch.randn(E * rows, ic, device=DEV, dtype=BF16)
        w = torch.randn(E, oc, ic, device=DEV, dtype=BF16)
        flops = 2.0 * E * rows * ic * oc
        s = timed(lambda: [x[e * rows:(e + 1) * rows] @ w[e].t() for e in range(E)], reps)
        report("grouped", "%s loop %d x %dx%dx%d" % (name, E, rows, ic, oc), s, TFLOP_per_s=round(flops / s / 1e12, 1))
        gm = getattr(torch, "_grouped_mm", None)
        if gm is None:
            print("grouped    torch._grouped_mm: not in this torch")
            continue
        offs = torch.arange(rows, E * rows + 1, rows, device=DEV, dtype=torch.int32)
        wt = w.transpose(1, 2)                    # (E, ic, oc), column-major per expert
        try:
            s = timed(lambda: gm(x, wt, offs=offs), reps)
            report("grouped", "%s _grouped_mm %d x %dx%dx%d" % (name, E, rows, ic, oc), s,
                   TFLOP_per_s=round(flops / s / 1e12, 1))
        except Exception as e:                   # noqa: BLE001 - report whatever this torch says
            print("grouped    torch._grouped_mm refused: %s" % str(e).splitlines()[0][:200])


def attention(m, tokens, reps):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    H = m["num_attention_heads"]
    dqk, dv = m["qk_nope_head_dim"] + m["qk_rope_head_dim"], m["v_head_dim"]
    T = min(tokens, m.get("max_position_embeddings", tokens))
    B = max(1, tokens // T)
    q = torch.randn(B, H, T, dqk, device=DEV, dtype=BF16, requires_grad=True)
    kk = torch.randn(B, H, T, dqk, device=DEV, dtype=BF16, requires_grad=True)
    v = torch.randn(B, H, T, dv, device=DEV, dtype=BF16, requires_grad=True)
    do = torch.randn(B, H, T, dv, device=DEV, dtype=BF16)
    fwd_flops = 2.0 * B * H * T * T * (dqk + dv) / 2        # causal: half the score matrix
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        name = "%s B%d H%d T%d d_qk %d d_v %d" % (be.name.lower(), B, H, T, dqk, dv)
        try:
            with sdpa_kernel([be]):
                f = lambda: F.scaled_dot_product_attention(q, kk, v, is_causal=True)  # noqa: E731
                s = timed(f, reps)
                report("attention", name + " fwd", s, TFLOP_per_s=round(fwd_flops / s / 1e12, 1))

                def fb():
                    q.grad = kk.grad = v.grad = None
                    F.scaled_dot_product_attention(q, kk, v, is_causal=True).backward(do)
                s = timed(fb, reps)
                # backward: 5 products of the forward's 2 (S again, dP, dV, dQ, dK): 3.5x in all
                report("attention", name + " fwd+bwd", s, TFLOP_per_s=round(3.5 * fwd_flops / s / 1e12, 1))
        except Exception as e:                   # noqa: BLE001
            print("attention  %s: refused: %s" % (name, str(e).splitlines()[0][:200]))


def fp8(m, tokens, reps):
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        print("fp8        torch._scaled_mm / float8_e4m3fn: not in this torch")
        return
    M, K, N = tokens, m["hidden_size"], m["intermediate_size"]
    a = torch.randn(M, K, device=DEV).to(torch.float8_e4m3fn)
    bt = torch.randn(N, K, device=DEV).to(torch.float8_e4m3fn)      # (N, K) rows: b = bt.t() column-major
    flops = 2.0 * M * K * N
    one = torch.ones((), device=DEV)
    try:
        s = timed(lambda: torch._scaled_mm(a, bt.t(), scale_a=one, scale_b=one, out_dtype=BF16), reps)
        report("fp8", "per-tensor scales %dx%dx%d" % (M, K, N), s, TFLOP_per_s=round(flops / s / 1e12, 1))
    except Exception as e:                       # noqa: BLE001
        print("fp8        per-tensor: refused: %s" % str(e).splitlines()[0][:200])
    # 1x128 activation scales (M, K/128) and 128x128 weight scales (N/128, K/128): the scale
    # layouts torch accepts have changed between versions, so each is tried in turn
    sa = torch.rand(M, K // 128, device=DEV) + 0.5
    sb = torch.rand(N // 128, K // 128, device=DEV) + 0.5
    sa_cm = sa.t().contiguous().t()              # (M, K/128) with the M index fastest
    layouts = {"row-major": (sa, sb.t()), "outer-dim-major": (sa_cm, sb.t().contiguous()),
               "outer-dim-major a": (sa_cm, sb.t()), "as stored": (sa, sb)}
    for name, (x, y) in layouts.items():
        try:
            s = timed(lambda: torch._scaled_mm(a, bt.t(), scale_a=x, scale_b=y, out_dtype=BF16), reps)
            report("fp8", "1x128 x 128x128 scales (%s) %dx%dx%d" % (name, M, K, N), s,
                   TFLOP_per_s=round(flops / s / 1e12, 1))
            return
        except Exception as e:                   # noqa: BLE001
            print("fp8        1x128 x 128x128 (%s): refused: %s" % (name, str(e).splitlines()[0][:200]))


def main():
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: ceilings.py CONFIG.toml [--reps N]")
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 20
    with open(sys.argv[1], "rb") as f:
        cfg = tomllib.load(f)
    m, t = cfg["model"], cfg.get("train", {})
    tokens = t.get("micro_batch_size", 1) * t.get("seq_len", 4096)
    p = torch.cuda.get_device_properties(0)
    print("device %s, %d SMs, torch %s, CUDA %s, cuDNN %s; %s: %d tokens per micro-batch" % (
        p.name, p.multi_processor_count, torch.__version__, torch.version.cuda, torch.backends.cudnn.version(),
        sys.argv[1], tokens))
    torch.manual_seed(0)
    for part in (copy_rate, lambda r: gemm_shapes(m, tokens, r), lambda r: grouped(m, tokens, r),
                 lambda r: attention(m, tokens, r), lambda r: fp8(m, tokens, r)):
        try:
            part(reps)
        except Exception as e:                   # noqa: BLE001 - one failed part must not hide the rest
            print("FAILED part: %s" % str(e).splitlines()[0][:300])
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
