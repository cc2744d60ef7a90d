#!/usr/bin/env bash
# tests/mpi/test_mpi_pp_trace.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - the trace of a pipelined run
# (issue 11, acceptance 5's format check): `mpirun -np 4 dstrain train configs/tiny.toml --set
# parallel.pp=4 --set parallel.schedule=dualpipe --set train.trace_steps=2` writes
# <run>/trace.json, which tests/tools/check_trace.py accepts as Chrome trace-event JSON (event
# fields, matched begin/end, time order per track) with every rank 0..3 present, each with its
# compute track, and, per rank, the instructions of one step of its
# DualPipe list (runtime/pipeline/executor.h names the spans): pp 4 with 8 micro-batches gives
# every rank FB instructions (the steady phase) and RECVs, each waited on a link track.
# Then acceptance 3 (overlap is real), with the EP exchanges over MPI: (PP, DP, EP) = (2, 2, 2)
# under dualpipe (4 ranks: EP groups lie inside the DP replicas), step 2 traced; tests/tools/check_overlap.py checks from the order
# of the spans that inside every FB instruction the forward's dispatch of each MoE block is
# posted before a backward phase runs and waited after it (check_trace.py first: the format).
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
PY=${DSTRAIN_TEST_PYTHON:-python3}
CHECK="$SRC/tests/tools/check_trace.py"
ARGS=("$SRC/configs/tiny.toml" --set data.dir="$SCRATCH/data" --set train.run_dir="$SCRATCH/runs"
      --set train.checkpoint_every=0 --set train.steps=3 --set train.val_every=0
      --set train.threads=1 --set model.num_hidden_layers=8 --set train.grad_accum=8 --set train.micro_batch_size=2)

run_mpi 4 pp4.txt "$DSTRAIN" train "${ARGS[@]}" --set train.name=pp4 --set parallel.pp=4 \
    --set parallel.schedule=dualpipe --set train.trace_steps=2
check "pp 4 dualpipe with train.trace_steps=2 trains (exit $RC, ${ELAPSED}s)" '[ $RC -eq 0 ]' || show pp4.txt
check "it wrote runs/pp4/trace.json" '[ -s runs/pp4/trace.json ]'
"$PY" "$CHECK" runs/pp4/trace.json --ranks 4 --track compute \
    --span "step 2=1" --span FB=1+ --span F=1+ --span B=1+ --span "RECV F=1+" --span "RECV B=1+" --span "recv F=1+" --span "recv B=1+" > check.txt 2>&1
check "check_trace accepts it: $(tail -n 3 check.txt)" "grep -q '^check_trace: ok' check.txt"

run_mpi 4 ep2.txt "$DSTRAIN" train "${ARGS[@]}" --set train.name=ep2 --set parallel.pp=2 --set parallel.dp=2 \
    --set parallel.ep=2 --set train.micro_batch_size=1 --set parallel.schedule=dualpipe --set train.trace_steps=2
check "(PP, DP, EP) = (2, 2, 2) dualpipe with a trace trains (exit $RC, ${ELAPSED}s)" '[ $RC -eq 0 ]' || show ep2.txt
"$PY" "$CHECK" runs/ep2/trace.json --ranks 4 --track compute --track "ep lane F" --track "ep lane B" \
    --span FB=1+ > check2.txt 2>&1
check "check_trace accepts it: $(tail -n 3 check2.txt)" "grep -q '^check_trace: ok' check2.txt"
check "no event was dropped (the trainer's room per step holds every phase)" \
    "\"$PY\" -c 'import json, sys; sys.exit(json.load(open(\"runs/ep2/trace.json\"))[\"otherData\"][\"dropped_events\"] != 0)'"
"$PY" "$SRC/tests/tools/check_overlap.py" runs/ep2/trace.json > overlap.txt 2>&1
check "FB overlaps each forward dispatch with a backward phase: $(tail -n 3 overlap.txt)" \
    "grep -q '^check_overlap: ok' overlap.txt"

finish
