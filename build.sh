#!/usr/bin/env bash
# build.sh - the one entry point of dstrain.
#   ./build.sh deps                  install the Debian packages dstrain needs (root: apt-get;
#                                    otherwise prints the apt-get command)
#   ./build.sh build [MODE]          configure + build (MODE: release (default), debug, sanitize)
#   ./build.sh test [MODE]           build, then run the test suite with ctest
#                                    (no MODE: release, then the sanitize suite)
#   ./build.sh train [CONFIG] [ARGS] build, then train (default configs/small.toml)
#   ./build.sh bench                 build, then run the CPU benchmark
# The binary lands in build/<mode>/dstrain.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES="build-essential cmake pkg-config libopenblas-openmp-dev libopenmpi-dev openmpi-bin
libhdf5-dev libzstd-dev libibverbs-dev libinih-dev libjansson-dev python3 procps"
JOBS=$(nproc 2>/dev/null || echo 2)

missing_packages() {
    local p out=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
    done
    echo "$out"
}

deps() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then echo "deps: all packages present"; return 0; fi
    if [ "$(id -u)" -eq 0 ]; then
        echo "deps: installing$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $missing
    else
        echo "deps: missing packages:$missing"
        echo "deps: run as root:  apt-get install -y$missing"
        exit 1
    fi
}

build() {
    local mode=${1:-release} type
    case "$mode" in
        release) type=Release ;; debug) type=Debug ;; sanitize) type=Sanitize ;;
        *) echo "build.sh: unknown mode '$mode' (release, debug, sanitize)" >&2; exit 2 ;;
    esac
    [ -z "$(missing_packages)" ] || deps
    cmake -S . -B "build/$mode" -DCMAKE_BUILD_TYPE="$type" >/dev/null
    cmake --build "build/$mode" -j "$JOBS"
}

run_tests() {
    local mode=$1
    build "$mode"
    echo "== test suite ($mode) =="
    # the sanitizer suite leaves out tests labelled slow: long trainings whose code paths the
    # quick end-to-end tests already take under ASan + UBSan
    local skip=()
    [ "$mode" = sanitize ] && skip=(-LE slow)
    (cd "build/$mode" && ctest --output-on-failure -j "$JOBS" --timeout 900 "${skip[@]}")
}

cmd=${1:-help}
shift || true
case "$cmd" in
    deps) deps ;;
    build) build "${1:-release}" ;;
    test)
        if [ $# -gt 0 ]; then run_tests "$1"
        else run_tests release; run_tests sanitize; fi ;;
    train)
        build release
        cfg=${1:-configs/small.toml}
        shift || true
        exec build/release/dstrain train "$cfg" "$@" ;;
    bench)
        build release
        exec tests/bench/cpu_bench.sh build/release/dstrain ;;
    help|-h|--help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "build.sh: unknown command '$cmd' (deps, build, test, train, bench)" >&2; exit 2 ;;
esac
