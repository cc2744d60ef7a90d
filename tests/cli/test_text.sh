# tests/cli/test_text.sh - a real text file end to end (issue 2, acceptance 2): `dstrain
# prepare --text` on the license texts every Debian system ships, a byte-level model trained
# briefly, the loss well below ln(256) = 5.545 (a model that learned nothing), and `dstrain
# sample` printing text that imitates the corpus (printable, English words of the corpus).
# Usage: bash test_text.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_text.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"

cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > corpus.txt 2> /dev/null
check "a corpus of at least 40 kB" '[ "$(wc -c < corpus.txt)" -gt 40000 ]'
"$BIN" prepare --text corpus.txt --out text > prep.txt 2>&1
check "prepare --text" "[ -s text/meta.json ]"

# a byte-level model with the small config's attention (4 heads, 32+16 q/k dims) and 2 blocks;
# 300 steps of 16 x 64 tokens (~300k tokens, ~6 passes over the corpus)
"$BIN" train "$SRC/configs/small.toml" --set train.name=text --set train.run_dir=runs \
    --set data.dir=text --set data.synthetic=false --set model.num_hidden_layers=2 \
    --set model.first_k_dense_replace=1 --set train.seq_len=64 --set train.micro_batch_size=16 \
    --set train.steps=300 --set train.val_every=0 --set train.checkpoint_every=0 --set optim.lr=3e-3 \
    --set optim.warmup_steps=20 > train.txt 2> err.txt
check "training on text works ($(head -c 300 err.txt))" "grep -q '\"type\":\"final\"' runs/text/metrics.jsonl"
loss=$(python3 -c "
import json
r = [json.loads(l) for l in open('runs/text/metrics.jsonl') if '\"final\"' in l][-1]
print('%.4f' % r['val_loss'])")
check "validation loss $loss is well below ln(256) = 5.545" "python3 -c 'import sys; sys.exit(not $loss < 2.0)'"

ckpt=$(ls -d runs/text/ckpt-* 2> /dev/null | tail -1)
check "a checkpoint was written at the end" "[ -n '$ckpt' ]"
# greedy decoding from the start of a corpus sentence continues with corpus words
"$BIN" sample --ckpt "$ckpt" --prompt "This License applies to any program or other work which " \
    --tokens 120 --temperature 0 > greedy.txt 2> sample.err
check "sample runs ($(head -c 300 sample.err))" "[ \$(wc -c < greedy.txt) -ge 170 ]"
words=$(tail -c 120 greedy.txt | grep -oE '[A-Za-z]+' | sort -u | grep -cxf <(grep -oE '[A-Za-z]+' corpus.txt | sort -u))
check "the greedy continuation uses distinct words of the corpus ($words)" '[ "$words" -ge 3 ]'
# sampled text (temperature 0.7, top-10) is printable and made mostly of the corpus's words
"$BIN" sample --ckpt "$ckpt" --prompt "The " --tokens 400 --temperature 0.7 --top-k 10 --seed 3 > sample.txt
echo "--- greedy ---"; cat greedy.txt; echo; echo "--- sampled ---"; cat sample.txt; echo "--------------"
printable=$(python3 -c "
t = open('sample.txt', 'rb').read()
print(sum(32 <= b < 127 or b in (9, 10) for b in t) * 100 // max(len(t), 1))")
check "the sample is printable text ($printable%)" '[ "$printable" -ge 95 ]'
share=$(python3 - <<'PY'
import re
corpus = set(re.findall(r"[A-Za-z]+", open("corpus.txt").read()))
words = re.findall(r"[A-Za-z]+", open("sample.txt").read())[1:-1]   # the ends may be cut
print(100 * sum(w in corpus for w in words) // max(len(words), 1))
PY
)
check "most sampled words are words of the corpus ($share%)" '[ "$share" -ge 50 ]'
finish
