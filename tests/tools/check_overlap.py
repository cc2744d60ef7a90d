#!/usr/bin/env python3
"""tests/tools/check_overlap.py - issue 11, acceptance 3: in a dstrain trace.json
(runtime/pipeline/trace.h; spans named as runtime/pipeline/executor.h and model/stage.h say),
inside every FB instruction the forward's dispatch of each MoE block is posted before a
compute phase of the backward runs and waited after it.

Order is the order of recording: a rank's events are written in the order it recorded them
(trace.c does not sort), so "before" and "after" here are exact, not subject to the clock's
resolution. Per rank:
  - an FB span on the compute track holds phase spans (args.phase F or B) and, on track
    "ep lane F", the forward's exchange spans; each "dispatch L<n>" among them (posted at its
    begin, waited at its end) must hold a whole backward phase span (args.phase "B");
  - the MoE blocks of the FB's forward (the n of its "dispatch L<n>") must be those that the
    plain F instructions of the same chunk dispatch for, so no MoE block is left out;
  - at least one FB holds a dispatch (else the check would be empty).
Prints "check_overlap: ok ..." and exits 0, or the problems (at most 20) and exits 1.
Usage: check_overlap.py TRACE.json
"""
import json
import sys


def spans_of(events):
    """Per pid: list of (name, tid, args, begin index, end index) for B/E pairs."""
    out, stacks = {}, {}
    for i, e in enumerate(events):
        if e.get("ph") == "B":
            stacks.setdefault((e["pid"], e["tid"]), []).append((e["name"], e.get("args", {}), i))
        elif e.get("ph") == "E":
            name, args, b = stacks[(e["pid"], e["tid"])].pop()
            out.setdefault(e["pid"], []).append((name, e["tid"], args, b, i))
    return out


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    tids = {}
    for e in events:
        if e.get("ph") == "M" and e["name"] == "thread_name":
            tids[(e["pid"], e["args"]["name"])] = e["tid"]
    problems, n_fb, n_disp = [], 0, 0
    for pid, spans in sorted(spans_of(events).items()):
        compute, lane_f = tids.get((pid, "compute")), tids.get((pid, "ep lane F"))
        top = [s for s in spans if s[1] == compute and s[0] in ("F", "FB")]
        disp = [s for s in spans if s[1] == lane_f and s[0].startswith("dispatch L")]
        bphases = [s for s in spans if s[1] == compute and s[2].get("phase") == "B" and s[0] not in ("B", "FB")]
        f_blocks = {}
        for name, _, args, b, e in top:
            if name == "F":
                f_blocks.setdefault(args.get("chunk"), set()).update(d[0] for d in disp if b < d[3] and d[4] < e)
        for name, _, args, b, e in top:
            if name != "FB":
                continue
            n_fb += 1
            inside = [d for d in disp if b < d[3] and d[4] < e]
            want = f_blocks.get(args.get("chunk"))
            if want is not None and {d[0] for d in inside} != want:
                problems.append("rank %d: FB (mb %s, chunk %s) dispatches %s, its chunk's F dispatches %s"
                                % (pid, args.get("mb"), args.get("chunk"), sorted(d[0] for d in inside), sorted(want)))
            for d in inside:
                n_disp += 1
                if not any(d[3] < p[3] and p[4] < d[4] for p in bphases):
                    problems.append("rank %d: FB (mb %s, chunk %s): '%s' holds no backward phase"
                                    % (pid, args.get("mb"), args.get("chunk"), d[0]))
    if n_disp == 0:
        problems.append("no FB instruction holds a forward dispatch (%d FB spans)" % n_fb)
    for p in problems[:20]:
        print("check_overlap: " + p)
    if problems:
        return 1
    print("check_overlap: ok: %d FB instructions, each of their %d forward dispatches in flight across a backward phase"
          % (n_fb, n_disp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
