# tests/cli/test_ema.sh - the EMA of the weights (TR 3.2.3; issue 12), configs/tiny.toml:
#   1. the rule, from one step: ema_1 = d * w_0 + (1 - d) * w_1, so for two decays
#      ema(0.5) - w_1 = 0.5 (w_0 - w_1) = 2 (ema(0.25) - w_1) for every weight (w_1: the plain
#      export of the same step). Tolerance: each EMA is two products and a sum in FP32, a few
#      ulps of the larger of |w_0|, |w_1| (~6e-8 each); 1e-6 x (|w_1| + |ema(0.5)|) + 1e-30 covers
#      it ~10x, while a wrong decay or a missing update is off by a share of |w_0 - w_1| (the
#      test also needs most weights to have moved: w_0 != w_1).
#   2. saved and resumed: 20 steps straight == 8, --resume latest, 12 more: the --ema exports
#      are byte-identical (model.safetensors and mtp.safetensors), as are the weights
#   3. inspect lists the .ema datasets; export --ema of a checkpoint without an EMA is a one-line
#      error
# Usage: bash test_ema.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_ema.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
COMPARE=$(cd "$(dirname "$BIN")" && pwd)/tests/ckpt_compare
. "$(dirname "$0")/lib.sh"
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set optim.decay_steps=15)

# ---- 1. the rule ----
"${TRAIN[@]}" --set train.name=h --set train.steps=1 --set train.ema_decay=0.5 > h.txt 2>&1
"${TRAIN[@]}" --set train.name=q --set train.steps=1 --set train.ema_decay=0.25 > q.txt 2>&1
"$BIN" export --ckpt runs/h/ckpt-1 --out w1 > /dev/null 2>&1
"$BIN" export --ckpt runs/h/ckpt-1 --out eh --ema > eh.txt 2>&1
"$BIN" export --ckpt runs/q/ckpt-1 --out eq --ema > /dev/null 2>&1
check "export --ema says so ($(cat eh.txt))" "grep -q 'exported the EMA of step 1' eh.txt"
check "ema(0.5) - w1 == 2 (ema(0.25) - w1) for every weight" "python3 - w1 eh eq <<'PY'
import json, struct, sys
def load(d):
    out = {}
    for f in ('model.safetensors', 'mtp.safetensors'):
        b = open(d + '/' + f, 'rb').read()
        n = struct.unpack('<Q', b[:8])[0]
        h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k == '__metadata__': continue
            s, e = v['data_offsets']
            out[k] = struct.unpack('<%df' % ((e - s) // 4), b[8 + n + s:8 + n + e])
    return out
w, h, q = (load(d) for d in sys.argv[1:4])
moved = total = 0
for k in w:
    for a, x, y in zip(w[k], h[k], q[k]):
        total += 1
        moved += x != a
        assert abs((x - a) - 2 * (y - a)) <= 1e-6 * (abs(a) + abs(x)) + 1e-30, (k, a, x, y)
assert moved > total // 2, (moved, total)
PY"

# ---- 2. resume ----
"${TRAIN[@]}" --set train.name=straight --set train.steps=20 --set train.ema_decay=0.9 > s.txt 2>&1
"${TRAIN[@]}" --set train.name=split --set train.steps=8 --set train.ema_decay=0.9 > p1.txt 2>&1
"${TRAIN[@]}" --set train.name=split --set train.steps=20 --set train.ema_decay=0.9 --resume latest > p2.txt 2>&1
check "the EMA is resumed from the checkpoint" "grep -q \"ema: resumed from 'runs/split/ckpt-8'\" p2.txt"
"$BIN" export --ckpt runs/straight/ckpt-20 --out es --ema > /dev/null 2>&1
"$BIN" export --ckpt runs/split/ckpt-20 --out ep --ema > /dev/null 2>&1
check "straight and resumed EMA exports byte-identical" \
    "cmp es/model.safetensors ep/model.safetensors && cmp es/mtp.safetensors ep/mtp.safetensors"
check "and the weights" "'$COMPARE' runs/straight/ckpt-20 runs/split/ckpt-20 > /dev/null"

# ---- 3. inspect, and a checkpoint without an EMA ----
"$BIN" inspect runs/straight/ckpt-20 > inspect.txt 2>&1
check "inspect lists the EMA" "grep -q '| ema yes' inspect.txt && grep -q 'model.embed_tokens.weight.ema' inspect.txt"
"${TRAIN[@]}" --set train.name=plain --set train.steps=2 > plain.txt 2>&1
expect_error "holds no EMA" export --ckpt runs/plain/ckpt-2 --out x --ema
finish
