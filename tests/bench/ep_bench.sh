#!/usr/bin/env bash
# tests/bench/ep_bench.sh - MoE dispatch + combine throughput at EP = 2 and 4 for the MoE layer of
# configs/small.toml (hidden 128, 16 experts in 4 groups, top-4 of the best 2 groups, 16 x 128
# tokens per rank), next to raw MPI_Alltoallv of the same bytes in the same run, with the ratio
# (aim: >= 80%). The driver (tests/bench/ep_bench.c) says what each figure measures.
# Usage: tests/bench/ep_bench.sh [BIN_DIR] [ITERS]   (BIN_DIR holds ep_bench; default
#        build/release/tests, ITERS 30)
# Timings are only meaningful on an otherwise idle machine, with no more ranks than cores: on a
# 2-core machine the EP = 4 run shares 2 cores among 4 ranks and is reported for completeness.
set -euo pipefail
BIN_DIR=${1:-build/release/tests}
ITERS=${2:-30}
if ! command -v mpirun > /dev/null 2>&1; then echo "ep_bench: mpirun not found (install openmpi-bin)"; exit 1; fi
if [ ! -x "$BIN_DIR/ep_bench" ]; then echo "ep_bench: no '$BIN_DIR/ep_bench' (build with MPI first)"; exit 1; fi
cores=$(nproc 2> /dev/null || echo 1)
for ep in 2 4; do
    [ "$ep" -gt "$cores" ] && echo "(EP=$ep: $ep ranks on $cores cores, oversubscribed: timings are indicative only)"
    timeout 300 mpirun --allow-run-as-root --oversubscribe -np "$ep" "$BIN_DIR/ep_bench" 2048 128 16 4 4 2 "$ITERS"
done
