# tests/cli/test_errors.sh - bad input to `dstrain train`: each case exits non-zero with one
# line on stderr naming the problem, without a crash or a sanitizer report (issue 2,
# acceptance 5): unknown key, invalid value, inconsistent dimensions, missing data, bad
# shards (magic, truncation), a token id outside the vocabulary, bad arguments.
# Usage: bash test_errors.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_errors.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"

TINY="$SRC/configs/tiny.toml"
R=(--set train.run_dir=runs)

# config: unknown key (with a suggestion), unknown section, invalid values, inconsistent dims
expect_error "did you mean 'model.hidden_size'" train "$TINY" "${R[@]}" --set model.hiden_size=64
printf '[modle]\nvocab_size = 32\n' > badsection.toml
expect_error "unknown section" train badsection.toml "${R[@]}"
expect_error "'train.steps' = 'ten' is not an integer" train "$TINY" "${R[@]}" --set train.steps=ten
expect_error "'optim.lr'" train "$TINY" "${R[@]}" --set optim.lr=fast
expect_error "'model.norm_topk_prob'" train "$TINY" "${R[@]}" --set model.norm_topk_prob=maybe
expect_error "'model.n_group' = 3 does not divide 'model.n_routed_experts' = 8" train "$TINY" "${R[@]}" \
    --set model.n_group=3
expect_error "'model.num_experts_per_tok'" train "$TINY" "${R[@]}" --set model.num_experts_per_tok=3
expect_error "'model.qk_rope_head_dim'" train "$TINY" "${R[@]}" --set model.qk_rope_head_dim=5
expect_error "'model.hidden_size'" train "$TINY" "${R[@]}" --set model.hidden_size=0
expect_error "'train.seq_len'" train "$TINY" "${R[@]}" --set train.seq_len=-4
expect_error "'model.tie_word_embeddings'" train "$TINY" "${R[@]}" --set model.tie_word_embeddings=true
expect_error "cannot open" train missing.toml "${R[@]}"
expect_error "unknown option" train "$TINY" --bogus
expect_error "no config file" train

# data: missing, bad magic, truncated, token id >= vocab_size
expect_error "data: directory 'nowhere' does not exist" train "$TINY" "${R[@]}" --set data.dir=nowhere --set data.synthetic=false
"$BIN" prepare --synthetic --out good --tokens 20000 --vocab 32 > /dev/null
mkdir -p badmagic && cp good/*.bin good/meta.json badmagic/
printf '\x01\x02\x03\x04' | dd of=badmagic/train_000000.bin bs=1 seek=0 conv=notrunc 2> /dev/null
expect_error "magic" train "$TINY" "${R[@]}" --set data.dir=badmagic --set data.synthetic=false
mkdir -p truncated && cp good/*.bin good/meta.json truncated/
truncate -s -100 truncated/train_000000.bin
expect_error "truncated" train "$TINY" "${R[@]}" --set data.dir=truncated --set data.synthetic=false
awk 'BEGIN { for (i = 0; i < 400; i++) print "the quick brown fox jumps over the lazy dog" }' > text.txt
"$BIN" prepare --text text.txt --out bytes > /dev/null
expect_error "vocab" train "$TINY" "${R[@]}" --set data.dir=bytes --set data.synthetic=false

# other commands
expect_error "unknown command" frobnicate
expect_error "--ckpt" sample --prompt hi
finish
