#!/usr/bin/env bash
# tests/mpi/test_mpi_capacity.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - the expert-row pool sized by
# 'moe.capacity_factor' (model/moe.c, model/layers.h moe_plan_pool), on configs/tiny.toml:
#   - memory: at (DP, EP) = (4, 4), factor 0 (the worst case) and 3, one step each; the start-up
#     table's "expert-row pool" bytes equal the formula
#         MoE layers x ceil(f x B*T*K) rows x (2C + 3F) values x 4 B   (f = 0: EP x B*T*K rows)
#     (tiny: 2 MoE layers (layer 1 and the MTP block), B*T*K = 2*16*2 = 64, 2C + 3F = 112), so
#     the factor-3 pool is exactly 3/4 of the worst case; both runs give the same step loss bit
#     for bit (the pool's size changes no arithmetic)
#   - overflow: at (DP, EP) = (2, 2), factor 1 (the pool holds exactly the mean, so any
#     imbalance overflows it) with the balance loss and the bias update off (alpha = gamma = 0):
#     the job exits non-zero within the bound and prints exactly one line naming the key, the
#     layer, the rows needed (more than the pool) and the pool (= the mean 4*16*2 = 128 rows)
#   - a factor below 1 (and not 0) is a config error before anything runs
# Why factor 3 may run at EP 4: tiny's step-1 forwards and its validation need at most 2.2x the
# mean on one rank (measured: factor 2.2 passes one step, 2 stops at layer 1 with 136 rows);
# later steps reach 4x (topk_group = 1 puts a token's K experts in one group, which lives on one
# rank), which is why the default factor 4 keeps the worst case up to EP 4.
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
ARGS=("$SRC/configs/tiny.toml" --set data.dir="$SCRATCH/data" --set train.run_dir="$SCRATCH/runs"
      --set train.threads=1 --set train.steps=1 --set train.val_batches=1)

# pool_bytes OUT: the bytes the start-up table gives the expert-row pool (empty if none)
pool_bytes() { sed -n 's/^  expert-row pool .*(\([0-9]*\) bytes of the above:.*/\1/p' "$1"; }
# step_loss RUN: step 1's loss as written in metrics.jsonl (text, compared exactly)
step_loss() { grep '"type": *"step"' "$SCRATCH/runs/$1/metrics.jsonl" | head -1 | sed 's/.*"loss": *\([^,]*\),.*/\1/'; }

ROW=$(((2 * 32 + 3 * 16) * 4))       # bytes of one kept row: 2C + 3F FP32 values
MEAN=$((2 * 16 * 2))                 # B*T*K at micro_batch_size 2
for f in 0 3; do
    run_mpi 4 f$f.txt "$DSTRAIN" train "${ARGS[@]}" --set train.name=f$f --set parallel.dp=4 --set parallel.ep=4 \
        --set train.micro_batch_size=2 --set moe.capacity_factor=$f
    check "factor $f at (4, 4) trains (exit $RC, ${ELAPSED}s)" '[ $RC -eq 0 ]' || show f$f.txt
done
WORST=$((2 * 4 * MEAN * ROW))        # 229376
POOL3=$((2 * 3 * MEAN * ROW))        # ceil(3 x 64) = 192 rows: 172032
check "worst-case pool: $(pool_bytes f0.txt) bytes printed, $WORST by the formula" \
    '[ "$(pool_bytes f0.txt)" = "$WORST" ] && grep -q "worst case $WORST bytes" f0.txt' || show f0.txt
check "factor-3 pool: $(pool_bytes f3.txt) bytes printed, $POOL3 by the formula (3/4 of $WORST)" \
    '[ "$(pool_bytes f3.txt)" = "$POOL3" ] && grep -q "192 rows per MoE layer and slot = 3 x the mean 64 (.moe.capacity_factor. = 3, at most ep 4 x)" f3.txt' \
    || show f3.txt
check "the pool's size changes no loss: step 1 $(step_loss f0) and $(step_loss f3)" \
    '[ -n "$(step_loss f0)" ] && [ "$(step_loss f0)" = "$(step_loss f3)" ]'

run_mpi 2 over.txt "$DSTRAIN" train "${ARGS[@]}" --set train.name=over --set parallel.dp=2 --set parallel.ep=2 \
    --set train.micro_batch_size=4 --set train.steps=3 --set moe.capacity_factor=1 \
    --set moe.balance_alpha=0 --set moe.bias_update_speed=0
check "an overflowing pool stops the job (exit $RC, ${ELAPSED}s)" '[ $RC -ne 0 ] && [ $RC -ne 124 ]' || show over.txt
LINE=$(grep "dstrain: moe: " over.txt)
RE="dstrain: moe: layer [12] needs ([0-9]+) expert rows on this rank, more than its pool of 128 \('moe.capacity_factor' = 1 x the mean 128 rows\); raise 'moe.capacity_factor' \(0: the worst case, 256 rows\)$"
check "one line names the key, the layer and the rows: $LINE" \
    '[ "$(grep -c "dstrain: moe: " over.txt)" -eq 1 ] && [[ $LINE =~ $RE ]] && [ "${BASH_REMATCH[1]}" -gt 128 ]' \
    || show over.txt

"$DSTRAIN" train "${ARGS[@]}" --set moe.capacity_factor=0.5 > low.txt 2>&1
RC=$?
check "factor 0.5 is a config error (exit $RC)" '[ $RC -eq 1 ] && [ "$(wc -l < low.txt)" -eq 1 ] &&
    grep -q "config: .moe.capacity_factor. = 0.5 must be 0 (the worst case) or >= 1" low.txt' || show low.txt
finish
