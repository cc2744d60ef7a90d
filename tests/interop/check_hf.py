#!/usr/bin/env python3
"""tests/interop/check_hf.py - transformers' DeepseekV3ForCausalLM on a `dstrain export`
directory reproduces dstrain's logits.

usage: check_hf.py HF_DIR --tokens TOKENS --logits LOGITS [--batch B] [--rtol R]

  HF_DIR   the output of `dstrain export --ckpt CKPT --out HF_DIR`
  TOKENS   raw little-endian int32, B x T token ids (row-major), the inputs dstrain ran
  LOGITS   raw little-endian float32, B x T x V: dstrain's main-head logits at every input
           position of the same checkpoint (V from HF_DIR/config.json, T from the sizes)

Checks: the model loads with no missing, unexpected or mismatched weights and no loading
warning (so mtp.safetensors stays outside what transformers reads, and every name and shape
matches); then its logits on TOKENS match LOGITS within FP32 rounding:
  |hf - dstrain| <= rtol * max|dstrain|   for every logit.
Tolerance: both sides compute in FP32 and differ only in summation order. A K-term FP32
dot product carries a relative rounding error of about sqrt(K) * 2^-24 (random-sign
accumulation); a logit is the end of a chain of about 8 such products per layer plus the
embedding, final norm and head, each feeding the next, so the chain's relative error is
about (8 L + 3) * sqrt(Kmax) * 6e-8. With L <= 8 and Kmax <= 4096 that is <= 2.6e-4, hence
the default rtol = 1e-3 (a 4x margin); the worst error is printed as a share of the budget.
A mismatch far above it means a layout or formula difference (RoPE pair order, MLA split,
router), not rounding.
Prints SKIP and exits 0 when torch or transformers is not importable; exits 1 on failure.
"""
import json
import logging
import os
import sys


def parse_args(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    args = {"dir": argv[0], "batch": 1, "rtol": 1e-3}
    i = 1
    while i < len(argv):
        key = argv[i]
        if key not in ("--tokens", "--logits", "--batch", "--rtol") or i + 1 >= len(argv):
            print("check_hf.py: unexpected argument %r (see --help)" % key)
            sys.exit(2)
        args[key[2:]] = argv[i + 1]
        i += 2
    if "tokens" not in args or "logits" not in args:
        print("check_hf.py: --tokens and --logits are required (see --help)")
        sys.exit(2)
    args["batch"] = int(args["batch"])
    args["rtol"] = float(args["rtol"])
    return args


class WarningCatcher(logging.Handler):
    """Collects transformers' log records at WARNING and above (the load warnings)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main():
    try:
        import numpy as np
        import torch
        import transformers
        from transformers import DeepseekV3ForCausalLM
    except ImportError as e:
        print("SKIP: %s (pip install torch transformers to run this check)" % e)
        return 0
    a = parse_args(sys.argv[1:])
    with open(os.path.join(a["dir"], "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tokens = np.fromfile(a["tokens"], dtype="<i4")
    ref = np.fromfile(a["logits"], dtype="<f4")
    B = a["batch"]
    if tokens.size % B or ref.size != tokens.size * vocab:
        print("FAIL: %d tokens and %d logits do not make B=%d rows of T tokens x V=%d"
              % (tokens.size, ref.size, B, vocab))
        return 1
    T = tokens.size // B
    tokens = tokens.reshape(B, T)
    ref = ref.reshape(B, T, vocab)

    catcher = WarningCatcher()
    tf_logger = logging.getLogger("transformers")
    tf_logger.addHandler(catcher)
    transformers.logging.set_verbosity_warning()
    model, info = DeepseekV3ForCausalLM.from_pretrained(a["dir"], torch_dtype=torch.float32,
                                                        output_loading_info=True)
    tf_logger.removeHandler(catcher)
    failed = 0
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            print("FAIL: %s: %s" % (key, list(info[key])[:8]))
            failed += 1
    weight_warnings = [m for m in catcher.messages if "weight" in m.lower() or "initialized" in m.lower()]
    if weight_warnings:
        print("FAIL: loading warned: %s" % weight_warnings[0][:400])
        failed += 1

    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    scale = float(np.abs(ref).max())
    err = np.abs(out - ref)
    worst = float(err.max())
    budget = a["rtol"] * scale
    b, t, v = np.unravel_index(int(err.argmax()), err.shape)
    print("transformers %s: %d x %d tokens, V=%d; worst |hf - dstrain| = %.3g at (%d,%d,%d), max|logit| = %.3g, "
          "%.1f%% of the budget %.3g" % (transformers.__version__, B, T, vocab, worst, b, t, v, scale,
                                          100.0 * worst / budget if budget > 0 else float("inf"), budget))
    if not worst <= budget:
        print("FAIL: logits differ beyond FP32 rounding")
        failed += 1
    print("%s" % ("PASS" if failed == 0 else "%d failure(s)" % failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
