#!/usr/bin/env python3
"""tests/tools/check_trace.py - checks a Chrome trace-event JSON file (dstrain's trace.json,
runtime/pipeline/trace.h) with the Python standard library only.

Format rules (Google's "Trace Event Format", the JSON object or array form):
  - the file is valid JSON: {"traceEvents": [...], ...} or a bare list of events;
  - every event has "name" (string), "ph" (one of B E X i I M), "ts" (a finite number >= 0),
    "pid" and "tid" (integers); "X" also has "dur" >= 0; instants' "s" is t, p or g;
  - on every track (pid, tid) the events other than metadata are in time order (ts never
    decreases in file order) and the spans match: each "E" closes the innermost open "B" of its
    track (with the same name when it has one), and no "B" is left open at the end.
Expectations (options):
  --ranks N          the processes (pids) with events are exactly 0..N-1, each named by a
                     "process_name" metadata event
  --track NAME       every rank has a track named NAME ("thread_name") carrying events
  --span NAME=K      every rank has exactly K spans (B or X) named NAME (NAME=K+ : at least K)
  --contains A/B     every span named A (any track) holds in its time a whole span named B of the
                     same rank (any track): e.g. a forward's dispatch (comm lane) around the
                     backward's compute phase it overlaps
Prints one line "check_trace: ok ..." and exits 0, or the problems (at most 20) and exits 1.
Usage: check_trace.py TRACE.json [--ranks N] [--track NAME ...] [--span NAME=K ...] [--contains A/B ...]
"""
import argparse
import json
import math
import sys

PHASES = {"B", "E", "X", "i", "I", "M"}


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def event_problems(i, e):
    """Problems of event i on its own (fields and their types)."""
    if not isinstance(e, dict):
        return ["event %d is not an object" % i]
    out = []
    for key in ("name", "ph", "ts", "pid", "tid"):
        if key not in e:
            out.append("event %d (%s) has no '%s'" % (i, e.get("name", "?"), key))
    if out:
        return out
    if not isinstance(e["name"], str):
        out.append("event %d: 'name' is not a string" % i)
    if e["ph"] not in PHASES:
        out.append("event %d (%s): 'ph' = %r is not one of %s" % (i, e["name"], e["ph"], sorted(PHASES)))
    if not is_num(e["ts"]) or e["ts"] < 0:
        out.append("event %d (%s): 'ts' = %r is not a number >= 0" % (i, e["name"], e["ts"]))
    if not is_int(e["pid"]) or not is_int(e["tid"]):
        out.append("event %d (%s): 'pid'/'tid' are not integers" % (i, e["name"]))
    if e["ph"] == "X" and (not is_num(e.get("dur")) or e.get("dur") < 0):
        out.append("event %d (%s): a complete event needs 'dur' >= 0" % (i, e["name"]))
    if e["ph"] in ("i", "I") and e.get("s", "t") not in ("t", "p", "g"):
        out.append("event %d (%s): instant scope 's' = %r" % (i, e["name"], e.get("s")))
    return out


def track_problems(events):
    """Time order and begin/end matching per (pid, tid); returns (problems, spans, intervals)."""
    out = []
    last = {}      # (pid, tid) -> ts of its previous event
    open_ = {}     # (pid, tid) -> stack of open spans (name, begin ts)
    spans = {}     # (pid, name) -> count
    intervals = {} # (pid, name) -> [(begin, end)]
    for i, e in enumerate(events):
        if e["ph"] == "M":
            continue
        key = (e["pid"], e["tid"])
        if key in last and e["ts"] < last[key]:
            out.append("event %d (%s): ts %.3f goes back in time on track pid %d tid %d (previous %.3f)"
                       % (i, e["name"], e["ts"], key[0], key[1], last[key]))
        last[key] = e["ts"]
        stack = open_.setdefault(key, [])
        if e["ph"] in ("B", "X"):
            spans[(e["pid"], e["name"])] = spans.get((e["pid"], e["name"]), 0) + 1
        if e["ph"] == "X":
            intervals.setdefault((e["pid"], e["name"]), []).append((e["ts"], e["ts"] + e["dur"]))
        if e["ph"] == "B":
            stack.append((e["name"], e["ts"]))
        elif e["ph"] == "E":
            if not stack:
                out.append("event %d (%s): an end with no open span on pid %d tid %d" % (i, e["name"], *key))
            else:
                begun, t0 = stack.pop()
                if e["name"] and e["name"] != begun:
                    out.append("event %d: end '%s' closes '%s' on pid %d tid %d" % (i, e["name"], begun, *key))
                intervals.setdefault((e["pid"], begun), []).append((t0, e["ts"]))
    for key, stack in open_.items():
        if stack:
            out.append("pid %d tid %d: %d span(s) never ended (%s)" % (key[0], key[1], len(stack),
                                                                      ", ".join(n for n, _ in stack)))
    return out, spans, intervals


def containment_problems(intervals, ranks, specs):
    """--contains A/B: every span A of a rank holds a whole span B of that rank."""
    out = []
    for spec in specs:
        outer, _, inner = spec.partition("/")
        for r in ranks:
            inside = intervals.get((r, inner), [])
            for b, e in intervals.get((r, outer), []):
                if not any(b <= ib and ie <= e for ib, ie in inside):
                    out.append("rank %d: span '%s' at %.3f..%.3f us holds no span '%s'" % (r, outer, b, e, inner))
    return out


def expectation_problems(events, spans, args):
    out = []
    pids = sorted({e["pid"] for e in events if e["ph"] != "M"})
    named = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {}   # (pid, name) -> tid
    for e in events:
        if e["ph"] == "M" and e["name"] == "thread_name":
            threads[(e["pid"], e.get("args", {}).get("name"))] = e["tid"]
    busy = {(e["pid"], e["tid"]) for e in events if e["ph"] != "M"}
    ranks = list(range(args.ranks)) if args.ranks is not None else pids
    if args.ranks is not None and pids != ranks:
        out.append("ranks with events are %s, expected 0..%d" % (pids, args.ranks - 1))
    for r in ranks:
        if r not in named:
            out.append("rank %d has no process_name" % r)
        for t in args.track:
            tid = threads.get((r, t))
            if tid is None:
                out.append("rank %d has no track named '%s'" % (r, t))
            elif (r, tid) not in busy:
                out.append("rank %d: track '%s' (tid %d) has no events" % (r, t, tid))
        for spec in args.span:
            name, _, want = spec.rpartition("=")
            at_least = want.endswith("+")
            k = int(want.rstrip("+"))
            got = spans.get((r, name), 0)
            if got < k or (got != k and not at_least):
                out.append("rank %d has %d span(s) named '%s', expected %s%d" % (r, got, name,
                                                                             "at least " if at_least else "", k))
    return out, ranks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--ranks", type=int)
    ap.add_argument("--track", action="append", default=[])
    ap.add_argument("--span", action="append", default=[])
    ap.add_argument("--contains", action="append", default=[])
    args = ap.parse_args()
    try:
        with open(args.trace) as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        print("check_trace: %s is not readable JSON: %s" % (args.trace, err))
        return 1
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc
    if not isinstance(events, list):
        print("check_trace: %s has no list of events ('traceEvents')" % args.trace)
        return 1
    problems = []
    for i, e in enumerate(events):
        problems += event_problems(i, e)
    if not problems:
        found, spans, intervals = track_problems(events)
        problems += found
        more, ranks = expectation_problems(events, spans, args)
        problems += more + containment_problems(intervals, ranks, args.contains)
    if problems:
        for p in problems[:20]:
            print("check_trace: " + p)
        print("check_trace: %s: %d problem(s)" % (args.trace, len(problems)))
        return 1
    n = sum(1 for e in events if e["ph"] != "M")
    print("check_trace: ok: %d events on %d rank(s), %d track(s)" %
          (n, len(ranks), len({(e["pid"], e["tid"]) for e in events if e["ph"] != "M"})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
