#!/usr/bin/env python3
"""tests/bench/hf_bench.py - the same config trained by Hugging Face transformers'
DeepseekV3ForCausalLM, timed the way tests/gpu/gpu_bench.c times dstrain: random weights,
random tokens, one optimizer step = forward + backward + AdamW on micro_batch_size x seq_len
tokens (grad_accum micro-batches), median step time of the timed steps.

What it is: the comparison a user would otherwise run, in the usual mixed-precision recipe
(FP32 master weights and AdamW state, BF16 autocast for the compute; --pure-bf16 keeps the
weights themselves in BF16 instead). What it is not: MTP (transformers' DeepseekV3 has no
MTP modules, so compare with dstrain's run without MTP), the router bias update or the
sequence-wise balance loss (both cheap), or a correctness check (tests/interop/ does that).

For the memory comparison (tests/bench/mem_bench.sh): --device cpu --threads N --fp32 trains
in FP32 throughout (no autocast, as dstrain's fp32 precision), and --save-at N DIR writes the
weights and the AdamW state (torch.save of both state dicts) after step N, timing the stall.
The RESULT line carries the process's peak resident set size (getrusage ru_maxrss).

Usage: python3 tests/bench/hf_bench.py CONFIG.toml [--steps N] [--warmup N] [--device cuda]
       [--pure-bf16 | --fp32] [--threads N] [--experts IMPL] [--save-at N DIR]
       [--set section.key=value ...]
Prints a summary and one line "RESULT {json}". Exits 3 with a message when torch or
transformers is missing, 77 when --device cuda has no GPU.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def load_config(path, sets):
    if tomllib is None:
        sys.exit("hf_bench: needs Python 3.11+ (tomllib) to read '%s'" % path)
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    for s in sets:
        key, _, value = s.partition("=")
        section, _, name = key.rpartition(".")
        try:
            value = json.loads(value)
        except ValueError:
            pass
        cfg.setdefault(section, {})[name] = value
    return cfg


def hf_config(model, DeepseekV3Config):
    """dstrain [model] keys are the Hugging Face names (model/config.h)."""
    keys = ["vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "first_k_dense_replace", "num_attention_heads", "n_routed_experts", "n_shared_experts",
            "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob",
            "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "rms_norm_eps", "max_position_embeddings", "initializer_range"]
    kw = {k: model[k] for k in keys if k in model}
    kw["num_key_value_heads"] = model["num_attention_heads"]
    kw["tie_word_embeddings"] = False
    kw["use_cache"] = False
    if "rope_theta" in model:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": model["rope_theta"]}
    return DeepseekV3Config(**kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pure-bf16", action="store_true")
    ap.add_argument("--fp32", action="store_true", help="no autocast: FP32 compute (dstrain's fp32)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--experts", default=None,
                    help="transformers' experts implementation (default: its own choice, grouped_mm where it runs)")
    ap.add_argument("--save-at", nargs=2, metavar=("STEP", "DIR"), default=None,
                    help="torch.save weights and AdamW state into DIR after STEP (counted from 1, warm-up included)")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    try:
        import torch
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    except ImportError as e:
        print("hf_bench: cannot import torch/transformers (%s); the comparison needs both" % e)
        sys.exit(3)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no CUDA GPU (torch.cuda.is_available() is False)")
        sys.exit(77)
    cfg = load_config(a.config, a.set)
    model_cfg, train = cfg["model"], cfg.get("train", {})
    B, T, M = train.get("micro_batch_size", 4), train.get("seq_len", 64), train.get("grad_accum", 1)
    V = model_cfg["vocab_size"]
    torch.manual_seed(int(train.get("seed", 1337)))
    hc = hf_config(model_cfg, DeepseekV3Config)
    if a.experts:
        hc._experts_implementation = a.experts
    dev = torch.device(a.device)
    t0 = time.perf_counter()
    with dev:
        model = DeepseekV3ForCausalLM(hc)
    if a.pure_bf16:
        model = model.to(torch.bfloat16)
    model.train()
    autocast = not a.pure_bf16 and not a.fp32
    recipe = "pure bf16" if a.pure_bf16 else "fp32" if a.fp32 else "fp32 master + bf16 autocast"
    optim = cfg.get("optim", {})
    opt = torch.optim.AdamW(model.parameters(), lr=optim.get("lr", 1e-3), betas=(optim.get("beta1", 0.9),
                            optim.get("beta2", 0.95)), eps=optim.get("eps", 1e-8),
                            weight_decay=optim.get("weight_decay", 0.1), fused=a.device == "cuda")
    n_params = sum(p.numel() for p in model.parameters())
    print("hf_bench: transformers DeepseekV3ForCausalLM, %.3f B parameters, %s, attention '%s', experts '%s', "
          "micro-batch %d x %d x %d accumulated (set up in %.1f s)" %
          (n_params / 1e9, recipe, getattr(model.config, "_attn_implementation", None),
           getattr(model.config, "_experts_implementation", None), M, B, T, time.perf_counter() - t0))
    print("hf_bench: %d torch threads" % torch.get_num_threads())

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(M):
            ids = torch.randint(0, V, (B, T), device=dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=ids).loss / M
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.get("grad_clip", 1.0))
        opt.step()
        return total

    def save(path):
        os.makedirs(path, exist_ok=True)
        s0 = time.perf_counter()
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, os.path.join(path, "ckpt.pt"))
        return time.perf_counter() - s0

    times, first, last, save_s = [], None, None, None
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        for i in range(a.warmup + a.steps):
            if a.device == "cuda":
                torch.cuda.synchronize()
            s0 = time.perf_counter()
            loss = step()
            if a.device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - s0
            first = loss if first is None else first
            last = loss
            if i >= a.warmup:
                times.append(dt)
            print("  step %2d%s %.3f s, loss %.4f" % (i + 1, " (warm-up)" if i < a.warmup else "", dt, loss))
            if a.save_at and i + 1 == int(a.save_at[0]):
                save_s = save(a.save_at[1])
                print("  saved after step %d: training stalled %.3f s (torch.save, synchronous)" % (i + 1, save_s))
    except torch.cuda.OutOfMemoryError as e:
        print("hf_bench: out of GPU memory at micro-batch %d x %d (%s)" % (B, T, str(e).split("\n")[0]))
        print("RESULT " + json.dumps({"label": "hf", "error": "out of memory"}))
        sys.exit(4)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux
    tps = B * T * M / step_s
    print("hf: %.3f s/step (median of %d), %.0f tokens/s, peak %.2f GiB allocated by torch, peak RSS %.1f MiB" %
          (step_s, len(times), tps, peak, rss))
    print("RESULT " + json.dumps({"label": "hf", "step_s": step_s, "tokens_per_s": tps, "peak_gib": peak,
                                  "peak_rss_mib": rss, "save_s": save_s, "recipe": recipe,
                                  "experts": getattr(model.config, "_experts_implementation", None),
                                  "loss_first": first, "loss_last": last, "pure_bf16": a.pure_bf16,
                                  "params": n_params}))


if __name__ == "__main__":
    main()
