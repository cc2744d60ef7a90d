#!/usr/bin/env python3
"""tests/interop/make_reference.py - writes the Hugging Face parity fixtures of
tests/interop/fixtures/ (checked on every CI run by tests/tools/hf_fixture.c, no torch there).

usage: make_reference.py OUT_DIR          (run by hand; needs torch, transformers, safetensors)
  e.g. python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers safetensors
       /tmp/hfvenv/bin/python tests/interop/make_reference.py tests/interop/fixtures

For each config of CONFIGS (together: q_lora_rank 0 and > 0, YaRN with mscale 0 and an
explicit attention_factor, several expert groups with topk_group < n_group, n_shared_experts
2, norm_topk_prob false, rms_norm_eps 1e-5, MTP depth 2, and an exact routing tie) it builds a
small transformers DeepseekV3ForCausalLM and writes OUT_DIR/<name>/:
  config.json, model.safetensors   save_pretrained of the model (what --init-from reads)
  mtp.safetensors                  the MTP modules under dstrain's names (transformers has none)
  model.toml                       the same model as a dstrain config
  ref.json, ref.bin                the window of input ids, and float64 references (raw
                                   little-endian doubles at the offsets ref.json gives): main
                                   logits, main / MTP / balance losses, the gradient of every
                                   trained tensor (dstrain names), the chosen experts of every
                                   MoE layer (main layers, then MTP blocks), and for each the
                                   FP32 floor: max |transformers FP32 - float64| on the same
                                   inputs and weights.

The float64 reference runs transformers' own modules in float64; where transformers computes
in FP32 whatever the dtype (RMSNorm, RoPE table, softmax, router), those forwards are replaced
by float64 versions of the same formulas (the RoPE inverse frequencies are checked against
transformers' own to 1e-6). MTP (TR section 2.2, SPEC.md section 5) is written here from
transformers' DeepseekV3DecoderLayer and RMSNorm. Routing follows SPEC.md section 4 in both
runs (ties to the lower expert and group index: torch.topk leaves ties unspecified);
transformers' own router is checked to choose the same sets wherever there is no exact tie.
Inputs are redrawn until no routing decision is within 1e-5 of a non-tie (so FP32 rounding
cannot flip one on any CPU).
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf

LAMBDA, ALPHA, B = 0.3, 0.01, 2
COMMON = dict(vocab_size=48, hidden_size=32, intermediate_size=48, moe_intermediate_size=8, num_attention_heads=2,
              num_key_value_heads=2,
              kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, routed_scaling_factor=2.5,
              rope_theta=10000.0, initializer_range=0.1, tie_word_embeddings=False)
CONFIGS = {
    # V2-Lite-like: no query compression, 4 groups of 4 keep 2, 2 shared experts, unnormalised
    # routing weights, eps 1e-5 (the latent norms keep 1e-6), MTP depth 2
    "lite": dict(COMMON, num_hidden_layers=2, first_k_dense_replace=1, q_lora_rank=None, n_routed_experts=16,
                 n_group=4, topk_group=2, num_experts_per_tok=4, n_shared_experts=2, norm_topk_prob=False,
                 rms_norm_eps=1e-5, num_nextn_predict_layers=2, max_position_embeddings=24, rope_parameters=None),
    # YaRN over 4x the original length with mscale 0 (transformers would take another cos/sin
    # scale without attention_factor: 1.1386 for DeepSeek's 0.8782), the sequence as long as
    # max_position_embeddings
    "yarn": dict(COMMON, num_hidden_layers=2, first_k_dense_replace=1, q_lora_rank=16, n_routed_experts=8,
                 n_group=4, topk_group=2, num_experts_per_tok=4, n_shared_experts=1, norm_topk_prob=True,
                 rms_norm_eps=1e-5, num_nextn_predict_layers=1, max_position_embeddings=64,
                 rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16,
                                      beta_fast=32.0, beta_slow=1.0, mscale=0.0, mscale_all_dim=1.0)),
    # exact routing ties: experts 1 and 2 have zero router rows (s = 0.5 exactly) and equal
    # bias, expert 0 a large bias, so every token's second expert is a tie that goes to 1
    "tie": dict(COMMON, num_hidden_layers=2, first_k_dense_replace=0, q_lora_rank=8, n_routed_experts=8,
                n_group=2, topk_group=1, num_experts_per_tok=2, n_shared_experts=1, norm_topk_prob=True,
                rms_norm_eps=1e-6, num_nextn_predict_layers=1, max_position_embeddings=16, rope_parameters=None),
}
TIE_ROWS, TIE_BIAS = (1, 2), {0: 1.0, 1: 0.3, 2: 0.3}


def yarn_mscale(factor, m):
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


# ---- float64 versions of the forwards transformers runs in FP32 whatever the dtype ----

ORIG = dict(norm=hf.DeepseekV3RMSNorm.forward, rope=hf.DeepseekV3RotaryEmbedding.forward,
            attn=hf.eager_attention_forward, router=hf.DeepseekV3TopkRouter.forward)


def norm_forward(self, x):
    if x.dtype != torch.float64:
        return ORIG["norm"](self, x)
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def rope_forward(self, x, position_ids):
    if x.dtype != torch.float64:
        return ORIG["rope"](self, x, position_ids)
    freqs = position_ids[..., None].double() * self.inv_freq64
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def attn_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    if query.dtype != torch.float64:
        return ORIG["attn"](module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


ROUTES = []          # (s, idx) of every router call, in call order
HF_ROUTE_MISMATCH = [0, 0]   # tokens checked, tokens where transformers' sets differ


def spec_route(s, bias, K, n_group, topk_group):
    """SPEC.md section 4 on s (N, E): ties to the lower index (stable sort of -value)."""
    N, E = s.shape
    sb = s + bias
    G, m = E // n_group, K // topk_group
    keep = torch.ones(N, n_group, dtype=torch.bool)
    if topk_group < n_group:
        top = torch.sort(sb.view(N, n_group, G), dim=-1, descending=True, stable=True)[0][..., :m]
        gs = top.sum(-1)
        gi = torch.sort(gs, dim=-1, descending=True, stable=True)[1][:, :topk_group]
        keep = torch.zeros(N, n_group, dtype=torch.bool).scatter_(1, gi, True)
    masked = sb.masked_fill(~keep.repeat_interleave(G, dim=1), float("-inf"))
    return torch.sort(masked, dim=-1, descending=True, stable=True)[1][:, :K], sb, keep


def router_forward(self, hidden_states):
    x = hidden_states.view(-1, self.hidden_dim)
    logits = F.linear(x, self.weight.to(x.dtype))
    s = logits.sigmoid()
    bias = self.e_score_correction_bias.to(x.dtype)
    idx, _, _ = spec_route(s.detach(), bias, self.top_k, self.num_group, self.topk_group)
    if x.dtype == torch.float32:   # transformers' own choice, where no exact tie decides
        _, _, hf_idx = ORIG["router"](self, hidden_states)
        sb = (s + bias).detach()
        for n in range(x.shape[0]):
            if len(set(sb[n].tolist())) == sb.shape[1]:
                HF_ROUTE_MISMATCH[0] += 1
                HF_ROUTE_MISMATCH[1] += set(idx[n].tolist()) != set(hf_idx[n].tolist())
    ROUTES.append((s, idx))
    w = s.gather(1, idx)
    if self.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    return logits, w * self.routed_scaling_factor, idx


hf.DeepseekV3RMSNorm.forward = norm_forward
hf.DeepseekV3RotaryEmbedding.forward = rope_forward
hf.eager_attention_forward = attn_forward
hf.DeepseekV3TopkRouter.forward = router_forward


# ---- model, MTP, losses ----

class Mtp(torch.nn.Module):
    """MTP module k (TR section 2.2): h' = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1})])."""

    def __init__(self, cfg, layer):
        super().__init__()
        C = cfg.hidden_size
        self.enorm = hf.DeepseekV3RMSNorm(C, eps=cfg.rms_norm_eps)
        self.hnorm = hf.DeepseekV3RMSNorm(C, eps=cfg.rms_norm_eps)
        self.eh_proj = torch.nn.Linear(2 * C, C, bias=False)
        self.block = hf.DeepseekV3DecoderLayer(cfg, layer)
        self.head_norm = hf.DeepseekV3RMSNorm(C, eps=cfg.rms_norm_eps)


def hf_config(spec):
    kw = dict(spec)
    rp = kw.pop("rope_parameters")
    if rp is not None:
        rp = dict(rp, rope_theta=kw["rope_theta"])
        rp["attention_factor"] = yarn_mscale(rp["factor"], rp["mscale"]) / yarn_mscale(rp["factor"],
                                                                                      rp["mscale_all_dim"])
        kw["rope_parameters"] = rp
    cfg = DeepseekV3Config(**kw)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    return cfg


def build(name, spec, seed):
    torch.manual_seed(seed)
    cfg = hf_config(spec)
    model = DeepseekV3ForCausalLM(cfg)
    L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    mtp = torch.nn.ModuleList([Mtp(cfg, L + k) for k in range(D)])
    with torch.no_grad():
        for mod in list(model.modules()) + list(mtp.modules()):
            if isinstance(mod, hf.DeepseekV3RMSNorm):   # norm weights that matter
                mod.weight.copy_(1.0 + 0.2 * torch.randn_like(mod.weight))
            elif isinstance(mod, torch.nn.Linear) and any(mod is m.eh_proj for m in mtp):
                mod.weight.normal_(0.0, cfg.initializer_range)
            elif isinstance(mod, hf.DeepseekV3TopkRouter):
                mod.weight.normal_(0.0, 0.5)
                mod.e_score_correction_bias.copy_(0.05 * torch.randn(cfg.n_routed_experts))
                if name == "tie":
                    mod.weight[list(TIE_ROWS)] = 0.0
                    mod.weight.mul_(0.1)
                    for e, b in TIE_BIAS.items():
                        mod.e_score_correction_bias[e] = b
            elif isinstance(mod, hf.DeepseekV3Experts):
                mod.gate_up_proj.normal_(0.0, cfg.initializer_range)
                mod.down_proj.normal_(0.0, cfg.initializer_range)
    return cfg, model, mtp


def check_inv_freq(model):
    rot = model.model.rotary_emb
    cfg = model.config
    dim, base = cfg.qk_rope_head_dim, cfg.rope_parameters["rope_theta"]
    f = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    rp = cfg.rope_parameters
    if rp.get("rope_type", "default") == "yarn":
        def corr(rot_):
            return dim * math.log(rp["original_max_position_embeddings"] / (rot_ * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr(rp["beta_fast"])), 0)
        high = min(math.ceil(corr(rp["beta_slow"])), dim - 1)
        high = high + 0.001 if high == low else high
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        f = f / rp["factor"] * ramp + f * (1 - ramp)
    err = float(((f - rot.inv_freq.double()) / f).abs().max())
    assert err < 1e-6, "float64 inverse frequencies differ from transformers' by %g" % err
    rot.inv_freq64 = f


def run(cfg, model, mtp, window, dtype):
    """Forward and backward in dtype; returns logits, losses, grads (dstrain names), routes."""
    model = model.to(dtype)
    mtp = mtp.to(dtype)
    model.zero_grad(set_to_none=True)
    mtp.zero_grad(set_to_none=True)
    ROUTES.clear()
    Bn, T1 = window.shape
    T = T1 - 1
    inp, tgt = window[:, :T], window[:, 1:]
    h = model.model(input_ids=inp).last_hidden_state
    logits = model.lm_head(h)
    main = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    pos = torch.arange(T)[None].expand(Bn, T)
    pe = model.model.rotary_emb(h, pos)
    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)[None, None]
    D, losses_mtp = cfg.num_nextn_predict_layers, []
    total = main
    for k in range(1, D + 1):
        toks = torch.zeros(Bn, T, dtype=torch.long)
        tg = torch.full((Bn, T), -100, dtype=torch.long)
        toks[:, :T + 1 - k] = window[:, k:]
        tg[:, :T - k] = window[:, k + 1:]
        m = mtp[k - 1]
        e = model.model.embed_tokens(toks)
        hp = m.eh_proj(torch.cat([m.enorm(e), m.hnorm(h)], dim=-1))
        h = m.block(hp, attention_mask=mask, position_embeddings=pe)
        lg = model.lm_head(m.head_norm(h))
        lk = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=-100)
        losses_mtp.append(lk)
        total = total + LAMBDA / D * lk
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    balance = torch.zeros((), dtype=dtype)
    for s, idx in ROUTES:
        s = s.view(Bn, T, E)
        f = torch.zeros(Bn, E, dtype=dtype).scatter_add_(1, idx.reshape(Bn, T * K),
                                                         torch.ones(Bn, T * K, dtype=dtype)) * (E / (K * T))
        P = (s / s.sum(-1, keepdim=True)).mean(1)
        balance = balance + (ALPHA * (f * P).sum(-1)).mean()
    total = total + balance
    total.backward()
    grads = named_grads(cfg, model, mtp)
    routes = [idx.clone() for _, idx in ROUTES]
    return (logits.detach().double(), float(main), [float(x) for x in losses_mtp], float(balance), grads, routes)


def dstrain_tensors(cfg, model, mtp, grad):
    """name -> tensor (weights, or their .grad), under dstrain's (= the saved HF) names."""
    out = {}
    L = cfg.num_hidden_layers

    def put(name, p):
        t = p.grad if grad else p
        if grad and t is None:
            return
        out[name] = t.detach()

    def module(prefix, mod):
        for n, p in mod.named_parameters():
            if grad and p.grad is None:
                continue
            if n.endswith("experts.gate_up_proj"):
                Fd = cfg.moe_intermediate_size
                for e in range(cfg.n_routed_experts):
                    g = p.grad[e] if grad else p[e]
                    if g is not None:
                        out["%s.%s.%d.gate_proj.weight" % (prefix, n[:-len(".gate_up_proj")], e)] = g[:Fd].detach()
                        out["%s.%s.%d.up_proj.weight" % (prefix, n[:-len(".gate_up_proj")], e)] = g[Fd:].detach()
            elif n.endswith("experts.down_proj"):
                for e in range(cfg.n_routed_experts):
                    g = p.grad[e] if grad else p[e]
                    out["%s.%s.%d.down_proj.weight" % (prefix, n[:-len(".down_proj")], e)] = g.detach()
            else:
                put("%s.%s" % (prefix, n), p)

    module("model", model.model)
    put("lm_head.weight", model.lm_head.weight)
    for k, m in enumerate(mtp):
        pre = "model.layers.%d" % (L + k)
        put(pre + ".enorm.weight", m.enorm.weight)
        put(pre + ".hnorm.weight", m.hnorm.weight)
        put(pre + ".eh_proj.weight", m.eh_proj.weight)
        put(pre + ".shared_head.norm.weight", m.head_norm.weight)
        module(pre, m.block)
        if not grad:
            out[pre + ".mlp.gate.e_score_correction_bias"] = m.block.mlp.gate.e_score_correction_bias.detach()
    return out


def named_grads(cfg, model, mtp):
    return {k: v.double().clone() for k, v in dstrain_tensors(cfg, model, mtp, True).items()}


def route_margin(cfg, model, mtp, window):
    """Smallest non-zero gap at a routing decision (K-th vs next kept expert, kept vs dropped
    group), float64."""
    run(cfg, model, mtp, window, torch.float64)
    worst = float("inf")
    E, K, ng, tg = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
    biases = [m.e_score_correction_bias.double() for m in list(model.modules()) + list(mtp.modules())
              if isinstance(m, hf.DeepseekV3TopkRouter)]
    for (s, idx), bias in zip(ROUTES, biases):
        _, sb, keep = spec_route(s.detach(), bias, K, ng, tg)
        G, m = E // ng, K // tg
        for n in range(sb.shape[0]):
            kept = sb[n][keep[n].repeat_interleave(G)].sort(descending=True)[0]
            if kept.numel() > K and kept[K - 1] != kept[K]:
                worst = min(worst, float(kept[K - 1] - kept[K]))
            if tg < ng:
                gs = sb[n].view(ng, G).sort(-1, descending=True)[0][:, :m].sum(-1).sort(descending=True)[0]
                if gs[tg - 1] != gs[tg]:
                    worst = min(worst, float(gs[tg - 1] - gs[tg]))
    return worst


def toml_of(name, cfg):
    rp = cfg.rope_parameters or {}
    lines = ["# tests/interop/fixtures/%s/model.toml - written by tests/interop/make_reference.py" % name, "[model]"]
    for k in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
              "first_k_dense_replace", "num_attention_heads", "n_routed_experts", "n_shared_experts",
              "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "kv_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rms_norm_eps", "max_position_embeddings",
              "num_nextn_predict_layers", "initializer_range"):
        v = getattr(cfg, k)
        lines.append("%s = %s" % (k, repr(v) if isinstance(v, float) else v))
    lines.append("norm_topk_prob = %s" % ("true" if cfg.norm_topk_prob else "false"))
    lines.append("q_lora_rank = %d" % (cfg.q_lora_rank or 0))
    lines.append("rope_theta = %r" % float(rp.get("rope_theta", 10000.0)))
    if rp.get("rope_type") == "yarn":
        lines.append("[model.rope_scaling]")
        lines.append('type = "yarn"')
        for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            lines.append("%s = %r" % (k, rp[k]))
    lines += ["[train]", "name = \"hf_%s\"" % name, "seq_len = %d" % cfg.max_position_embeddings,
              "micro_batch_size = %d" % B, "threads = 1", "[moe]", "balance_alpha = %r" % ALPHA]
    return "\n".join(lines) + "\n"


def write_fixture(out, name, spec):
    seed = 1000 + sorted(CONFIGS).index(name)
    cfg, model, mtp = build(name, spec, seed)
    check_inv_freq(model)
    T, V = cfg.max_position_embeddings, cfg.vocab_size
    g = torch.Generator().manual_seed(seed)
    for attempt in range(200):
        window = torch.randint(0, V, (B, T + 1), generator=g)
        margin = route_margin(cfg, model, mtp, window)
        if margin > 1e-5:
            break
    else:
        sys.exit("%s: no input without a routing near-tie in 200 draws" % name)
    ref = run(cfg, model, mtp, window, torch.float64)
    HF_ROUTE_MISMATCH[:] = [0, 0]
    lo = run(cfg, model, mtp, window, torch.float32)
    assert HF_ROUTE_MISMATCH[1] == 0, "%s: transformers' router chose other experts for %d of %d tokens" % (
        name, HF_ROUTE_MISMATCH[1], HF_ROUTE_MISMATCH[0])
    for a, b in zip(ref[5], lo[5]):
        assert torch.equal(a.sort(-1)[0], b.sort(-1)[0]), "%s: FP32 and float64 route differently" % name
    model = model.float()
    mtp = mtp.float()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d)
    if os.path.exists(os.path.join(d, "generation_config.json")):   # not a model file
        os.remove(os.path.join(d, "generation_config.json"))
    weights = dstrain_tensors(cfg, model, mtp, False)
    L = cfg.num_hidden_layers
    mtp_w = {k: v.contiguous() for k, v in weights.items()
             if k.startswith("model.layers.") and int(k.split(".")[2]) >= L}
    save_file(mtp_w, os.path.join(d, "mtp.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "model.toml"), "w") as f:
        f.write(toml_of(name, cfg))
    blobs, meta = [], {"B": B, "T": T, "lambda": LAMBDA, "alpha": ALPHA, "window": window.tolist(),
                       "route_margin": margin, "hf_router_tokens_checked": HF_ROUTE_MISMATCH[0],
                       "made_by": "make_reference.py, torch %s, transformers %s" % (torch.__version__,
                                                                                 transformers.__version__)}
    at = [0]

    def blob(t):
        t = t.double().reshape(-1)
        blobs.append(t)
        at[0] += t.numel()
        return at[0] - t.numel(), t.numel()

    off, n = blob(ref[0])
    meta["logits"] = {"offset": off, "count": n, "floor": float((ref[0] - lo[0]).abs().max())}
    meta["losses"] = {"main": ref[1], "mtp": ref[2], "balance": ref[3],
                      "floor": max([abs(ref[1] - lo[1]), abs(ref[3] - lo[3])] +
                                   [abs(a - b) for a, b in zip(ref[2], lo[2])])}
    meta["grads"] = {}
    for k in sorted(ref[4]):
        off, n = blob(ref[4][k])
        meta["grads"][k] = {"offset": off, "count": n, "floor": float((ref[4][k] - lo[4][k]).abs().max()),
                            "max": float(ref[4][k].abs().max())}
    meta["experts"] = []
    for idx in ref[5]:
        off, n = blob(idx.sort(-1)[0])
        meta["experts"].append({"offset": off, "count": n})
    torch.cat(blobs).numpy().astype("<f8").tofile(os.path.join(d, "ref.bin"))
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
    rel = meta["logits"]["floor"] / float(ref[0].abs().max())
    print("%s: T=%d, %d weights, logits floor %.3g (%.2g of max), losses main %.6f mtp %s balance %.3g, "
          "route margin %.3g, transformers' router agreed on %d tokens" % (
              name, T, sum(v.numel() for v in weights.values()), meta["logits"]["floor"], rel, ref[1],
              ["%.6f" % x for x in ref[2]], ref[3], margin, HF_ROUTE_MISMATCH[0]))


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    for name, spec in CONFIGS.items():
        write_fixture(sys.argv[1], name, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
