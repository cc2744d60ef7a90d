#!/usr/bin/env bash
# tests/mpi/test_mpi_grad_overlap.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - the routed experts'
# gradient reduce-scatter is posted as soon as their gradients are final (issue 14, DESIGN.md
# section 5; runtime/shard.h shard_post_grads, model/model.h model_grads_hook). configs/tiny.toml (layer 0 dense, layer 1 and the MTP
# block MoE; grad_accum 2) for 3 steps, tracing steps 2 and 3 (train.trace_steps).
#   - (DP, EP) = (4, 2): the experts are summed over groups of 2 ranks (edp = dp / ep), so the
#     exchange is posted early. On every rank and traced step, in recording order (trace.c
#     writes a rank's events in the order it recorded them, so before/after are exact): the
#     post ("reduce-scatter experts posted") lies inside the step's last backward (mb 1) and
#     only there, followed inside that backward by the span "backward below MoE" (layer 0's
#     backward and the embedding's, run while the exchange is in flight), and the wait
#     ("reduce-scatter wait") comes after that backward has ended, inside the optimizer span.
#     tests/tools/check_trace.py accepts the file (spans nest, every rank has them).
#   - (DP, EP) = (2, 2) (each expert on one rank: nothing to sum) and (2, 1) (one region): no
#     early post at all, so the check above can fail.
#   The memory side (no ZeRO-1 host staging planned on cpu) is tests/unit/test_shard.c.
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
PY=${DSTRAIN_TEST_PYTHON:-python3}
ARGS=("$SRC/configs/tiny.toml" --set data.dir="$SCRATCH/data" --set data.synthetic=true
      --set train.run_dir="$SCRATCH/runs" --set train.steps=3 --set train.val_every=0 --set train.val_batches=1
      --set train.threads=1 --set train.checkpoint_every=0 --set train.trace_steps=2-3)

# order.py TRACE EXPECT_POSTS: the order checks above, per rank and traced step
cat > order.py <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
want_posts = int(sys.argv[2])
tracks = {}
for e in doc["traceEvents"]:
    if e.get("ph") in ("B", "E", "i") and e.get("tid") == 0:
        tracks.setdefault(e["pid"], []).append(e)
bad, posts_seen = [], 0
for pid, evs in sorted(tracks.items()):
    step, stack, posts, state = None, [], 0, None
    for e in evs:
        if e["ph"] == "B":
            stack.append(e)
            if e["name"].startswith("step "):
                step, posts, state = e["name"], 0, "start"
            elif e["name"] == "backward below MoE":
                if state != "posted" or [s["name"] for s in stack[-2:-1]] != ["backward"]:
                    bad.append("rank %d %s: 'backward below MoE' not right after a post inside a backward" % (pid, step))
                state = "below"
            elif e["name"] == "reduce-scatter wait":
                if want_posts and state != "ended":
                    bad.append("rank %d %s: the wait begins before the last backward ended" % (pid, step))
                if [s["name"] for s in stack[-2:-1]] != ["optimizer"]:
                    bad.append("rank %d %s: the wait is not inside the optimizer span" % (pid, step))
        elif e["ph"] == "i" and e["name"] == "reduce-scatter experts posted":
            posts += 1
            posts_seen += 1
            top = stack[-1] if stack else {}
            if top.get("name") != "backward" or top.get("args", {}).get("mb") != 1:
                bad.append("rank %d %s: post outside the last backward (inside %s)" % (pid, step, top.get("name")))
            state = "posted"
        elif e["ph"] == "E":
            b = stack.pop()
            if b["name"] == "backward" and state == "below":
                state = "ended"
            if b["name"].startswith("step ") and posts != want_posts:
                bad.append("rank %d %s: %d posts, expected %d" % (pid, step, posts, want_posts))
if not tracks:
    bad.append("no compute events")
print("\n".join(bad[:20]) if bad else "order ok: %d ranks, %d posts" % (len(tracks), posts_seen))
sys.exit(1 if bad else 0)
PY

for layout in 4:2:1 2:2:0 2:1:0; do
    IFS=: read -r dp ep posts <<< "$layout"
    name=dp${dp}ep$ep
    run_mpi "$dp" $name.txt "$DSTRAIN" train "${ARGS[@]}" --set train.name=$name --set parallel.dp=$dp \
        --set parallel.ep=$ep --set train.micro_batch_size=$((8 / dp))
    T="$SCRATCH/runs/$name/trace.json"
    check "($dp, $ep) trains and writes a trace (exit $RC, ${ELAPSED}s)" "[ $RC -eq 0 ] && [ -s '$T' ]" \
        || show $name.txt
    "$PY" "$SRC/tests/tools/check_trace.py" "$T" --ranks "$dp" --track compute --span optimizer=2 \
        --span backward=4 --span "reduce-scatter wait=2" --span "backward below MoE=$((2 * posts))" \
        > check.$name.txt 2>&1
    check "($dp, $ep): check_trace accepts it ($(tail -n 1 check.$name.txt))" "grep -q '^check_trace: ok' check.$name.txt"
    "$PY" order.py "$T" "$posts" > order.$name.txt 2>&1
    check "($dp, $ep): $posts early post(s) per rank and step, in order ($(head -n 3 order.$name.txt | tr '\n' ' '))" \
        "grep -q '^order ok' order.$name.txt"
done
finish
