# tests/cli/test_bad_input.sh - the bad-input battery of issue 12 (acceptance 4): every case
# of tests/cli/bad_input.cases runs `dstrain ARGS` and must
#   - exit non-zero, by exit() and not by a signal (status < 128; 124 = hung, killed by timeout),
#   - write exactly one line on stderr, containing the case's WANT text (the rule: a bad input
#     is one error line naming what and where, never a dump or a trail of warnings),
#   - leave no sanitizer report (the suite runs this under the Sanitize build too).
# Every case fails before a training step, so the battery takes seconds (the fixtures include
# one 1-step run of configs/tiny.toml to get a real checkpoint to damage).
# Usage: bash test_bad_input.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_bad_input.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
CASES="$(cd "$(dirname "$0")" && pwd)/bad_input.cases"
. "$(dirname "$0")/lib.sh"

TINY="$SRC/configs/tiny.toml"
R=(--set train.run_dir=runs --set data.dir=good --set data.synthetic=false)
CASE_TIMEOUT=60   # seconds; a case is a start-up and one error (a FIFO case hung forever before)

# ---- fixtures: good data, a real checkpoint, and damaged copies of each ----

"$BIN" prepare --synthetic --out good --tokens 20000 --vocab 32 > /dev/null || exit 1
"$BIN" train "$TINY" "${R[@]}" --set train.name=ok --set train.steps=1 --set train.val_every=0 \
    --set train.val_batches=1 > /dev/null 2>&1 || { echo "FAIL: fixture run"; exit 1; }
CK=runs/ok/ckpt-1
RANK=rank-00000.h5
[ -f "$CK/$RANK" ] || { echo "FAIL: fixture checkpoint has no $RANK"; exit 1; }

header_int() {  # header_int FILE INDEX VALUE: little-endian int32 VALUE at header[INDEX]
    local v=$(( $3 & 0xffffffff ))
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) \
        $((v >> 16 & 255)) $((v >> 24 & 255)))" | dd of="$1" bs=1 seek=$(($2 * 4)) conv=notrunc 2> /dev/null
}
data_copy() { rm -rf "$1"; mkdir -p "$1"; cp good/*.bin good/meta.json "$1"/; }

data_copy d_empty_shard && : > d_empty_shard/train_000000.bin
data_copy d_short_header && truncate -s 100 d_short_header/train_000000.bin
data_copy d_magic && header_int d_magic/train_000000.bin 0 1234
data_copy d_version && header_int d_version/train_000000.bin 1 3
data_copy d_negcount && header_int d_negcount/train_000000.bin 2 -5
data_copy d_long && printf 'xx' >> d_long/train_000000.bin
data_copy d_trunc && truncate -s -100 d_trunc/train_000000.bin
data_copy d_vocab_big && header_int d_vocab_big/train_000000.bin 3 33
data_copy d_vocab_neg && header_int d_vocab_neg/val_000000.bin 3 -1
data_copy d_token && header_int d_token/train_000000.bin 3 0 && header_int d_token/train_000000.bin 300 40
data_copy d_fifo && rm d_fifo/train_000000.bin && mkfifo d_fifo/train_000000.bin
data_copy d_dir && rm d_dir/train_000000.bin && mkdir d_dir/train_000000.bin
data_copy d_dangling && rm d_dangling/train_000000.bin && ln -s nowhere.bin d_dangling/train_000000.bin
data_copy d_gap && mv d_gap/train_000000.bin d_gap/train_000001.bin
data_copy d_noval && rm d_noval/val_*.bin
data_copy d_metajson && printf '{"format_version": 1, ' > d_metajson/meta.json
data_copy d_metafifo && rm d_metafifo/meta.json && mkfifo d_metafifo/meta.json
mkdir -p d_none
: > plainfile
awk 'BEGIN { for (i = 0; i < 400; i++) print "the quick brown fox jumps over the lazy dog" }' > text.txt
"$BIN" prepare --text text.txt --out d_bytes > /dev/null || exit 1
: > empty.txt
mkfifo fifo.txt

ck_copy() { rm -rf "$1"; mkdir -p "$(dirname "$1")"; cp -r "$CK" "$1"; }
ck_copy ck/nomanifest && rm ck/nomanifest/manifest.json
ck_copy ck/badjson && truncate -s 100 ck/badjson/manifest.json
ck_copy ck/emptyjson && : > ck/emptyjson/manifest.json
ck_copy ck/array && printf '[]\n' > ck/array/manifest.json
ck_copy ck/edited && sed -i 's/"tokens": \([0-9]*\)/"tokens": 1\1/' ck/edited/manifest.json
ck_copy ck/norank && rm ck/norank/$RANK
ck_copy ck/truncrank && truncate -s 1000 ck/truncrank/$RANK
ck_copy ck/flip && printf 'x' | dd of=ck/flip/$RANK bs=1 seek=5000 conv=notrunc 2> /dev/null
ck_copy ck/rankfifo && rm ck/rankfifo/$RANK && mkfifo ck/rankfifo/$RANK
ck_copy ck/manififo && rm ck/manififo/manifest.json && mkfifo ck/manififo/manifest.json
ck_copy ck/manidir && rm ck/manidir/manifest.json && mkdir ck/manidir/manifest.json
ck_copy ck/manisym && mv ck/manisym/manifest.json ck/manisym.json && ln -s ../manisym.json ck/manisym/manifest.json
ck_copy ck/ckpt-7
# a rank file that is a symlink into another run (same bytes, so its checksum matches)
ck_copy runs/other/ckpt-1 && ck_copy ck/symlink && rm ck/symlink/$RANK \
    && ln -s "$PWD/runs/other/ckpt-1/$RANK" ck/symlink/$RANK
# a run whose only checkpoint is damaged, for --resume latest
ck_copy runs/damaged/ckpt-1 && printf 'x' | dd of=runs/damaged/ckpt-1/$RANK bs=1 seek=5000 conv=notrunc 2> /dev/null
# damaged behind the checksum gate: re-signed, so the HDF5, shape and state readers must refuse
PY=${DSTRAIN_TEST_PYTHON:-python3}
RESIGN="$SRC/tests/cli/resign_manifest.py"
check "resign_manifest.py reproduces a real manifest's checksums" "$PY '$RESIGN' --check $CK > /dev/null"
"$BIN" train "$TINY" "${R[@]}" --set train.name=wide --set model.hidden_size=64 --set train.steps=1 \
    --set train.val_every=0 --set train.val_batches=1 > /dev/null 2>&1 || { echo "FAIL: fixture run"; exit 1; }
rs_copy() { ck_copy "rs/$1" && shift && "$@"; }
resign() { "$PY" "$RESIGN" "$@" > /dev/null || { failed=$((failed + 1)); echo "FAIL: resign_manifest.py $*"; }; }
rs_copy trunc truncate -s 300000 rs/trunc/$RANK && resign rs/trunc
rs_copy zero truncate -s 0 rs/zero/$RANK && resign rs/zero
rs_copy text cp text.txt rs/text/$RANK && resign rs/text
rs_copy chunk dd if=/dev/zero of=rs/chunk/$RANK bs=1 seek=100000 count=20000 conv=notrunc 2> /dev/null \
    && resign rs/chunk
rs_copy wide cp runs/wide/ckpt-1/$RANK rs/wide/ && resign rs/wide
rs_copy version true && resign format_version=99 rs/version
rs_copy nomoments true && resign optimizer_moments=false rs/nomoments
rs_copy badconfig true && resign 'config="[bogus]\n"' rs/badconfig
rs_copy emptyconfig true && resign 'config=""' rs/emptyconfig
rs_copy step true && resign step=5 rs/step
rs_copy tokens true && resign tokens=-1 rs/tokens
rs_copy layout true && resign 'layout={"world_size": 2, "pp": 1, "dp": 2, "ep": 1}' rs/layout

mkdir -p hf_empty hf_short hf_fifo
printf 'abc' > hf_short/model.safetensors
mkfifo hf_fifo/model.safetensors

# ---- the table ----

declare -A n_cat
total=0
run_case() {  # run_case CATEGORY WANT ARGS_TEXT (shell words, evaluated here)
    local args
    eval "args=($3)"
    timeout -k 5 "$CASE_TIMEOUT" "$BIN" "${args[@]}" > out.txt 2> err.txt < /dev/null
    local rc=$? lines
    lines=$(wc -l < err.txt)
    total=$((total + 1))
    n_cat[$1]=$(( ${n_cat[$1]:-0} + 1 ))
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] \
        && grep -qF -- "$2" err.txt && no_sanitizer_report err.txt; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL [$1] dstrain $3 -> exit $rc, $lines stderr lines: $(head -c 400 err.txt) (want '$2')"
    fi
}

while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    cat=${line%% | *}; rest=${line#* | }
    want=${rest%% | *}; args=${rest#* | }
    if [ "$cat" = file ]; then   # file NAME | TEXT: a config fixture, TEXT as printf %b
        printf '%b' "$args" > "$want"
        continue
    fi
    run_case "$cat" "$want" "$args"
done < "$CASES"

# --resume latest that skips a damaged newer checkpoint: the reason is a warning on stderr
# (it was printed on stdout), and the older checkpoint is used
ck_copy runs/mixed/ckpt-1 && cp -r ck/flip runs/mixed/ckpt-2
"$BIN" train "$TINY" "${R[@]}" --set train.name=mixed --set train.steps=1 --resume latest \
    > out.txt 2> err.txt
rc=$?
check "resume latest past a damaged checkpoint: exit 0 (got $rc)" "[ $rc -eq 0 ]"
check "resume latest: the skip reason is on stderr" \
    "grep -qF \"resume: skipping checkpoint 'runs/mixed/ckpt-2'\" err.txt"
check "resume latest: no skip reason on stdout" "! grep -q skipping out.txt"
check "resume latest: resumed from ckpt-1" "grep -qF \"from 'runs/mixed/ckpt-1'\" out.txt"

for c in "${!n_cat[@]}"; do echo "cases [$c]: ${n_cat[$c]}"; done | sort
check "at least 100 cases ($total)" "[ $total -ge 100 ]"
finish
