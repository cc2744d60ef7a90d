#!/usr/bin/env bash
# tests/mpi/test_mpi_sdc.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - the silent data corruption check
# (issue 12, acceptance 3): configs/tiny.toml at dp = 2 with train.sdc_every = 5.
#   - a healthy job: the replicas' checksums agree at every check, the job finishes (exit 0)
#     (the replicas are equal bit for bit by construction: ZeRO-1's all-gather)
#   - DSTRAIN_DEBUG_FLIP_BIT=1:10 flips one bit of dp rank 1's weights after step 10: the check
#     of that step stops the job with status 5 and one line naming dp rank 1; no checkpoint
#     of a step after the flip is written. (The flip comes after the step's all-gather, as a
#     fault between two checks would: a flip before it would be overwritten by the gathered
#     weights, or copied to every replica if in the rank's own ZeRO-1 slice.)
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
TRAIN=("$DSTRAIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set parallel.dp=2 --set train.micro_batch_size=2
       --set train.sdc_every=5 --set train.checkpoint_every=5 --set train.steps=20)

run_mpi 2 ok.txt "${TRAIN[@]}" --set train.name=ok
check "healthy job: checksums agree, exit 0 (got $RC)" "[ $RC -eq 0 ] && ! grep -q 'corruption' ok.txt" || show ok.txt

run_mpi 2 flip.txt -x DSTRAIN_DEBUG_FLIP_BIT=1:10 "${TRAIN[@]}" --set train.name=flip
check "a flipped bit on rank 1 stops the job with status 5 (got $RC)" "[ $RC -eq 5 ]" || show flip.txt
check "one line names dp rank 1 and the step" \
    "grep -q 'silent data corruption check after step 10: the weights of dp rank 1 differ from dp rank 0' flip.txt" \
    || show flip.txt
check "no checkpoint after the flip" "[ -d runs/flip/ckpt-5 ] && [ -z \"\$(ls -d runs/flip/ckpt-1[0-9] runs/flip/ckpt-20 2> /dev/null)\" ]"
finish
