#!/usr/bin/env bash
# tests/bench/gpu_bench.sh - the GPU benchmark of issue 6, as the timing stages of
# tests/gpu/device_check.sh: bench-s and bench-m training steps (tokens/s, MFU against the
# device's datasheet dense BF16 peak, GPU time per op family, wall vs GPU time, peak memory),
# optionally the GPU tests before and the same bench-m config in Hugging Face transformers
# after. Nothing is configured or built here: the binaries come from `./build.sh gpu-bundle`,
# run on the machine that has the project's libraries (a lent GPU machine has neither them
# nor a package registry); carry the .gpu folder to the GPU machine.
#
# Usage: tests/bench/gpu_bench.sh [--skip-tests] [--quick] [--deadline S] [BUNDLE_DIR]
#   --skip-tests   time only (no parity tests, no resume/loss-curve runs)
#   --quick        bench-s only (after the tests unless --skip-tests)
#   --deadline S   seconds for everything (default 530: fits one 10-minute device call)
#   BUNDLE_DIR     default .gpu (./build.sh gpu-bundle)
# Output and exit status: those of device_check.sh ($OUT, default ./device-out; summary.txt).
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SKIP_TESTS=0
QUICK=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-tests) SKIP_TESTS=1; shift ;;
        --quick) QUICK=1; shift ;;
        --deadline) ARGS+=(--deadline "${2:?--deadline needs seconds}"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) ARGS+=(--bundle "$1"); shift ;;
    esac
done
stages=4
[ $QUICK = 0 ] && stages=3,4,5,7
[ $SKIP_TESTS = 0 ] && stages=1,2,$stages$([ $QUICK = 0 ] && echo ,6)
exec bash "$SRC/tests/gpu/device_check.sh" --stages "$stages" "${ARGS[@]}"
