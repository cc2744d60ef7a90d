# tests/cli/test_copies_memory.sh - the start-up memory table's compute-copy lines under
# train.precision = bf16 and fp8 (issue 10) against dstrain plan's count for the same config.
# Train's figures (model_copies: BF16 values, FP8 values = codes + transposed codes, 128x128
# block scales) are re-derived here from the checkpoint's tensor list (dstrain inspect), and
# plan's (its --json weight bytes less the 4 B FP32 state of the untrained parameters) must be
# train's + 2 B per value that this code reads from the FP32 master (embedding, norms, router),
# which plan counts as BF16 copies, + 4 B per block that plan counts per tensor beyond the
# model's per bound weight (gate and up fused, kv_a_proj split into latent and rope rows).
# Usage: bash test_copies_memory.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_copies_memory.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"
PY=${DSTRAIN_TEST_PYTHON:-python3}
TINY="$SRC/configs/tiny.toml"

for prec in bf16 fp8; do
    S=(--set train.precision=$prec)
    "$BIN" train "$TINY" "${S[@]}" --set train.run_dir=r$prec --set train.steps=1 > train.$prec.txt 2> err.txt
    rc=$?
    check "$prec: tiny trains a step (exit $rc: $(head -c 300 err.txt))" "[ $rc -eq 0 ]"
    "$BIN" plan "$TINY" "${S[@]}" --json > plan.$prec.json 2> err.txt
    check "$prec: plan --json (exit $?)" "[ -s plan.$prec.json ]"
    "$BIN" inspect r$prec/tiny/ckpt-1 > inspect.$prec.txt 2> err.txt
    check "$prec: inspect the checkpoint (exit $?)" "[ -s inspect.$prec.txt ]"
    check "$prec: the copies line says what the recipe holds" \
        "grep -q 'weight compute copies .*as the $prec recipe holds them: [0-9]* bytes' train.$prec.txt"
    "$PY" - "$prec" train.$prec.txt plan.$prec.json inspect.$prec.txt > why.$prec.txt 2>&1 <<'EOF'
import json, math, re, sys
prec, train, plan, inspect = sys.argv[1:]
t = open(train).read()
m = re.search(r"holds them: (\d+) bytes = BF16 2 B x (\d+) values \+ FP8 codes and transposed codes 2 B x (\d+) "
              r"values \+ (\d+) 128x128 block scales", t)
X, bf16, fp8, mblocks = map(int, m.groups())
m = re.search(r"compute copies \(recipe\) +(\d+) bytes +\(dstrain plan: (\d+) bytes = these \+ 2 B x (\d+) values "
              r"kept FP32 here \+ 4 B x \((\d+) - (\d+)\) blocks", t)
X2, P_printed, kept_printed, pblocks_printed, mblocks2 = map(int, m.groups())
r = json.load(open(plan))["memory"]["ranks"][0]
state = r["params"] - r["gradient_bytes"] / 4
P = r["weight_bytes"] - 4 * state          # plan's compute copies
shapes = {}
for line in open(inspect):
    m = re.match(r"\s+(model\.\S+|lm_head\.weight)\s+\(([\d,]+)\)\s+float32", line)
    if m and not m.group(1).endswith((".exp_avg", ".exp_avg_sq", "e_score_correction_bias")):
        shapes[m.group(1)] = [int(v) for v in m.group(2).split(",")]
blk = lambda r, c: math.ceil(r / 128) * math.ceil(c / 128)
numel = lambda s: math.prod(s)
kept = lambda n: n.endswith("embed_tokens.weight") or n.endswith("norm.weight") or n.endswith("mlp.gate.weight")
linear = {n: s for n, s in shapes.items() if not kept(n) and n != "lm_head.weight"}
want_kept = sum(numel(s) for n, s in shapes.items() if kept(n))
want_bf16 = numel(shapes["lm_head.weight"]) + (sum(map(numel, linear.values())) if prec == "bf16" else 0)
want_fp8 = sum(map(numel, linear.values())) if prec == "fp8" else 0
want_pblocks = want_mblocks = 0
if prec == "fp8":
    for n, s in linear.items():
        want_pblocks += blk(*s)
        if n.endswith("up_proj.weight"):
            continue                         # fused into the gate_proj row above it
        if n.endswith("gate_proj.weight"):
            want_mblocks += blk(2 * s[0], s[1])
        elif n.endswith("kv_a_proj_with_mqa.weight"):
            rkv = shapes[n.replace("kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight")][0]
            want_mblocks += blk(rkv, s[1]) + blk(s[0] - rkv, s[1])
        else:
            want_mblocks += blk(*s)
checks = [
    ("BF16 values", bf16, want_bf16), ("FP8 values", fp8, want_fp8), ("model blocks", mblocks, want_mblocks),
    ("bytes", X, 2 * (want_bf16 + want_fp8) + 4 * want_mblocks), ("bytes on both lines", X2, X),
    ("blocks on both lines", mblocks2, mblocks), ("FP32-kept values", kept_printed, want_kept),
    ("plan blocks", pblocks_printed, want_pblocks), ("plan's figure as printed", P_printed, P),
    ("plan = train + the two terms", P, X + 2 * want_kept + 4 * (want_pblocks - want_mblocks)),
]
bad = [f"{what}: {got} != {want}" for what, got, want in checks if got != want]
print("; ".join(bad) if bad else f"train {X} bytes, plan {P:.0f} bytes, {want_kept} FP32-kept values, "
      f"blocks {want_pblocks} per tensor / {want_mblocks} per weight")
sys.exit(1 if bad else 0)
EOF
    rc=$?
    echo "$prec: $(cat why.$prec.txt)"
    check "$prec: train's copies and plan's agree by the derived formula ($(tail -c 400 why.$prec.txt))" \
        "[ $rc -eq 0 ]"
    check "$prec: the start-up line says they agree" "grep -q 'blocks per tensor less per weight: agrees' train.$prec.txt"
done

finish
