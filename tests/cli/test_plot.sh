#!/bin/bash
# tests/cli/test_plot.sh - loss.svg from `dstrain train` and `dstrain plot` (runtime/plot.h).
# Usage: bash test_plot.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
#
# What it checks: a tiny run (20 steps, validation and a checkpoint every 10) leaves
# runs/tiny/loss.svg; it parses as XML and holds every series (loss, MTP loss, validation
# loss and MTP loss, loss floor, lr, grad norm, MaxVio mean and max) with as many points as
# metrics.jsonl has records for it, placed so that a larger value is higher on the page (the
# axis mapping, checked point by point); rsvg-convert renders it to a PNG of the stated size;
# `dstrain plot RUN --out` writes the same bytes; a metrics file holding steps twice (a
# resume) draws each step once; null values are left out; 5000 steps draw as PLOT_MAX_POINTS
# (1000) bucket means; bad arguments and files are one-line errors.
# Needs rsvg-convert (Debian's librsvg2-bin, installed by ./build.sh test): fails without it.
BIN=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/cli/lib.sh"
PY=${DSTRAIN_TEST_PYTHON:-python3}
command -v rsvg-convert > /dev/null || { echo "FAIL: rsvg-convert not found (apt-get install librsvg2-bin; ./build.sh test does)"; exit 1; }

"$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data --set train.checkpoint_every=10 \
    > train.txt 2>&1
rc=$?
check "tiny trains ($(tail -c 300 train.txt))" '[ $rc -eq 0 ]'
check "train wrote runs/tiny/loss.svg" '[ -s runs/tiny/loss.svg ]'
check "no plot error in the train output" '! grep -q "^plot:" train.txt'

# svg_check SVG JSONL: every series with its points counted from JSONL and the y mapping
# monotone (a larger value never lower on the page); prints what it found
cat > svg_check.py << 'EOF'
import json, sys, xml.etree.ElementTree as ET
svg, jsonl = sys.argv[1], sys.argv[2]
ns = {"s": "http://www.w3.org/2000/svg"}
root = ET.parse(svg).getroot()
lines = {p.get("id")[7:]: [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
         for p in root.iter("{http://www.w3.org/2000/svg}polyline") if p.get("id", "").startswith("series-")}
want = {}
for line in open(jsonl):
    r = json.loads(line)
    keys = []
    if r["type"] == "step":
        keys = [(k, r[k]) for k in ("loss", "lr", "grad_norm", "maxvio", "maxvio_max")]
        keys += [("mtp_loss_%d" % (i + 1), v) for i, v in enumerate(r["mtp_loss"])]
    elif r["type"] == "val":
        keys = [("val_loss", r["val_loss"])] + [("val_mtp_loss_%d" % (i + 1), v) for i, v in enumerate(r["val_mtp_loss"])]
    for k, v in keys:
        if v is not None:
            want.setdefault(k, {})[r["step"]] = v
bad = 0
for k, pts in sorted(want.items()):
    got = lines.get(k)
    if got is None or len(got) != len(pts):
        print("series %s: %s points drawn, %d in the metrics" % (k, None if got is None else len(got), len(pts)))
        bad += 1
        continue
    vals = [pts[s] for s in sorted(pts)]
    for i in range(len(vals)):
        for j in range(len(vals)):
            if vals[i] > vals[j] and not got[i][1] <= got[j][1]:
                print("series %s: value %g drawn below %g" % (k, vals[i], vals[j]))
                bad += 1
if "loss_floor" not in lines:
    print("no loss_floor line")
    bad += 1
print("series: " + " ".join("%s=%d" % (k, len(v)) for k, v in sorted(lines.items())))
sys.exit(1 if bad else 0)
EOF
"$PY" svg_check.py runs/tiny/loss.svg runs/tiny/metrics.jsonl > check.txt 2>&1
rc=$?
check "loss.svg parses and holds every series, points mapped in order ($(tail -c 600 check.txt))" '[ $rc -eq 0 ]'
for k in loss mtp_loss_1 val_loss val_mtp_loss_1 loss_floor lr grad_norm maxvio maxvio_max; do
    check "series $k in loss.svg" "grep -q 'id=\"series-$k\"' runs/tiny/loss.svg"
done
rsvg-convert -o loss.png runs/tiny/loss.svg 2> rsvg.txt
rc=$?
check "rsvg-convert renders loss.svg ($(head -c 300 rsvg.txt))" '[ $rc -eq 0 ] && [ -s loss.png ]'
# PNG: 8-byte signature, then the IHDR chunk whose first two big-endian words are width, height
check "the PNG is 1200 x 820" \
    '[ "$(od -An -tx1 -j16 -N8 loss.png | tr -d " \n")" = "000004b000000334" ]'

"$BIN" plot runs/tiny --out again.svg > plot.txt 2>&1
rc=$?
check "plot --out ($(head -c 200 plot.txt))" '[ $rc -eq 0 ] && grep -q "wrote again.svg" plot.txt'
check "plot draws the same bytes as train" 'cmp -s again.svg runs/tiny/loss.svg'
"$BIN" plot --help > help.txt
rc=$?
check "plot --help" '[ $rc -eq 0 ] && grep -q "usage: dstrain plot RUN_DIR" help.txt'

# a resumed run's metrics: steps 11-20 logged twice, one loss null
mkdir -p resumed
grep -v '"type":"final"' runs/tiny/metrics.jsonl > resumed/metrics.jsonl
grep '"type":"step"' runs/tiny/metrics.jsonl | tail -n 10 >> resumed/metrics.jsonl
"$BIN" plot resumed > /dev/null 2>&1
check "plot of a resumed run" '[ -s resumed/loss.svg ]'
check "each step drawn once" \
    "[ \$(grep -o 'id=\"series-loss\"[^>]*points=\"[^\"]*' resumed/loss.svg | sed 's/.*points=\"//' | wc -w) -eq 20 ]"
mkdir -p nulls
sed '0,/"loss":[-0-9.e]*,/s//"loss":null,/' runs/tiny/metrics.jsonl > nulls/metrics.jsonl
"$BIN" plot nulls > /dev/null 2>&1
check "a null loss is left out" \
    "[ \$(grep -o 'id=\"series-loss\"[^>]*points=\"[^\"]*' nulls/loss.svg | sed 's/.*points=\"//' | wc -w) -eq 19 ]"

# a long run: 5000 step records draw as 1000 bucket means
mkdir -p long
awk 'BEGIN { for (i = 1; i <= 5000; i++) printf "{\"type\":\"step\",\"step\":%d,\"steps\":5000,\"loss\":%g,\"mtp_loss\":[%g],\"lr\":0.001,\"grad_norm\":1,\"maxvio\":0.5,\"maxvio_max\":0.7}\n", i, 5 / (1 + i / 100), 5.5 / (1 + i / 100) }' \
    > long/metrics.jsonl
"$BIN" plot long > /dev/null 2>&1
check "a 5000-step run draws 1000 points a series" \
    "[ \$(grep -o 'id=\"series-loss\"[^>]*points=\"[^\"]*' long/loss.svg | sed 's/.*points=\"//' | wc -w) -eq 1000 ]"
check "and stays small (< 200 kB)" '[ $(stat -c %s long/loss.svg) -lt 200000 ]'
rsvg-convert -o long.png long/loss.svg 2> /dev/null
rc=$?
check "rsvg-convert renders it" '[ $rc -eq 0 ] && [ -s long.png ]'

expect_error "plot: RUN_DIR is required" plot
expect_error "cannot open 'nowhere/metrics.jsonl'" plot nowhere
expect_error "unknown option '--bogus'" plot runs/tiny --bogus
expect_error "'--out' needs a FILE" plot runs/tiny --out
expect_error "unexpected argument 'b'" plot a b
mkdir -p broken
printf '{"type":"step","step":1,"loss":2}\nnot json\n' > broken/metrics.jsonl
expect_error "'broken/metrics.jsonl' line 2 is not a JSON object" plot broken
expect_error "cannot write '/nonexistent-dir/x.svg.tmp'" plot runs/tiny --out /nonexistent-dir/x.svg
finish
