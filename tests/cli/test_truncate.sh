# tests/cli/test_truncate.sh - a token shard truncated under a running job (issue 12): the job
# ends with status 1 and one stderr line naming the shard, not SIGBUS (status 135, which the
# old code gave: it read windows from an mmap of the shard, and a page past the new end of a
# truncated file raises SIGBUS). configs/tiny.toml; the train shard (~90 KB) is cut to 2 KiB
# after the first step, so the next windows lie past its end.
# Usage: bash test_truncate.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_truncate.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"
# 3000 steps take ~7 s here; the shard is cut right after the first step
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set train.steps=3000)
"${TRAIN[@]}" --set train.name=t > t.txt 2> t.err &
pid=$!
for _ in $(seq 300); do
    grep -q '"type":"step"' runs/t/metrics.jsonl 2> /dev/null && break
    sleep 0.1
done
truncate -s 2048 data/train_000000.bin
wait $pid
rc=$?
check "exit 1, not a signal (got $rc)" "[ $rc -eq 1 ]"
check "one stderr line naming the shard ($(cat t.err))" \
    "[ \$(wc -l < t.err) -eq 1 ] && grep -q \"data: 'data/train_000000.bin' was truncated while training\" t.err"
finish
