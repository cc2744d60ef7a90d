#!/usr/bin/env bash
# tests/bench/mem_bench.sh - peak memory of one CPU process training the same config with
# dstrain and with Hugging Face transformers' DeepseekV3ForCausalLM (issue 14, acceptance 4),
# side by side in one run. Target: dstrain <= transformers at every size, and dstrain's
# training stall at the first checkpoint of the large size <= 0.2 s.
#
# Sizes: small = configs/small.toml; large = the same with hidden 512, 64 routed experts,
# sequences of 1024, small.toml's micro-batch 16 (MEM_BENCH_LARGE_BATCH: 2 makes the weights
# and optimizer state, not the activations, the larger part; 16 takes about ten minutes on
# two cores, most of it in transformers' steps). Both without MTP
# (transformers' DeepseekV3 has none). Each run: 3 optimizer steps, one save after step 2
# (dstrain: its background checkpoint; transformers: torch.save of the weights and the AdamW
# state, synchronous), the same number of threads, FP32 everywhere (transformers without
# autocast, in the experts implementation it picks itself: grouped_mm where torch has it).
# Peak RSS is getrusage's ru_maxrss of the process as its parent sees it (the largest of it
# and its waited-for children: dstrain's checkpoint writer is one).
#
# Usage: tests/bench/mem_bench.sh [DSTRAIN_BINARY]   (default build/release/dstrain)
# Environment: DSTRAIN_BENCH_PYTHON  a Python with torch and transformers (default
#              ${DSTRAIN_TEST_PYTHON:-python3}; neither is in tests/requirements.txt)
#              MEM_BENCH_THREADS      threads of both (default: the number of cores)
#              MEM_BENCH_SIZES        which sizes (default "small large")
#              MEM_BENCH_LARGE_BATCH  micro-batch of the large size (default 16)
# Exit status 77 with a SKIP line when that Python lacks torch or transformers; 1 when a run
# fails; 0 otherwise (the verdicts are printed, not enforced).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-build/release/dstrain}
PY=${DSTRAIN_BENCH_PYTHON:-${DSTRAIN_TEST_PYTHON:-python3}}
THREADS=${MEM_BENCH_THREADS:-$(nproc)}
SIZES=${MEM_BENCH_SIZES:-small large}
LARGE_BATCH=${MEM_BENCH_LARGE_BATCH:-16}
[ -x "$BIN" ] || { echo "mem_bench: '$BIN' is not an executable dstrain (build it first)" >&2; exit 1; }
if ! "$PY" -c 'import torch, transformers' > /dev/null 2>&1; then
    echo "SKIP: mem_bench: '$PY' cannot import torch and transformers (set DSTRAIN_BENCH_PYTHON to a Python that can)"
    exit 77
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# run LOG CMD...: CMD with stdout+stderr into LOG; prints its peak RSS in KiB (wait4), fails with it
cat > "$WORK/rss.py" <<'PY'
import os, subprocess, sys
with open(sys.argv[1], "w") as log:
    p = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
print(ru.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) != 0)
PY

for size in $SIZES; do
    SETS=(--set model.num_nextn_predict_layers=0)
    case $size in
        small) ;;
        large) SETS+=(--set model.hidden_size=512 --set model.n_routed_experts=64 --set train.seq_len=1024
                      --set train.micro_batch_size="$LARGE_BATCH") ;;
        *) echo "mem_bench: unknown size '$size' (small, large)" >&2; exit 1 ;;
    esac
    if ! python3 "$WORK/rss.py" "$WORK/dstrain-$size.log" "$BIN" train "$SRC/configs/small.toml" "${SETS[@]}" \
        --set train.run_dir="$WORK/runs-$size" --set data.dir="$WORK/data" --set train.threads="$THREADS" \
        --set train.steps=3 --set train.checkpoint_every=2 --set train.val_every=0 --set train.val_batches=1 \
        > "$WORK/dstrain-$size.rss"; then
        tail -n 5 "$WORK/dstrain-$size.log" >&2
        exit 1
    fi
    if ! python3 "$WORK/rss.py" "$WORK/hf-$size.log" "$PY" "$SRC/tests/bench/hf_bench.py" "$SRC/configs/small.toml" \
        "${SETS[@]}" --device cpu --fp32 --threads "$THREADS" --warmup 0 --steps 3 --save-at 2 "$WORK/hf-$size" \
        > "$WORK/hf-$size.rss"; then
        tail -n 5 "$WORK/hf-$size.log" >&2
        exit 1
    fi
    rm -rf "$WORK/runs-$size" "$WORK/hf-$size"
done

python3 - "$WORK" "$THREADS" $SIZES <<'PY'
import json, re, sys
work, threads, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
def read(path):
    return open(path).read()
rows, rss_ok, stall_ok = [], True, None
for size in sizes:
    d_log, h_log = read("%s/dstrain-%s.log" % (work, size)), read("%s/hf-%s.log" % (work, size))
    d_rss = int(read("%s/dstrain-%s.rss" % (work, size))) / 1024.0
    h_rss = int(read("%s/hf-%s.rss" % (work, size))) / 1024.0
    stall = re.search(r"checkpoint: ckpt-2 saving in the background; training stalled ([0-9.]+) ms", d_log)
    stall = float(stall.group(1)) / 1e3 if stall else float("nan")
    hf = json.loads(next(l for l in h_log.splitlines() if l.startswith("RESULT "))[7:])
    params = re.search(r"model: ([0-9.]+M) parameters", d_log).group(1)
    batch = re.search(r"x ([0-9]+) sequences x ([0-9]+) tokens", d_log)
    rows.append((size, params, "%sx%s" % batch.groups(), d_rss, h_rss, stall, hf["save_s"], hf["experts"]))
    rss_ok = rss_ok and d_rss <= h_rss
    if size == "large":
        stall_ok = stall <= 0.2
print("mem bench: peak RSS of one CPU process, %s threads, 3 steps with a save after step 2, FP32" % threads)
print("  %-6s %9s %9s %13s %18s %7s %18s %16s  %s" % ("size", "params", "batch", "dstrain MiB", "transformers MiB", "ratio",
                                                  "dstrain stall (s)", "torch.save (s)", "hf experts"))
for size, params, batch, d, h, stall, save, experts in rows:
    print("  %-6s %9s %9s %13.1f %18.1f %6.2fx %18.3f %16.3f  %s" % (size, params, batch, d, h, d / h, stall, save,
                                                                     experts))
print("target dstrain <= transformers at every size: %s" % ("met" if rss_ok else "NOT met"))
if stall_ok is not None:
    print("target first-save stall at the large size <= 0.2 s: %s" % ("met" if stall_ok else "NOT met"))
for size in sizes:
    table = re.search(r"^memory \(.*?(?=^peak:)", read("%s/dstrain-%s.log" % (work, size)), re.M | re.S)
    if table:
        print("dstrain's start-up memory table, %s:" % size)
        print(table.group(0).rstrip())
PY
