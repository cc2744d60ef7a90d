# tests/gpu/test_gpu_resume.sh - on the GPU, resume is bit for bit: 12 steps straight equal
# 5 steps, stop, --resume latest, 7 more, in every logged loss (17 significant digits, so the
# doubles compare exactly) and in the final weights, moments and state (ckpt_compare), for
# fp32 and bf16. The CUDA kernels are deterministic (no float atomics except whole-number
# counts, reduction orders fixed by the shapes, cuBLASLt algorithms chosen by shape).
# Without a GPU: "SKIP: no CUDA GPU (...)", exit 77.
# Usage: bash test_gpu_resume.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR PROBE CKPT_COMPARE
set -u
BIN=${1:?usage: test_gpu_resume.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR PROBE CKPT_COMPARE}
SRC=${2:?}
SCRATCH=${3:?}
PROBE=${4:?}
COMPARE=${5:?}
. "$SRC/tests/cli/lib.sh"
if ! "$PROBE" --probe > probe.txt 2>&1; then
    sed 's/^SKIP: no CUDA GPU: \(.*\)/SKIP: no CUDA GPU (\1)/' probe.txt
    exit 77
fi

losses() {  # losses RUN: "step loss mtp_loss" for every step record, exact text
    python3 -c "
import json
for l in open('runs/$1/metrics.jsonl'):
    r = json.loads(l)
    if r['type'] == 'step': print(r['step'], repr(r['loss']), repr(r['mtp_loss']))"
}

for prec in fp32 bf16; do
    TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
           --set train.val_every=0 --set train.val_batches=1 --set train.device=cuda
           --set train.precision=$prec --set optim.warmup_steps=8)
    "${TRAIN[@]}" --set train.name=straight-$prec --set train.steps=12 > straight-$prec.txt 2>&1
    check "$prec: straight run ($(tail -c 200 straight-$prec.txt))" "[ -d runs/straight-$prec/ckpt-12 ]"
    "${TRAIN[@]}" --set train.name=split-$prec --set train.steps=5 > split1-$prec.txt 2>&1
    check "$prec: first part" "[ -d runs/split-$prec/ckpt-5 ]"
    "${TRAIN[@]}" --set train.name=split-$prec --set train.steps=12 --resume latest > split2-$prec.txt 2>&1
    check "$prec: resumed from ckpt-5" "grep -q \"resume: from 'runs/split-$prec/ckpt-5'\" split2-$prec.txt"
    check "$prec: 12 identical step losses" \
        "diff <(losses straight-$prec) <(losses split-$prec) > diff-$prec.txt && [ \$(losses split-$prec | wc -l) -eq 12 ]"
    check "$prec: final weights, moments and state bit-identical" \
        "'$COMPARE' runs/straight-$prec/ckpt-12 runs/split-$prec/ckpt-12 > /dev/null"
done
finish
