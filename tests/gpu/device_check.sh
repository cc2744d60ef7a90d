#!/usr/bin/env bash
# tests/gpu/device_check.sh - the one prepared call on a lent GPU machine: every GPU check and
# figure of issue 13 under one deadline, from binaries built elsewhere (./build.sh gpu-bundle:
# the device image has CUDA but not the project's libraries, and no package registry).
#
# Stages, in order; each runs under `timeout` with the time left (at most its cap), a stage
# with under 20 s left is skipped, and later stages run whatever earlier ones returned:
#   0 env       nvidia-smi, driver/CUDA/cuDNN/torch versions, CPU flags, the library bundle
#               unpacked and ldd's missing libraries (CUDA's looked up in python's nvidia/*)
#   1 ops       op parity CUDA vs CPU, fp32 + bf16 (test_gpu_ops; DSTRAIN_TEST_SEED printed)
#   2 moe       MoE routing and permutation parity (test_gpu_moe), then the NCCL, fused-
#               optimizer and FP8 tests (test_gpu_fp8: quantisers bit-exact, FP8 GEMMs on
#               cuBLASLt and the tiled kernel) where the bundle has them
#   3 ceilings  tests/gpu/ceilings.py (torch): HBM copy, BF16 GEMM at bench-m's shapes, grouped
#               GEMM, fused attention, FP8 block-scaled GEMM
#   4 bench-s   gpu_bench on configs/bench-s.toml, a few steps
#   5 bench-m   gpu_bench on configs/bench-m.toml with the per-op profile (tokens/s, MFU
#               against the datasheet peak, time per op family, wall vs GPU time, peak memory),
#               then bench-m without MTP (the transformers comparison) if 80 s are left
#   6 e2e       GPU resume bit-identity, GPU vs CPU loss curves
#   7 hf        only with >= 150 s left: transformers on bench-m (tests/bench/hf_bench.py)
# Without a GPU every GPU stage reports "no GPU" and the script still finishes in order.
#
# Usage: bash tests/gpu/device_check.sh [--deadline S] [--stages LIST] [--bundle DIR]
#   --deadline S   seconds from the start for everything (default 530: one 10-minute call
#                  with room for the machine's transfers)
#   --stages LIST  comma-separated stage numbers (default 0,1,2,3,4,5,6,7; 0 always runs)
#   --bundle DIR   the gpu-bundle folder (default .gpu in the repository root)
# Output: at most 8 files under $OUT (default ./device-out): env.txt, parity.txt, ceilings.txt,
# bench.txt, e2e.txt, hf.txt, summary.txt (one line per stage, also printed last).
# Exit status: 0 when no stage failed (skips for want of a GPU or of time are not failures).
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DEADLINE=530
STAGES=0,1,2,3,4,5,6,7
BUNDLE=$SRC/.gpu
while [ $# -gt 0 ]; do
    case "$1" in
        --deadline) DEADLINE=${2:?--deadline needs seconds}; shift 2 ;;
        --stages) STAGES=0,${2:?--stages needs a list}; shift 2 ;;
        --bundle) BUNDLE=${2:?--bundle needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "device_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEADLINE" in ''|*[!0-9]*) echo "device_check: --deadline '$DEADLINE' is not whole seconds" >&2; exit 2 ;; esac
[ -x "$BUNDLE/bin/dstrain" ] || {
    echo "device_check: no bundle at '$BUNDLE' (run ./build.sh gpu-bundle first and carry .gpu)" >&2; exit 2; }
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/dstrain-device.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
BIN=$BUNDLE/bin
START=$(date +%s)
export DSTRAIN_TEST_SEED=${DSTRAIN_TEST_SEED:-$START}
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=passive
FAILED=0
GPU=no
: > "$WORK/summary"

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
want() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
note() { printf '%s\n' "$*" >> "$WORK/summary"; }

# stage N NAME CAP FILE CMD...: runs CMD under the deadline, appends to $OUT/FILE, records
# the outcome (rc 77: skipped, the command said why on its last "SKIP" line)
stage() {
    local n=$1 name=$2 cap=$3 file=$OUT/$4 t0 rc lim
    shift 4
    lim=$(( $(left) - 5 ))
    [ $lim -gt "$cap" ] && lim=$cap
    if [ $lim -lt 20 ]; then note "stage $n $name: skipped ($(left) s left)"; return 0; fi
    echo "==== stage $n $name (limit ${lim} s, $(date -u +%H:%M:%S)) ====" >> "$file"
    t0=$(date +%s)
    timeout -k 5 "$lim" bash -c '"$@"' stage "$@" >> "$file" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 )) what
    case $rc in
        0) what="ok" ;;
        77) what="skipped: $(grep -h '^SKIP' "$file" | tail -1 | cut -c1-160)" ;;
        124|137) what="TIMEOUT after ${lim} s"; FAILED=1 ;;
        *) what="FAIL (exit $rc)"; FAILED=1 ;;
    esac
    note "stage $n $name: $what (${dt} s)$(stage_figures "$n" "$file")"
    echo "---- stage $n $name: $what (${dt} s); the end of $(basename "$file"):"
    tail -4 "$file"
    return 0
}

# The figures a stage's summary line carries, read from its output.
stage_figures() {
    local n=$1 file=$2
    case $n in
        0) echo "; GPU $GPU ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2> /dev/null |
                head -1 | cut -c1-80 || true));" \
                "$(sed -n '/^missing libraries/,/^(end/p' "$file" | grep -vc -E '^missing|^\(end') missing libraries" ;;
        1|2) grep -hE '^[0-9]+ passed, [0-9]+ failed' "$file" | tr '\n' ';' | sed 's/^/; /; s/;$//' ;;
        3) grep -c '^CEILING' "$file" | grep -v '^0$' | sed 's/^/; ceilings measured: /' ;;
        4|5) grep -h ' MFU of ' "$file" | sed 's/ on [^:]*: / /; s/^/; /' | cut -c1-220 | tr -d '\n'
             [ "$n" = 5 ] && grep -hE '^memory:|^profiled step|GPU time in ops' "$file" | head -3 |
                 sed 's/^/; /' | cut -c1-120 | tr -d '\n' ;;
        6) grep -hE '^[0-9]+ passed, [0-9]+ failed' "$file" | tr '\n' ';' | sed 's/^/; /; s/;$//' ;;
        7) python3 - "$OUT/bench.txt" "$file" <<'PY' 2> /dev/null ;;
import json, sys
def result(path, label):
    for line in open(path):
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            if r.get("label") == label and "tokens_per_s" in r: return r["tokens_per_s"]
ours, hf = result(sys.argv[1], "bench-m-nomtp"), result(sys.argv[2], "hf")
if ours and hf: print("; dstrain / transformers on bench-m without MTP: %.2fx tokens/s (%.0f vs %.0f)" % (ours / hf, ours, hf))
PY
    esac
}

# ---- stage 0: the machine, the bundle, the libraries ----
env_report() {
    echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ), seed $DSTRAIN_TEST_SEED, deadline ${DEADLINE} s"
    cat "$BUNDLE/MANIFEST.txt" 2> /dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | head -3
    nvcc --version 2>&1 | tail -2
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
torch.backends.cudnn.version(), "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1 | tail -1
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); flags:" \
        "$(grep -m1 -ow -E 'avx512f' /proc/cpuinfo || echo no-avx512)" \
        "$(grep -m1 -ow -E 'avx2' /proc/cpuinfo || echo no-avx2)" \
        "$(grep -m1 -ow -E 'sse4_2' /proc/cpuinfo || echo no-sse4_2: x86-64-v2 binaries cannot run)"
    echo "missing libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):"
    ldd "$BIN"/* 2>&1 | grep -E 'not found|GLIBC' | sort -u || true
    echo "(end of missing libraries)"
    "$BIN/test_gpu_ops" --probe || true
}

# The CUDA libraries the binaries need, where the system lacks them: torch's nvidia/* wheels.
find_cuda_libs() {
    local lib dir
    for lib in $(ldd "$BIN"/* 2>/dev/null | awk '/not found/{print $1}' | sort -u); do
        dir=$(python3 -c 'import nvidia, os, sys; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)
        [ -n "$dir" ] || continue
        dir=$(find "$dir/nvidia" -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
        [ -n "$dir" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$dir && echo "found $lib in $dir"
    done
}

setup_libs() {
    mkdir -p "$WORK/libs"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$BUNDLE/libs.tar.xz" "$WORK/libs" || { echo "device_check: cannot unpack $BUNDLE/libs.tar.xz"; return 1; }
    export LD_LIBRARY_PATH=$WORK/libs/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    [ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/usr/local/cuda/lib64
    find_cuda_libs
    # an old libstdc++ on the device: the bundle's (fallback/) then
    if ldd "$BIN"/* 2>&1 | grep -q "GLIBCXX.*not found"; then
        export LD_LIBRARY_PATH=$WORK/libs/lib/fallback:$LD_LIBRARY_PATH
        echo "using the bundle's libstdc++/libgcc_s (fallback)"
    fi
}

# ---- stages 1-7 ----
gpu_or_skip() { [ $GPU = yes ] || { echo "SKIP: no GPU (test_gpu_ops --probe)"; return 77; }; }

parity_extra() {     # the bundle's optional GPU tests (NCCL, fused optimizer, FP8)
    local t rc=0 r
    for t in test_nccl test_gpu_optim test_gpu_fp8; do
        [ -x "$BIN/$t" ] || continue
        "$BIN/$t"; r=$?
        [ $r -eq 0 ] || [ $r -eq 77 ] || rc=$r
    done
    return $rc
}
moe_stage() { gpu_or_skip || return $?; "$BIN/test_gpu_moe"; local rc=$?; parity_extra || rc=1; return $rc; }

ceilings() { gpu_or_skip || return $?; python3 "$SRC/tests/gpu/ceilings.py" "$SRC/configs/bench-m.toml"; }

bench() {           # bench CONFIG LABEL ARGS...
    local cfg=$1 label=$2
    shift 2
    gpu_or_skip || return $?
    "$BIN/gpu_bench" "$SRC/$cfg" --label "$label" "$@"
}

bench_m() {          # with MTP and the profile, then without MTP (transformers' V3 has none)
    bench configs/bench-m.toml bench-m --steps 4 --warmup 2 --profile || return $?
    [ "$(left)" -ge 80 ] || { echo "bench-m-nomtp: skipped, $(left) s left"; return 0; }
    bench configs/bench-m.toml bench-m-nomtp --steps 3 --warmup 1 --set model.num_nextn_predict_layers=0
}

e2e() {
    gpu_or_skip || return $?
    local rc=0
    bash "$SRC/tests/gpu/test_gpu_resume.sh" "$BIN/dstrain" "$SRC" "$WORK/resume" "$BIN/test_gpu_ops" \
        "$BIN/ckpt_compare" || rc=1
    bash "$SRC/tests/gpu/test_gpu_train.sh" "$BIN/dstrain" "$SRC" "$WORK/train" "$BIN/test_gpu_ops" \
        "$BIN/ckpt_compare" || rc=1
    return $rc
}

hf() {
    gpu_or_skip || return $?
    [ "$(left)" -ge 150 ] || { echo "SKIP: under 150 s left for the transformers run"; return 77; }
    python3 "$SRC/tests/bench/hf_bench.py" "$SRC/configs/bench-m.toml" --steps 5 --warmup 2
    local rc=$?
    [ $rc -eq 3 ] && { echo "SKIP: transformers cannot build this model (hf_bench exit 3)"; return 77; }
    return $rc
}

main() {
    setup_libs > "$WORK/libs.txt" 2>&1
    "$BIN/test_gpu_ops" --probe > /dev/null 2>&1 && GPU=yes
    stage 0 env 40 env.txt bash -c 'cat "$WORK/libs.txt"; env_report'
    cd "$WORK" || exit 1
    want 1 && stage 1 ops 150 parity.txt "$BIN/test_gpu_ops"
    want 2 && stage 2 moe 110 parity.txt moe_stage
    want 3 && stage 3 ceilings 100 ceilings.txt ceilings
    want 4 && stage 4 bench-s 60 bench.txt bench configs/bench-s.toml bench-s --steps 3 --warmup 1
    want 5 && stage 5 bench-m 180 bench.txt bench_m
    want 6 && stage 6 e2e 150 e2e.txt e2e
    want 7 && stage 7 hf 200 hf.txt hf
    note "total $(( $(date +%s) - START )) s of ${DEADLINE}; seed $DSTRAIN_TEST_SEED; commit" \
        "$(sed -n 's/^commit //p' "$BUNDLE/MANIFEST.txt" 2> /dev/null)"
    cp "$WORK/summary" "$OUT/summary.txt"
    echo "==== summary ===="
    cat "$OUT/summary.txt"
    return $FAILED
}
export -f gpu_or_skip parity_extra moe_stage ceilings bench bench_m e2e hf left env_report
export BIN SRC GPU WORK START DEADLINE BUNDLE
main
