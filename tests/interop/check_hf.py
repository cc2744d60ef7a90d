#!/usr/bin/env python3
"""tests/interop/check_hf.py - transformers' DeepseekV3ForCausalLM on a `dstrain export`
directory reproduces dstrain's logits.

usage: check_hf.py HF_DIR --tokens TOKENS --logits LOGITS [--batch B] [--multiple M]

  HF_DIR   the output of `dstrain export --ckpt CKPT --out HF_DIR`
  TOKENS   raw little-endian int32, B x T token ids (row-major), the inputs dstrain ran
  LOGITS   raw little-endian float32, B x T x V: dstrain's main-head logits at every input
           position of the same checkpoint (V from HF_DIR/config.json, T from the sizes)

Checks: the model loads with no missing, unexpected or mismatched weights and no loading
warning (so mtp.safetensors stays outside what transformers reads, and every name and shape
matches); then dstrain's logits agree with transformers' within the rule of the CI fixtures
(tests/tools/hf_fixture.c): transformers runs the same tokens twice, as it is in FP32 and in
float64 (the float64 forwards of make_reference.py), and
  max |dstrain - hf64| <= M * max |hf32 - hf64|        M = 10 (--multiple)
over all logits: dstrain's FP32 error may be a few times transformers' own (other summation
orders), not more; a formula difference (eps, RoPE, router) is 45x and up. The worst error is
printed as a multiple of that floor, and transformers' own router is checked to choose the
experts dstrain's rule (SPEC.md section 4) does wherever no exact tie decides.
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
    args = {"dir": argv[0], "batch": 1, "multiple": 10.0}
    i = 1
    while i < len(argv):
        key = argv[i]
        if key not in ("--tokens", "--logits", "--batch", "--multiple") or i + 1 >= len(argv):
            print("check_hf.py: unexpected argument %r (see --help)" % key)
            sys.exit(2)
        args[key[2:]] = argv[i + 1]
        i += 2
    if "tokens" not in args or "logits" not in args:
        print("check_hf.py: --tokens and --logits are required (see --help)")
        sys.exit(2)
    args["batch"] = int(args["batch"])
    args["multiple"] = float(args["multiple"])
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
    model.config._attn_implementation = "eager"
    model.config._experts_implementation = "eager"
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        hf32 = model(input_ids=ids).logits.double().numpy()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_reference as mr   # patches transformers' FP32-only forwards to float64
    model = model.double()
    mr.check_inv_freq(model)
    mr.HF_ROUTE_MISMATCH[:] = [0, 0]
    with torch.no_grad():
        model.float()(input_ids=ids)   # transformers' own router against the rule, FP32
        hf64 = model.double()(input_ids=ids).logits.numpy()
    if mr.HF_ROUTE_MISMATCH[1]:
        print("FAIL: transformers' router chose other experts than dstrain's rule for %d of %d tokens"
              % (mr.HF_ROUTE_MISMATCH[1], mr.HF_ROUTE_MISMATCH[0]))
        failed += 1
    floor = float(np.abs(hf32 - hf64).max())
    err = np.abs(ref.astype(np.float64) - hf64)
    worst = float(err.max())
    b, t, v = np.unravel_index(int(err.argmax()), err.shape)
    print("transformers %s: %d x %d tokens, V=%d; worst |dstrain - hf64| = %.3g at (%d,%d,%d) = %.2fx the FP32 "
          "floor max|hf32 - hf64| = %.3g (allowed %gx); router checked on %d tokens"
          % (transformers.__version__, B, T, vocab, worst, b, t, v, worst / floor if floor > 0 else float("inf"),
             floor, a["multiple"], mr.HF_ROUTE_MISMATCH[0]))
    if not worst <= a["multiple"] * floor:
        print("FAIL: logits differ beyond %g x the FP32 floor" % a["multiple"])
        failed += 1
    print("%s" % ("PASS" if failed == 0 else "%d failure(s)" % failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
