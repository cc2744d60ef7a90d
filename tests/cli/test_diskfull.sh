# tests/cli/test_diskfull.sh - checkpoint saves on a full disk (issue 12, "Failed saves"):
# the run directory on a 1700 KiB tmpfs (room for about two checkpoints of configs/tiny.toml,
# ~540 KB each), filled so that not one checkpoint fits:
#   1. every failed save is reported on stderr when it happens, one line naming the step, the
#      file and the system's reason; train.max_failed_saves = 3 failures in a row stop the run
#      early with status 74; no crash (the old code exited 139: SIGSEGV in HDF5's exit handler
#      after a failed H5Fclose), no .tmp directory left behind
#   2. a failed final save exits 74 even below max_failed_saves
#   3. no leak per failed save: the peak RSS of 150 failed saves is within 40 MB of that of 10
#      (the old code grew ~2.7 MB per failed save: 140 more would add ~380 MB)
#   4. with room again (the filler removed) the same run resumes from its last good checkpoint
# The mount is removed on every path (trap). Needs root (mount); skipped (77) otherwise.
# Usage: bash test_diskfull.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_diskfull.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
if [ "$(id -u)" -ne 0 ]; then echo "SKIP: needs root to mount a small tmpfs"; exit 77; fi
MNT=$SCRATCH.mnt
mountpoint -q "$MNT" 2> /dev/null && umount "$MNT"
. "$(dirname "$0")/lib.sh"
mkdir -p "$MNT"
cleanup() { mountpoint -q "$MNT" && umount "$MNT"; rmdir "$MNT" 2> /dev/null; }
trap cleanup EXIT
trap 'exit 1' INT TERM
if ! mount -t tmpfs -o size=1700k tmpfs "$MNT"; then echo "FAIL: cannot mount a tmpfs at '$MNT'"; exit 1; fi

TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir="$MNT/runs" --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1)
fill() {  # fill: leave 150 KiB free (no checkpoint fits)
    local avail
    avail=$(df -k --output=avail "$MNT" | tail -1)
    head -c $(((avail - 150) * 1024)) /dev/zero > "$MNT/filler" 2> /dev/null
}
"${TRAIN[@]}" --set train.run_dir=prep --set train.steps=1 > /dev/null 2>&1   # writes the data (not on the tmpfs)
mkdir -p "$MNT/runs"
fill

# ---- 1. failures in a row stop the run ----
"${TRAIN[@]}" --set train.name=full --set train.steps=40 --set train.checkpoint_every=2 \
    --set train.max_failed_saves=3 > full.txt 2> full.err
rc=$?
check "full disk: exit 74, got $rc ($(tail -c 300 full.err))" "[ $rc -eq 74 ]"
check "each failure reported, naming the step, the file and ENOSPC" \
    "[ \$(grep -c 'checkpoint of step [0-9]*: .*rank-00000.h5.*No space left on device.*failed save [0-9] in a row' full.err) -ge 3 ]"
check "the run stopped early" "grep -q 'stopped after step [0-9]*: checkpoint saves failing' full.err && ! grep -q 'step    40/40' full.txt"
check "every stderr line is one message" "[ \$(grep -vc '^dstrain: ' full.err) -eq 0 ]"
check "no .tmp directory left" "[ -z \"\$(ls -d $MNT/runs/full/*.tmp 2> /dev/null)\" ]"

# ---- 2. a failed final save ----
"${TRAIN[@]}" --set train.name=final --set train.steps=3 > final.txt 2> final.err
rc=$?
check "failed final save: exit 74, got $rc ($(tail -c 300 final.err))" \
    "[ $rc -eq 74 ] && grep -q 'the final checkpoint of step 3 was not saved' final.err"

# ---- 3. no leak per failed save ----
peak_rss() {  # peak_rss ARGS...: the peak RSS (KiB) of the command and its children
    # (sanitizer builds: no quarantine of freed memory, which would otherwise grow RSS by up to
    # 256 MB with every allocation made and freed, leak or not; ignored by other builds)
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0" python3 -c "
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)" "$@"
}
few=$(peak_rss "${TRAIN[@]}" --set train.name=leak10 --set train.steps=10 --set train.checkpoint_every=1 \
    --set train.max_failed_saves=1000)
many=$(peak_rss "${TRAIN[@]}" --set train.name=leak150 --set train.steps=150 --set train.checkpoint_every=1 \
    --set train.max_failed_saves=1000)
check "peak RSS after 150 failed saves ($many KiB) within 40 MB of 10 ($few KiB)" \
    "[ $many -lt \$((few + 40960)) ]"

# ---- 4. room again: resume ----
rm -f "$MNT/filler"
rm -rf "$MNT/runs/leak10" "$MNT/runs/leak150" "$MNT/runs/final"
"${TRAIN[@]}" --set train.name=full --set train.steps=6 --resume auto > again.txt 2> again.err
rc=$?
check "with room again the run finishes (exit $rc; $(tail -c 200 again.err))" \
    "[ $rc -eq 0 ] && '$BIN' inspect $MNT/runs/full/ckpt-6 > /dev/null 2>&1"
finish
