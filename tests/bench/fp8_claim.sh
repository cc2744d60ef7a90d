#!/usr/bin/env bash
# tests/bench/fp8_claim.sh - issue 10 acceptance 3 on the CPU: each config trained for the same
# steps under train.precision = fp8, bf16 (emulated) and fp32, per seed; prints per config and
# seed the final training loss (mean over the last 10% of steps, from metrics.jsonl), the final
# validation loss, the relative fp8-vs-bf16 difference of each (target < 0.25%), and the loss
# curve at a few points (mean of a 10-step window ending there). bf16 and fp8 runs keep their
# AdamW moments in BF16 (train.bf16_moments = true, SPEC section 6), fp32 runs in FP32.
# Usage: tests/bench/fp8_claim.sh [DSTRAIN_BINARY] [OUT_DIR]
#   env: CONFIGS (default "configs/small.toml configs/fp8-check.toml"), SEEDS ("1337"),
#        STEPS (config's own), PRECS ("fp32 bf16 fp8"), THREADS (1), TABLE_ONLY=1 (reuse OUT_DIR).
# Runs go sequentially under nice into OUT_DIR (default: a temporary directory, removed).
set -euo pipefail
BIN=${1:-build/release/dstrain}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CONFIGS=${CONFIGS:-"$SRC/configs/small.toml $SRC/configs/fp8-check.toml"}
SEEDS=${SEEDS:-1337}
PRECS=${PRECS:-"fp32 bf16 fp8"}
THREADS=${THREADS:-1}
if [ -n "${2:-}" ]; then OUT=$2; mkdir -p "$OUT"; else OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT; fi
if [ "${TABLE_ONLY:-0}" != 1 ]; then
    for cfg in $CONFIGS; do
        for seed in $SEEDS; do
            for prec in $PRECS; do
                run="$OUT/$(basename "$cfg" .toml)/s$seed-$prec"
                rm -rf "$run"; mkdir -p "$(dirname "$run")"
                set -- --set train.run_dir="$run" --set train.name=run --set data.dir="$OUT/data-$(basename "$cfg" .toml)" \
                    --set train.seed="$seed" --set train.precision="$prec" --set train.threads="$THREADS" \
                    --set train.checkpoint_every=0
                [ -n "${STEPS:-}" ] && set -- "$@" --set train.steps="$STEPS"
                # SPEC section 6: AdamW moments BF16 under the reduced precisions (FP32 at fp32).
                [ "$prec" != fp32 ] && set -- "$@" --set train.bf16_moments=true
                echo "fp8_claim: $(basename "$cfg") seed $seed $prec" >&2
                nice "$BIN" train "$cfg" "$@" > "$run.log" 2>&1 || { tail -n 3 "$run.log" >&2; exit 1; }
            done
        done
    done
fi
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def load(path):
    recs = [json.loads(l) for l in open(path)]
    steps = [r for r in recs if r["type"] == "step"]
    vals = [r for r in recs if r["type"] == "val"]
    return steps, vals
def window(losses, end, n=10):
    w = losses[max(0, end - n):end]
    return sum(w) / len(w)
for cdir in sorted(glob.glob(os.path.join(out, "*"))):
    runs = {}
    for m in glob.glob(os.path.join(cdir, "s*-*", "run", "metrics.jsonl")):
        seed, prec = os.path.basename(os.path.dirname(os.path.dirname(m)))[1:].split("-")
        runs[(seed, prec)] = load(m)
    if not runs:
        continue
    print("config %s" % os.path.basename(cdir))
    print("  %-6s %-5s %6s %12s %12s %14s %14s" % ("seed", "prec", "steps", "train(last10%)", "val", "d_train vs bf16", "d_val vs bf16"))
    diffs = []
    for seed in sorted({s for s, _ in runs}):
        base = runs.get((seed, "bf16"))
        for prec in ("fp32", "bf16", "fp8"):
            if (seed, prec) not in runs:
                continue
            steps, vals = runs[(seed, prec)]
            losses = [r["loss"] for r in steps]
            n = len(losses)
            tr = window(losses, n, max(1, n // 10))
            va = vals[-1]["val_loss"] if vals else float("nan")
            dt = dv = ""
            if base and prec != "bf16":
                bl = [r["loss"] for r in base[0]]
                btr = window(bl, len(bl), max(1, len(bl) // 10))
                bva = base[1][-1]["val_loss"] if base[1] else float("nan")
                dt = "%+.3f%%" % (100 * (tr - btr) / btr)
                dv = "%+.3f%%" % (100 * (va - bva) / bva)
                if prec == "fp8":
                    diffs.append((100 * (tr - btr) / btr, 100 * (va - bva) / bva))
            print("  %-6s %-5s %6d %14.4f %12.4f %14s %14s" % (seed, prec, n, tr, va, dt, dv))
        pts = sorted({max(10, n * k // 8) for k in (1, 2, 4, 6, 8)})
        print("    curve (train loss, 10-step mean ending at step):  " + " ".join("%6d" % p for p in pts))
        for prec in ("fp32", "bf16", "fp8"):
            if (seed, prec) in runs:
                losses = [r["loss"] for r in runs[(seed, prec)][0]]
                print("    %-5s %44s" % (prec, "") + " ".join("%6.3f" % window(losses, p) for p in pts))
    if diffs:
        mt = sum(d[0] for d in diffs) / len(diffs)
        mv = sum(d[1] for d in diffs) / len(diffs)
        print("  fp8 vs bf16 over %d seed(s): train %+.3f%% (|max| %.3f%%), val %+.3f%% (|max| %.3f%%); target |d| < 0.25%%"
              % (len(diffs), mt, max(abs(d[0]) for d in diffs), mv, max(abs(d[1]) for d in diffs)))
PY
