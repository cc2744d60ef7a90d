#!/usr/bin/env bash
# build.sh - the one entry point of dstrain.
#   ./build.sh deps                  install the Debian packages dstrain needs (root: apt-get;
#                                    otherwise prints the apt-get command)
#   ./build.sh build [MODE]          configure + build (MODE: release (default), debug, sanitize)
#   ./build.sh test [MODE]           install what the tests need too (Slurm, munge, rsvg-convert,
#                                    a Python venv in build/venv from tests/requirements.txt),
#                                    build, then run the test suite with ctest (no MODE: release,
#                                    then the sanitize suite); ends with the skipped tests and why
#                                    (with CI=true any skipped test but a GPU one fails the run)
#   ./build.sh train [CONFIG] [ARGS] build, then train (default configs/small.toml)
#   ./build.sh bench                 build, then run the CPU benchmark
#   ./build.sh gpu-bundle            build what a lent GPU machine runs (tests/gpu/device_check.sh):
#                                    portable binaries (x86-64-v2, sm_90, no MPI) and their
#                                    libraries, into the ignored folder .gpu/
# The binary lands in build/<mode>/dstrain.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES="build-essential cmake pkg-config libopenblas-openmp-dev libopenmpi-dev openmpi-bin
libhdf5-dev libzstd-dev libibverbs-dev libinih-dev libjansson-dev python3 procps"
# what only the tests need: the one-machine Slurm cluster of tests/cli/test_slurm.sh, the venv
# of tests/requirements.txt (pip fetches over HTTPS: the system CA bundle), rsvg-convert for
# the SVG test
TEST_PACKAGES="slurm-wlm munge python3-venv ca-certificates librsvg2-bin"
JOBS=$(nproc 2>/dev/null || echo 2)

missing_packages() {  # missing_packages [PACKAGES]: those of the list (default: the runtime set) not installed
    local p out=""
    for p in ${1:-$PACKAGES}; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
    done
    echo "$out"
}

deps() {  # deps [PACKAGES]
    local missing
    missing=$(missing_packages "${1:-$PACKAGES}")
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
    # (the || returns keep a failed step failing where a caller tests the status, which turns
    # set -e off inside the function)
    cmake -S . -B "build/$mode" -DCMAKE_BUILD_TYPE="$type" >/dev/null || return 1
    cmake --build "build/$mode" -j "$JOBS" || return 1
}

# The tests' Python: a venv in build/venv with tests/requirements.txt installed. pip runs only
# when the requirements changed since the last install (their hash is kept in a stamp file).
test_venv() {
    local venv=build/venv req=tests/requirements.txt sum
    sum=$(sha256sum "$req" | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python3" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$sum" ]; then
        echo "test venv: installing $(grep -v '^#' "$req" | tr '\n' ' ')into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
        echo "$sum" > "$venv/.requirements.sha256"
    fi
    DSTRAIN_TEST_PYTHON="$(pwd)/$venv/bin/python3"
    export DSTRAIN_TEST_PYTHON
}

test_deps() {
    [ -z "$(missing_packages "$PACKAGES $TEST_PACKAGES")" ] || deps "$PACKAGES $TEST_PACKAGES"
    test_venv
}

# skipped_report DIR: each test that ctest's output (DIR/ctest.out) lists as not run, with the
# first line of its output in LastTest.log that begins with "SKIP" (its reason); exit status 1
# when CI=true and one of them is not a GPU test.
skipped_report() {
    [ -r "$1/ctest.out" ] && [ -r "$1/Testing/Temporary/LastTest.log" ] || return 0
    awk -v ci="${CI:-}" '
        FNR == 1 { file++ }
        file == 1 && /^[0-9]+\/[0-9]+ Testing: / { name = $3; next }
        file == 1 && /^SKIP/ && name != "" && !(name in reason) { reason[name] = $0 }
        file == 2 && /^The following tests did not run:/ { listing = 1; next }
        file == 2 && listing && !/^[ \t]*[0-9]+ - / { listing = 0 }
        file == 2 && listing { sub(/^[^-]*- /, ""); notrun[++n] = $0 }
        END {
            bad = 0
            print "skipped: " n + 0 " test(s)"
            for (i = 1; i <= n; i++) {
                t = notrun[i]; sub(/ .*/, "", t)
                printf "  %-60s %s\n", notrun[i], (t in reason) ? reason[t] : "(no SKIP line)"
                if (t !~ /^gpu\./) bad++
            }
            if (bad && ci == "true") {
                print "FAIL: " bad " test(s) other than the GPU ones did not run (CI=true)"
                exit 1
            }
        }' "$1/Testing/Temporary/LastTest.log" "$1/ctest.out"
}

run_tests() {
    local mode=$1 rc=0 start=$SECONDS
    build "$mode" || { echo "== $mode build failed: its tests not run =="; return 1; }
    echo "== test suite ($mode) =="
    # the sanitizer suite leaves out tests labelled slow: long trainings whose code paths the
    # quick end-to-end tests already take under ASan + UBSan
    local skip=()
    [ "$mode" = sanitize ] && skip=(-LE slow)
    (cd "build/$mode" && ctest --output-on-failure -j "$JOBS" --timeout 900 "${skip[@]}" | tee ctest.out;
     exit "${PIPESTATUS[0]}") || rc=$?
    echo "== $mode suite: $((SECONDS - start)) s =="
    skipped_report "build/$mode" || rc=1
    return $rc
}

# gpu_bundle: the carried build of ../shared/GPU.md's plan. The device image has CUDA but not
# the project's Debian libraries, and a configure step there fails, so everything is built
# here: binaries for any x86-64-v2 CPU (no -march=native: SIGILL on a CPU without AVX-512),
# CUDA machine code for sm_90 (H100, H200), MPI left out; then every library ldd lists that
# is neither glibc nor CUDA's, packed with xz (libstdc++/libgcc_s apart, in fallback/: the
# device's own are newer and its CUDA libraries may need them). .gpu/ is git-ignored; name it
# in the device call's carry (64 MiB at most).
gpu_bundle() {
    local b=build/gpu-bundle out=.gpu
    [ -z "$(missing_packages)" ] || deps
    command -v nvcc > /dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || {
        echo "gpu-bundle: nvcc not found (install the CUDA toolkit or put /usr/local/cuda/bin on PATH)" >&2; exit 1; }
    command -v nvcc > /dev/null 2>&1 || export PATH=/usr/local/cuda/bin:$PATH
    cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=Release -DDSTRAIN_MARCH=x86-64-v2 -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DDSTRAIN_CUDA=ON -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DIBVERBS_LIB=IBVERBS_LIB-NOTFOUND > /dev/null
    local bins="dstrain tests/gpu/test_gpu_ops tests/gpu/test_gpu_moe tests/gpu/gpu_bench tests/ckpt_compare"
    local t targets="" known
    known=$(cmake --build "$b" --target help)
    for t in test_nccl test_gpu_optim test_gpu_fp8; do     # built only where NCCL / the fused optimizer / FP8 are
        grep -q "\.\.\. $t\$" <<< "$known" && bins="$bins tests/gpu/$t"
    done
    for t in $bins; do targets="$targets --target $(basename "$t")"; done
    cmake --build "$b" -j "$JOBS" $targets
    rm -rf "$out"
    mkdir -p "$out/bin" "$out/lib/fallback"
    for t in $bins; do cp "$b/$t" "$out/bin/"; strip --strip-debug "$out/bin/$(basename "$t")"; done
    # libraries: ldd's resolved paths, less glibc's and CUDA's (the device has its own)
    local lib name
    ldd "$out"/bin/* | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
        name=$(basename "$lib")
        case "$name" in
            libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*|ld-linux*) ;;
            libcuda.so*|libcudart.so*|libcublas*|libnccl*|libnvidia*|libnvrtc*|libnvJitLink*) ;;
            libstdc++.so*|libgcc_s.so*) cp -L "$lib" "$out/lib/fallback/$name" ;;
            *) cp -L "$lib" "$out/lib/$name" ;;
        esac
    done
    tar -C "$out" -cJf "$out/libs.tar.xz" lib
    rm -rf "$out/lib"
    {
        echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ): Release, -march=x86-64-v2, CUDA arch 90, no MPI"
        echo "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
        echo "libraries carried: $(tar -tJf "$out/libs.tar.xz" | grep -c '\.so')"
        echo "CUDA libraries expected on the device:"
        ldd "$out"/bin/* | grep -oE 'lib(cudart|cublas|cublasLt|nccl)\.so[.0-9]*' | sort -u | sed 's/^/  /'
    } > "$out/MANIFEST.txt"
    du -sh "$out/bin" "$out/libs.tar.xz" | sed "s/^/gpu-bundle: /"
    local kib
    kib=$(du -sk "$out" | cut -f1)
    [ "$kib" -le 65536 ] || { echo "gpu-bundle: $out is $kib KiB, over the 64 MiB carry limit" >&2; exit 1; }
    echo "gpu-bundle: $out ready ($kib KiB); on the device: bash tests/gpu/device_check.sh (carry $out)"
}

cmd=${1:-help}
shift || true
case "$cmd" in
    deps) deps ;;
    build) build "${1:-release}" ;;
    test)
        test_deps
        if [ $# -gt 0 ]; then run_tests "$1"
        else
            rc=0
            run_tests release || rc=1
            run_tests sanitize || rc=1
            echo "== test total: $SECONDS s =="
            exit $rc
        fi ;;
    train)
        build release
        cfg=${1:-configs/small.toml}
        shift || true
        exec build/release/dstrain train "$cfg" "$@" ;;
    bench)
        build release
        exec tests/bench/cpu_bench.sh build/release/dstrain ;;
    gpu-bundle) gpu_bundle ;;
    help|-h|--help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "build.sh: unknown command '$cmd' (deps, build, test, train, bench, gpu-bundle)" >&2; exit 2 ;;
esac
