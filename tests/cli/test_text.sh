# tests/cli/test_text.sh - a real text file end to end (issue 2, acceptance 2): `dstrain
# prepare --text` on the license texts every Debian system ships, a byte-level model trained
# briefly, its held-out loss in bits per byte against count-based baselines computed here from
# the same split (a unigram and an order-4 model trained on the train part, scored on the
# held-out part), and `dstrain sample` printing text that imitates the corpus.
# Every margin on the trained model is derived from a sweep over seeds and thread counts
# (tests/tools/seed_sweep.sh text; docs/results/2026-12-06-test-margins.md): the trajectory of
# a small model differs between CPUs (BLAS kernels, thread counts), so nothing here depends on
# one trajectory, only on how well any of them learns.
# Usage: bash test_text.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_text.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
PY=${DSTRAIN_TEST_PYTHON:-python3}
. "$(dirname "$0")/lib.sh"

cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > corpus.txt 2> /dev/null
check "a corpus of at least 40 kB" '[ "$(wc -c < corpus.txt)" -gt 40000 ]'
# the last 10% of the file (default --val-fraction) is the val split: the model never trains on it
"$BIN" prepare --text corpus.txt --out text > prep.txt 2>&1
check "prepare --text" "[ -s text/meta.json ]"

# a byte-level model with the small config's attention (4 heads, 32+16 q/k dims) and 2 blocks;
# 300 steps of 16 x 64 tokens (~300k tokens, ~7 passes over the train split); the final
# validation reads val_batches x 16 windows of 64 tokens of the val split in order
T=64; MB=16; VB=8
"$BIN" train "$SRC/configs/small.toml" --set train.name=text --set train.run_dir=runs \
    --set data.dir=text --set data.synthetic=false --set model.num_hidden_layers=2 \
    --set model.first_k_dense_replace=1 --set train.seq_len=$T --set train.micro_batch_size=$MB \
    --set train.steps=300 --set train.val_every=0 --set train.val_batches=$VB \
    --set train.checkpoint_every=0 --set optim.lr=3e-3 --set optim.warmup_steps=20 > train.txt 2> err.txt
check "training on text works ($(head -c 300 err.txt))" "grep -q '\"type\":\"final\"' runs/text/metrics.jsonl"

# Baselines on exactly the positions the final validation scored (window g % n_seqs for
# g < VB*MB, each of its T next-byte predictions seeing only the bytes before it in the window),
# trained on the train split (its size from meta.json):
#   unigram: add-one byte frequencies;
#   order-4: interpolated absolute discounting (D = 0.75) over contexts of 3, 2, 1 bytes down to
#            the unigram. Orders 2..6 give 3.53, 2.59, 2.19, 2.13, 2.20 bits/byte here; order 4 is
#            a strong count model that a 2-block transformer after 300 steps approaches.
"$PY" - "$T" "$MB" "$VB" > scores.txt <<'PY'
import json, math, sys
from collections import defaultdict
T, B, NB = (int(a) for a in sys.argv[1:4])
data = open("corpus.txt", "rb").read()
ntrain = json.load(open("text/meta.json"))["splits"]["train"]["tokens"]
train, val = data[:ntrain], data[ntrain:]
nseq = (len(val) - 1) // T
wins = [val[(g % nseq) * T:(g % nseq) * T + T + 1] for g in range(NB * B)]
uni = [1] * 256
for c in train:
    uni[c] += 1
total = sum(uni)
K, D = 4, 0.75
counts = [defaultdict(lambda: defaultdict(int)) for _ in range(K)]
for i in range(len(train)):
    for k in range(1, min(K - 1, i) + 1):
        counts[k][train[i - k:i]][train[i]] += 1
sums = [{h: sum(d.values()) for h, d in counts[k].items()} for k in range(K)]
def p_unigram(h, c):
    return uni[c] / total
def p_order(h, c):
    q = uni[c] / total
    for k in range(1, min(K - 1, len(h)) + 1):
        d = counts[k].get(h[-k:])
        if not d:
            break
        q = (max(d.get(c, 0) - D, 0) + D * len(d) * q) / sums[k][h[-k:]]
    return q
def bits_per_byte(p):
    return sum(-math.log2(p(w[:t + 1], w[t + 1])) for w in wins for t in range(T)) / (len(wins) * T)
final = [json.loads(l) for l in open("runs/text/metrics.jsonl") if '"final"' in l][-1]
print("%.4f %.4f %.4f" % (final["val_loss"] / math.log(2), bits_per_byte(p_unigram), bits_per_byte(p_order)))
PY
read -r model unigram order4 < scores.txt
echo "held-out bits per byte: model $model, unigram $unigram, order-4 $order4"
holds() { "$PY" -c "import sys; sys.exit(not ($1))"; }
# Margins from tests/tools/seed_sweep.sh text (docs/results/2026-12-06-test-margins.md): 27
# trajectories: seeds 1-20 and 1337 with the sweep machine's GEMM kernels (SkylakeX), seeds
# 1337, 11, 12 with Haswell and 1337, 13, 14 with Nehalem kernels (OPENBLAS_CORETYPE, standing
# for other CPUs; they move the trajectory as much as another seed does); 2 threads gave the
# 1-thread figures to 4 decimals. The baselines are counts: 4.549 (unigram) and 2.186
# (order-4) bits/byte on every machine. The model: min 2.318, mean 2.388, max 2.494 bits/byte,
# sd 0.041 (the worst: seed 11 with Haswell kernels, 2.416 with SkylakeX ones). Trained 100
# steps instead of 300 it scores 3.401, 200 steps 2.721.
# Beats the unigram by >= 1.8 bits/byte: the worst run beat it by 2.055, 0.26 (6 sd) to spare;
# a model that learned only byte frequencies scores the unigram, one that learned nothing 8.
check "the model ($model bits/byte) beats the unigram baseline ($unigram) by >= 1.8 bits/byte" \
    "holds '$model <= $unigram - 1.8'"
# Within a factor 1.25 of the order-4 model (<= 2.732 bits/byte here): the ratio was min 1.061,
# mean 1.092, max 1.141 (sd 0.019), so 1.25 leaves 0.109 (6 sd) above the worst run; the
# 100-step model (ratio 1.556) fails it.
check "the model ($model bits/byte) is within a factor 1.25 of the order-4 model ($order4)" \
    "holds '$model <= 1.25 * $order4'"

ckpt=$(ls -d runs/text/ckpt-* 2> /dev/null | tail -1)
check "a checkpoint was written at the end" "[ -n '$ckpt' ]"
# greedy decoding runs and prints the prompt and 120 bytes (what it prints is not checked: the
# greedy path follows one trajectory's argmaxes, which differ between CPUs)
"$BIN" sample --ckpt "$ckpt" --prompt "This License applies to any program or other work which " \
    --tokens 120 --temperature 0 > greedy.txt 2> sample.err
check "sample runs ($(head -c 300 sample.err))" "[ \$(wc -c < greedy.txt) -ge 170 ]"
# sampled text (temperature 0.7, top-10) is printable and made largely of the corpus's words
"$BIN" sample --ckpt "$ckpt" --prompt "The " --tokens 400 --temperature 0.7 --top-k 10 --seed 3 > sample.txt
echo "--- greedy ---"; cat greedy.txt; echo; echo "--- sampled ---"; cat sample.txt; echo "--------------"
read -r printable share < <("$PY" - <<'PY'
import re
t = open("sample.txt", "rb").read()
corpus = set(re.findall(r"[A-Za-z]+", open("corpus.txt").read()))
words = re.findall(r"[A-Za-z]+", t.decode("latin-1"))[1:-1]   # the ends may be cut
print(sum(32 <= b < 127 or b in (9, 10) for b in t) * 100 // max(len(t), 1),
      100 * sum(w in corpus for w in words) // max(len(words), 1))
PY
)
# Spread: the 27 runs x sample seeds 3, 4, 5, and 40 sample seeds on each of seeds 17, 19, 20
# (199 samples): printable 100% every time (95 leaves 5 points); corpus words min 54, mean 75,
# max 86% (sd 5; the low ones drift into the license's all-capitals disclaimer, which the model
# spells worse). 40 is 14 points below the worst; samples of the unigram model score 8-21%.
check "the sample is printable text ($printable%)" '[ "$printable" -ge 95 ]'
check "at least 40% of the sampled words are words of the corpus ($share%)" '[ "$share" -ge 40 ]'
finish
