#!/bin/bash
# tests/fuzz/fuzz_ckpt.sh - fuzz every reader of checkpoint bytes for a bounded time.
# Not part of ctest (it runs for minutes); run it by hand after changing checkpoint/.
#
# usage: tests/fuzz/fuzz_ckpt.sh [SECONDS_PER_TARGET (60)] [WORK_DIR (/tmp/dstrain-fuzz)] [TARGET ...]
# targets: zstd manifest safetensors h5 ckpt (all by default; see tests/fuzz/fuzz_ckpt.c)
#
# Builds the checkpoint sources (and the few they depend on) into a fuzz driver: with clang's
# libFuzzer + ASan + UBSan when clang can link -fsanitize=fuzzer, else a mutation loop built
# with ASan + UBSan (also when DSTRAIN_FUZZ_NO_LIBFUZZER=1). Seeds come from a real save and
# export of a tiny model. Findings (inputs that crashed or tripped a sanitizer) are left in
# WORK_DIR/crash-<target>-*; the script exits 1 when there is any.
set -u
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-60}
WORK=${2:-/tmp/dstrain-fuzz}
shift $(( $# < 2 ? $# : 2 ))
TARGETS=${*:-zstd manifest safetensors h5 ckpt}
mkdir -p "$WORK"

H5_CFLAGS=$(pkg-config --cflags hdf5 2>/dev/null || echo "-I/usr/include/hdf5/serial")
H5_LIBS=$(pkg-config --libs hdf5 2>/dev/null || echo "-L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5")
LIB_SRC="$SRC/checkpoint/*.c $SRC/runtime/common.c $SRC/runtime/config.c $SRC/model/params.c $SRC/model/flops.c"
FLAGS="-std=gnu11 -g -O1 -fno-omit-frame-pointer -I$SRC $H5_CFLAGS"
LIBS="$H5_LIBS -lzstd -ljansson -linih -lpthread -lm"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"

# shellcheck disable=SC2086
cc $FLAGS -DFUZZ_SEED_MAIN "$SRC/tests/fuzz/fuzz_ckpt.c" $LIB_SRC $LIBS -o "$WORK/fuzz_seeds" || exit 1
rm -rf "$WORK/seeds"
"$WORK/fuzz_seeds" "$WORK/seeds" || exit 1

# HDF5 1.10 leaks a few allocations on some error paths inside the library; those are not
# findings about our code (a leak in checkpoint/ still is).
echo "leak:libhdf5" > "$WORK/lsan.supp"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export LSAN_OPTIONS=suppressions=$WORK/lsan.supp
export HDF5_USE_FILE_LOCKING=FALSE
# the driver's scratch files (one per input) live here; /dev/shm keeps them off the disk
SHM=/tmp
[ -w /dev/shm ] && SHM=/dev/shm
export DSTRAIN_FUZZ_SCRATCH=$SHM/dstrain-fuzz-$$
trap 'rm -rf "$DSTRAIN_FUZZ_SCRATCH"' EXIT
# shellcheck disable=SC2086
if [ -z "${DSTRAIN_FUZZ_NO_LIBFUZZER:-}" ] && command -v clang > /dev/null &&
   clang $FLAGS -fsanitize=fuzzer,address,undefined "$SRC/tests/fuzz/fuzz_ckpt.c" $LIB_SRC $LIBS \
       -o "$WORK/fuzz_libfuzzer" 2> "$WORK/build.log"; then
    echo "fuzz: libFuzzer, $SECS s per target: $TARGETS"
    for t in $TARGETS; do
        mkdir -p "$WORK/corpus/$t"
        DSTRAIN_FUZZ_TARGET=$t "$WORK/fuzz_libfuzzer" -max_total_time="$SECS" -timeout=20 -rss_limit_mb=4096 \
            -max_len=$(( 1 << 21 )) -print_final_stats=1 -artifact_prefix="$WORK/crash-$t-" \
            "$WORK/corpus/$t" "$WORK/seeds/$t" > "$WORK/log-$t.txt" 2>&1
        status=$?
        runs=$(grep -E '^stat::number_of_executed_units' "$WORK/log-$t.txt" | awk '{print $2}')
        echo "  $t: exit $status, $runs inputs, corpus $(ls "$WORK/corpus/$t" | wc -l) (log $WORK/log-$t.txt)"
    done
else
    echo "fuzz: mutation loop with ASan + UBSan (no libFuzzer: see $WORK/build.log), $SECS s per target"
    # shellcheck disable=SC2086
    cc $FLAGS $SAN -DFUZZ_STANDALONE "$SRC/tests/fuzz/fuzz_ckpt.c" $LIB_SRC $LIBS -o "$WORK/fuzz_standalone" || exit 1
    for t in $TARGETS; do
        if ! DSTRAIN_FUZZ_TARGET=$t "$WORK/fuzz_standalone" "$WORK/seeds/$t/seed-0" "$SECS" \
                > "$WORK/log-$t.txt" 2>&1; then
            cp "$WORK/log-$t.txt" "$WORK/crash-$t-log.txt"
        fi
        echo "  $t: $(tail -1 "$WORK/log-$t.txt")"
    done
fi

found=$(ls "$WORK"/crash-* 2> /dev/null | wc -l)
echo "fuzz: $found finding(s) in $WORK"
[ "$found" -eq 0 ]
