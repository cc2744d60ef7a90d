# tests/cli/test_prepare.sh - `dstrain prepare` end to end through the real binary.
# Usage: bash test_prepare.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
# Checks: --help names every option with its default; --text writes shards whose tokens are
# the file's bytes, with the last 10% as val; --synthetic writes shards and meta.json and
# prints the entropy rate and unigram entropy in nats and bits, rate <= half the unigram;
# the same seed gives the same bytes; a smaller rewrite removes stale shards; every misuse
# exits non-zero with exactly one line on stderr saying what is wrong. Runs in about a second.
set -u
BIN=${1:?usage: test_prepare.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SCRATCH=${3:?usage: test_prepare.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
. "$(dirname "$0")/lib.sh"
expect_error_prepare() { local w=$1; shift; expect_error "$w" prepare "$@"; }

# ---- --help ----
"$BIN" prepare --help > help.txt 2>&1
check "--help exits 0" "[ $? -eq 0 ]"
for opt in --text --synthetic --out --val-fraction --shard-tokens --tokens --seed --vocab \
           --alphabet --order --successors; do
    check "--help mentions $opt" "grep -q -- '$opt' help.txt"
done
# each optional setting's own entry (its line and continuation lines) names its default
for opt in --val-fraction --shard-tokens --tokens --seed --vocab --alphabet --order --successors; do
    awk -v o="$opt" '$1 == o { on = 1; print; next } /^  -/ { on = 0 } on' help.txt > entry.txt
    check "--help gives the default of $opt" "grep -q 'default [0-9]' entry.txt"
done

# ---- --text ----
# 26000 bytes of deterministic text with every printable ASCII character
awk 'BEGIN { for (i = 0; i < 2000; i++) { c = sprintf("%c", 32 + (i * 7) % 95);
             printf "line %05d %s\n", i, c } }' > text.txt
bytes=$(wc -c < text.txt)
"$BIN" prepare --text text.txt --out text --shard-tokens 5000 > text.out 2> text.err
check "--text exits 0 ($(head -c 300 text.err))" "[ $? -eq 0 ]"
check "--text wrote meta.json" "[ -s text/meta.json ]"
check "--text wrote val_000000.bin" "[ -s text/val_000000.bin ]"
ntrain=$(ls text/train_*.bin 2> /dev/null | wc -l)
# 2000 lines of 13 bytes: 26000 bytes, 2600 val, 23400 train in ceil(23400 / 5000) = 5 shards
check "--text wrote 5 train shards (found $ntrain)" '[ "$bytes" -eq 26000 ] && [ "$ntrain" -eq 5 ]'
check "--text val holds the last 10% of the bytes" \
    '[ "$(wc -c < text/val_000000.bin)" -eq $((1024 + 2 * 2600)) ]'
total=0
for f in text/train_*.bin text/val_*.bin; do total=$((total + $(wc -c < "$f") - 1024)); done
check "--text shards hold 2 bytes per text byte ($total for $bytes)" '[ "$total" -eq $((2 * bytes)) ]'
first_text=$(od -An -tu1 -N16 text.txt | tr -s ' \n' ' ')
first_shard=$(od -An -tu2 -j1024 -N32 text/train_000000.bin | tr -s ' \n' ' ')
check "--text tokens are the file's bytes" '[ "$first_text" = "$first_shard" ]'
last_text=$(tail -c 8 text.txt | od -An -tu1 | tr -s ' \n' ' ')
last_val=$(tail -c 16 text/val_000000.bin | od -An -tu2 | tr -s ' \n' ' ')
check "--text val is the end of the file" '[ "$last_text" = "$last_val" ]'
check "--text meta.json says bytes" "grep -q '\"tokenizer\": \"bytes\"' text/meta.json"
check "--text prints what it wrote" "grep -q train_000000.bin text.out"

# ---- --synthetic ----
"$BIN" prepare --synthetic --out syn --tokens 50000 --seed 7 --shard-tokens 10000 \
    > syn.out 2> syn.err
check "--synthetic exits 0 ($(head -c 300 syn.err))" "[ $? -eq 0 ]"
# 45000 train tokens in ceil(45000 / 10000) = 5 shards, 5000 val in 1
check "--synthetic wrote 5 train shards" \
    "[ -s syn/train_000004.bin ] && [ ! -e syn/train_000005.bin ]"
check "--synthetic wrote val and meta.json" "[ -s syn/val_000000.bin ] && [ -s syn/meta.json ]"
check "--synthetic meta.json has the entropy rate" "grep -q entropy_rate_nats syn/meta.json"
check "--synthetic prints the entropy rate and unigram entropy in nats and bits" \
    "grep -q 'entropy rate' syn.out && grep -q 'unigram entropy' syn.out &&
     grep -q nats syn.out && grep -q bits syn.out"
rate=$(awk '/entropy rate/ { print $3 }' syn.out)
unigram=$(awk '/unigram entropy/ { print $3 }' syn.out)
check "--synthetic rate $rate <= half the unigram entropy $unigram" \
    'awk -v r="$rate" -v u="$unigram" "BEGIN { exit !(r > 0 && u > 0 && r <= 0.5 * u) }"'

"$BIN" prepare --synthetic --out syn2 --tokens 50000 --seed 7 --shard-tokens 10000 > /dev/null 2>&1
check "--synthetic: the same seed gives the same shards" \
    "cmp -s syn/train_000003.bin syn2/train_000003.bin"
"$BIN" prepare --synthetic --out syn2 --tokens 50000 --seed 8 > /dev/null 2>&1
check "--synthetic: a rewrite with fewer shards removes the stale ones" \
    "[ -s syn2/train_000000.bin ] && [ ! -e syn2/train_000001.bin ]"
check "--synthetic: another seed gives other tokens" \
    "! cmp -s <(tail -c 1000 syn/val_000000.bin) <(tail -c 1000 syn2/val_000000.bin)"

# ---- misuse: non-zero exit, one line on stderr naming the problem ----
: > empty.txt
printf 'tiny' > tiny.txt
expect_error_prepare "cannot open text file" --text no_such_file.txt --out e1
expect_error_prepare "is empty" --text empty.txt --out e2
expect_error_prepare "is not a regular file" --text text --out e2
expect_error_prepare "too short for a val split" --text tiny.txt --out e3
expect_error_prepare "unknown option '--bogus'" --synthetic --out e4 --bogus 3
expect_error_prepare "unknown argument" --synthetic --out e4 stray
expect_error_prepare "missing --out" --synthetic
expect_error_prepare "exactly one of --text FILE or --synthetic" --text text.txt --synthetic --out e5
expect_error_prepare "exactly one of --text FILE or --synthetic" --out e6
expect_error_prepare "needs a value" --synthetic --out
expect_error_prepare "--tokens 'abc' is not a whole number" --synthetic --out e7 --tokens abc
expect_error_prepare "--tokens '12x' is not a whole number" --synthetic --out e7 --tokens 12x
expect_error_prepare "--seed '-1' is not a whole number" --synthetic --out e7 --seed -1
expect_error_prepare "--shard-tokens '0' is not a whole number" --synthetic --out e7 --shard-tokens 0
expect_error_prepare "--val-fraction '1.5' is not a number" --text text.txt --out e8 --val-fraction 1.5
expect_error_prepare "applies to --synthetic only" --text text.txt --out e9 --seed 3
expect_error_prepare "applies to --text only" --synthetic --out e10 --val-fraction 0.2
expect_error_prepare "smaller than the source's alphabet" --synthetic --out e11 --vocab 8
expect_error_prepare "successors" --synthetic --out e12 --successors 40
for d in e1 e2 e3 e5 e6 e8 e9; do
    check "a refused command left no meta.json in $d" "[ ! -e $d/meta.json ]"
done

finish
