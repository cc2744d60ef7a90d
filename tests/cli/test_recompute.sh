# tests/cli/test_recompute.sh - train.recompute end to end (issue 14, acceptance 5): train on
# tiny with it off and on prints its activation and backward-scratch bytes; recompute's
# activations are smaller; each figure equals `dstrain plan`'s for the same setting, in the text
# and in --json (the same planning code counts them: exact, no tolerance); the per-step losses
# and the final validation loss are the same with and without (the unit test
# tests/unit/test_recompute.c compares every gradient bit for bit); --help documents the key.
# Usage: bash test_recompute.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_recompute.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
SRC=$(cd "$SRC" && pwd)
case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac
. "$(dirname "$0")/lib.sh"

TINY="$SRC/configs/tiny.toml"
for rc in false true; do
    "$BIN" train "$TINY" --set train.run_dir=runs --set train.name="rc_$rc" --set train.steps=4 \
        --set train.val_every=0 --set train.recompute=$rc > "train_$rc.txt" 2>&1
    check "train with recompute $rc exits 0: $(tail -c 300 "train_$rc.txt")" "[ $? -eq 0 ]"
    "$BIN" plan "$TINY" --set train.recompute=$rc > "plan_$rc.txt" 2>&1
    "$BIN" plan "$TINY" --set train.recompute=$rc --json > "plan_$rc.json" 2>/dev/null
    # train: "activations A + backward scratch S bytes (train.recompute = X; dstrain plan: A' + S' bytes)"
    line=$(grep -E '^  activations [0-9]+ \+ backward scratch [0-9]+ bytes' "train_$rc.txt")
    check "train prints its activation bytes (recompute $rc)" "[ -n \"\$line\" ]"
    read -r act scr pact pscr <<< "$(echo "$line" | sed -E 's/.*activations ([0-9]+) \+ backward scratch ([0-9]+) bytes.*plan: ([0-9]+) \+ ([0-9]+) bytes.*/\1 \2 \3 \4/')"
    check "train names the setting (recompute $rc)" "echo \"\$line\" | grep -q 'train.recompute = $rc'"
    check "train's activations $act = its plan line's $pact (recompute $rc)" "[ \"$act\" = \"$pact\" ] && [ \"$scr\" = \"$pscr\" ]"
    check "dstrain plan prints the same figure (recompute $rc)" \
        "grep -q \"train.recompute = $rc): activations $act bytes, backward scratch $scr bytes\" plan_$rc.txt"
    jact=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["memory"]; print("%d %d %s" % (m["train_activation_bytes"], m["train_scratch_bytes"], m["recompute"]))' "plan_$rc.json" 2>&1)
    check "plan --json: $jact = $act $scr (recompute $rc)" "[ \"$jact\" = \"$act $scr $( [ $rc = true ] && echo True || echo False)\" ]"
    eval "act_$rc=$act"
    grep -E '^step ' "train_$rc.txt" | sed -E 's/\| [0-9.]+ tok\/s.*//' > "losses_$rc.txt"
    grep -E '^final validation loss' "train_$rc.txt" >> "losses_$rc.txt"
done
echo "activations: recompute off $act_false bytes, on $act_true bytes"
check "recompute's activations are smaller ($act_true < $act_false)" "[ \"$act_true\" -lt \"$act_false\" ]"
check "4 steps and a final loss logged" "[ \$(wc -l < losses_false.txt) -eq 5 ]"
check "losses identical with and without recompute: $(diff losses_false.txt losses_true.txt | head -c 300)" \
    "cmp -s losses_false.txt losses_true.txt"
"$BIN" train --help > help.txt 2>&1
check "--help documents train.recompute" "grep -q 'recompute' help.txt"
finish
