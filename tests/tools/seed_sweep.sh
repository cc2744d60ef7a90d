#!/usr/bin/env bash
# tests/tools/seed_sweep.sh - re-derive the margins of the tests whose assertions depend on a
# training trajectory (docs/results/2026-12-06-test-margins.md): runs a test's training once per
# seed and prints one line of the figures its assertions use. Not part of the suite.
# Usage: bash tests/tools/seed_sweep.sh text|tiny DSTRAIN_BINARY SOURCE_DIR WORK_DIR THREADS SEED...
#   text  tests/cli/test_text.sh's 300-step byte-level run on the license texts: final val loss
#         (nats and bits/byte), and per sample seed 3, 4, 5 the printable share and the share
#         of corpus words of a 400-byte sample at temperature 0.7, top-10
#   tiny  tests/cli/test_train.sh's 30-step run of configs/tiny.toml: mean loss of the first 5
#         and last 5 steps and their difference
# THREADS sets train.threads; OPENBLAS_CORETYPE (e.g. Haswell, Nehalem) in the environment picks
# another CPU's GEMM kernels, which mimics another machine. Runs one training at a time, niced.
set -u
MODE=${1:?usage: seed_sweep.sh text|tiny DSTRAIN_BINARY SOURCE_DIR WORK_DIR THREADS SEED...}
BIN=$(realpath "${2:?}")
SRC=$(realpath "${3:?}")
WORK=${4:?}
TH=${5:?}
shift 5
PY=${DSTRAIN_TEST_PYTHON:-python3}
mkdir -p "$WORK" && cd "$WORK" || exit 1

text_run() {  # text_run SEED
    local n=text-s$1-t$TH
    if [ ! -s text/meta.json ]; then
        cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > corpus.txt
        "$BIN" prepare --text corpus.txt --out text > /dev/null || exit 1
    fi
    nice "$BIN" train "$SRC/configs/small.toml" --set train.name=$n --set train.run_dir=runs \
        --set data.dir=text --set data.synthetic=false --set model.num_hidden_layers=2 \
        --set model.first_k_dense_replace=1 --set train.seq_len=64 --set train.micro_batch_size=16 \
        --set train.steps=300 --set train.val_every=0 --set train.val_batches=8 \
        --set train.checkpoint_every=0 --set optim.lr=3e-3 --set optim.warmup_steps=20 \
        --set train.threads="$TH" --set train.seed="$1" > $n.txt 2>&1 || { echo "$n: train failed"; return; }
    for ss in 3 4 5; do
        nice "$BIN" sample --ckpt runs/$n/ckpt-300 --prompt "The " --tokens 400 --temperature 0.7 \
            --top-k 10 --seed $ss > $n.sample$ss.txt 2> /dev/null
    done
    "$PY" - $n <<'PY'
import json, math, re, sys
n = sys.argv[1]
v = [json.loads(l) for l in open("runs/%s/metrics.jsonl" % n) if '"final"' in l][-1]["val_loss"]
corpus = set(re.findall(r"[A-Za-z]+", open("corpus.txt").read()))
out = ["%s val %.4f nats %.4f bits/byte" % (n, v, v / math.log(2))]
for ss in (3, 4, 5):
    t = open("%s.sample%d.txt" % (n, ss), "rb").read()
    words = re.findall(r"[A-Za-z]+", t.decode("latin-1"))[1:-1]
    out.append("seed%d printable %d words %d" % (ss, sum(32 <= b < 127 or b in (9, 10) for b in t)
               * 100 // max(len(t), 1), 100 * sum(w in corpus for w in words) // max(len(words), 1)))
print(" | ".join(out), flush=True)
PY
    rm -rf runs/$n $n.*
}

tiny_run() {  # tiny_run SEED
    local n=tiny-s$1-t$TH
    nice "$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data \
        --set train.steps=30 --set train.name=$n --set train.seed="$1" --set train.threads="$TH" \
        > $n.txt 2>&1 || { echo "$n: train failed"; return; }
    "$PY" - runs/$n/metrics.jsonl $n <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"type":"step"' in l]
first = sum(s["loss"] for s in steps[:5]) / 5
last = sum(s["loss"] for s in steps[-5:]) / 5
print("%s first5 %.4f last5 %.4f drop %.4f" % (sys.argv[2], first, last, first - last), flush=True)
PY
    rm -rf runs/$n $n.txt
}

for seed in "$@"; do
    case $MODE in
        text) text_run "$seed" ;;
        tiny) tiny_run "$seed" ;;
        *) echo "seed_sweep.sh: unknown mode '$MODE' (text or tiny)"; exit 1 ;;
    esac
done
