#!/usr/bin/env python3
"""tests/tools/pp_bubble.py - the pipeline bubble measured in trace.json files next to the
simulator's and SPEC 8's figures for the same measured F/B/W times (tests/bench/pp_bench.sh).

Usage: pp_bubble.py --sim PP_SIM --pp PP --micro-batches C NAME=TRACE [NAME=TRACE ...]
  NAME is the schedule (1f1b, zb1p, dualpipe, dualpipev), TRACE its trace.json (format:
  runtime/pipeline/trace.h), PP_SIM the tests/tools/pp_sim binary.

What it measures, per rank and traced step, on the compute track (tid 0):
  busy  the summed duration of the outermost F, B, W and FB instruction spans in the step;
  idle(step)  1 - busy / the rank's "step k" span (includes the optimizer and loss reads);
  idle(pipe)  1 - busy / the pipeline window: first instruction start to last instruction end
              over all ranks in that step (what the simulator's makespan models).
Means over the traced steps. Instruction times are means over all ranks and steps: F, FB
(args carry the F part), W, and B split in two: a B whose (mb, chunk) has a W on the same rank
in the same step is an input-gradient B ("B-in"); otherwise it computes W inside ("B-fused").
The full backward is B = B-in + W where split B's exist, else B-fused.
  sim     pp_sim KIND PP C with per-rank (F, B, W) means: its idle / makespan per rank.
  SPEC 8  the bubble formula with the all-rank means (1f1b (PP-1)(F+B), zb1p (PP-1)(F+B-2W),
          dualpipe/v (PP/2-1)(F&B+B-3W), F&B = the mean FB span), as a fraction
          bubble / (bubble + mean measured busy per rank).
Only the standard library."""
import argparse
import json
import subprocess
import sys

INSTR = ("F", "B", "W", "FB")


def die(msg):
    print("pp_bubble: " + msg, file=sys.stderr)
    sys.exit(2)


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def spans(path):
    """Per rank: a list of (step, name, t0, t1, mb, chunk) instruction spans and {step: (t0, t1)}."""
    try:
        with open(path) as f:
            ev = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError) as e:
        die("%s: %s" % (path, e))
    stacks, instr, steps = {}, {}, {}
    for e in ev:
        if e.get("tid") != 0 or e.get("ph") not in ("B", "E"):
            continue
        r = e["pid"]
        st = stacks.setdefault(r, [])
        if e["ph"] == "B":
            st.append(e)
            continue
        if not st:
            die("%s: rank %d: an end without a begin" % (path, r))
        b = st.pop()
        name = b.get("name", "")
        if name.startswith("step "):
            steps.setdefault(r, {})[int(name[5:])] = (b["ts"], e["ts"])
        elif name in INSTR and not any(a.get("name") in INSTR for a in st):
            step = next((int(a["name"][5:]) for a in st if a.get("name", "").startswith("step ")), None)
            if step is not None:
                a = b.get("args", {})
                instr.setdefault(r, []).append((step, name, b["ts"], e["ts"], a.get("mb"), a.get("chunk")))
    if not instr:
        die("%s: no F/B/W/FB spans inside a traced step" % path)
    return instr, steps


def analyse(kind, path, pp, C, sim_bin):
    instr, steps = spans(path)
    ranks = sorted(instr)
    if len(ranks) != pp:
        die("%s: %d ranks traced, want %d" % (path, len(ranks), pp))
    per_rank, allt = {}, {"F": [], "B-in": [], "B-fused": [], "W": [], "FB": []}
    for r in ranks:
        w_keys = {(s, m, c) for (s, n, _, _, m, c) in instr[r] if n == "W"}
        t = {k: [] for k in allt}
        for (s, n, t0, t1, m, c) in instr[r]:
            k = n if n != "B" else ("B-in" if (s, m, c) in w_keys else "B-fused")
            t[k].append(t1 - t0)
            allt[k].append(t1 - t0)
        per_rank[r] = t
    window = {}
    for r in ranks:
        for (s, _, t0, t1, _, _) in instr[r]:
            lo, hi = window.get(s, (t0, t1))
            window[s] = (min(lo, t0), max(hi, t1))
    rows = []
    for r in ranks:
        busy_s, idle_step, idle_pipe = {}, [], []
        for (s, _, t0, t1, _, _) in instr[r]:
            busy_s[s] = busy_s.get(s, 0.0) + (t1 - t0)
        for s, busy in sorted(busy_s.items()):
            if s in steps.get(r, {}):
                a, b = steps[r][s]
                idle_step.append(1 - busy / (b - a))
            idle_pipe.append(1 - busy / (window[s][1] - window[s][0]))
        rows.append((r, mean(idle_step), mean(idle_pipe), mean(list(busy_s.values()))))

    def fbw(t):
        w = mean(t["W"])
        b = mean(t["B-in"]) + w if t["B-in"] else mean(t["B-fused"])
        return mean(t["F"]), b, w

    args = [sim_bin, kind, str(pp), str(C)]
    for r in ranks:
        args += ["%.9g" % x for x in fbw(per_rank[r])]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        die("%s: %s" % (" ".join(args), out.stderr.strip()))
    sim = {int(l.split()[1]): float(l.split()[-1]) for l in out.stdout.splitlines() if l.startswith("rank ")}
    F, B, W = fbw(allt)
    FB = mean(allt["FB"]) if allt["FB"] else F + B - W
    if kind == "1f1b":
        bub = (pp - 1) * (F + B)
    elif kind == "zb1p":
        bub = (pp - 1) * (F + B - 2 * W)
    else:
        bub = (pp / 2 - 1) * (FB + B - 3 * W)
    busy = mean([row[3] for row in rows])
    spec = bub / (bub + busy) if bub + busy > 0 else 0.0
    times = {k: mean(v) for k, v in allt.items()}
    return rows, sim, spec, bub, times, sorted(window)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", required=True)
    ap.add_argument("--pp", type=int, required=True)
    ap.add_argument("--micro-batches", type=int, required=True)
    ap.add_argument("traces", nargs="+", metavar="NAME=TRACE")
    o = ap.parse_args()
    res = []
    for item in o.traces:
        if "=" not in item:
            die("'%s': want NAME=TRACE" % item)
        kind, path = item.split("=", 1)
        res.append((kind,) + analyse(kind, path, o.pp, o.micro_batches, o.sim))
    print("idle fraction per rank (pp=%d, %d micro-batches; means over the traced steps)" % (o.pp, o.micro_batches))
    print("| schedule | rank | measured idle (step span) | measured idle (pipeline window) | simulator | SPEC 8 |")
    print("|---|---|---|---|---|---|")
    for kind, rows, sim, spec, _, _, _ in res:
        for (r, i_step, i_pipe, _) in rows:
            print("| %s | %d | %.3f | %.3f | %.3f | %.3f |" % (kind, r, i_step, i_pipe, sim.get(r, float("nan")), spec))
    print()
    print("measured mean instruction times, ms (all ranks, traced steps); SPEC 8 bubble for them")
    print("| schedule | steps | F | B-in | B-fused | W | FB | SPEC 8 bubble |")
    print("|---|---|---|---|---|---|---|---|")
    ms = lambda x: "%.1f" % (x / 1000) if x else "-"
    for kind, _, _, _, bub, t, st in res:
        print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (kind, ",".join(map(str, st)), ms(t["F"]), ms(t["B-in"]),
              ms(t["B-fused"]), ms(t["W"]), ms(t["FB"]), ms(bub)))


if __name__ == "__main__":
    main()
