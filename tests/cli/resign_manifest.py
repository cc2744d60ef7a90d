"""tests/cli/resign_manifest.py - make a damaged checkpoint pass its checksums again, so a test
reaches the readers behind the checksum gate (HDF5 layout, shapes, state).

usage: python3 resign_manifest.py [KEY=JSON ...] CKPT_DIR
                                                    re-sign: set each top-level KEY to the JSON
                                                    value, each file's bytes and XXH64 from the
                                                    disk, then manifest_checksum
       python3 resign_manifest.py --check CKPT_DIR  exit 0 when the stored checksums equal the
                                                    ones computed here (the self-test)

The manifest rule (checkpoint/manifest.h): manifest_checksum is XXH64 (seed 0) of the JSON
object without that key, written compact with sorted keys. XXH64 is written here from the
xxHash specification; Python's json with separators (',', ':') and sort_keys gives the same
bytes as jansson's JSON_COMPACT | JSON_SORT_KEYS for the manifest's ASCII keys, integers,
booleans and strings (ensure_ascii=False: both write UTF-8 and escape \\n the same way);
--check proves it on a real checkpoint before any result depends on it.
"""
import json
import os
import sys

M = (1 << 64) - 1
P1, P2, P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
P4, P5 = 9650029242287828579, 2870177450012600261


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def rnd(acc, lane):
    return (rotl((acc + lane * P2) & M, 31) * P1) & M


def merge(acc, v):
    return ((acc ^ rnd(0, v)) * P1 + P4) & M


def xxh64(data):
    n, i = len(data), 0
    if n >= 32:
        v = [(P1 + P2) & M, P2, 0, (-P1) & M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = rnd(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
        for k in range(4):
            h = merge(h, v[k])
    else:
        h = P5
    h = (h + n) & M
    while i + 8 <= n:
        h = (rotl(h ^ rnd(0, int.from_bytes(data[i:i + 8], "little")), 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ (int.from_bytes(data[i:i + 4], "little") * P1) & M, 23) * P2 + P3) & M
        i += 4
    while i < n:
        h = (rotl(h ^ (data[i] * P5) & M, 11) * P1) & M
        i += 1
    h = ((h ^ (h >> 33)) * P2) & M
    h = ((h ^ (h >> 29)) * P3) & M
    return h ^ (h >> 32)


def self_checksum(root):
    body = {k: v for k, v in root.items() if k != "manifest_checksum"}
    text = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return "%016x" % xxh64(text.encode("utf-8"))


def main():
    check = sys.argv[1] == "--check"
    ckpt = sys.argv[-1]
    path = os.path.join(ckpt, "manifest.json")
    with open(path, encoding="utf-8") as f:
        root = json.load(f)
    sums = []
    for e in root["files"]:
        with open(os.path.join(ckpt, e["name"]), "rb") as f:
            data = f.read()
        sums.append((e, len(data), "%016x" % xxh64(data)))
    if check:
        ok = all(e["bytes"] == n and e["checksum"] == s for e, n, s in sums)
        ok = ok and root["manifest_checksum"] == self_checksum(root)
        print("checksums agree" if ok else "checksums DIFFER")
        return 0 if ok else 1
    for e, n, s in sums:
        e["bytes"], e["checksum"] = n, s
    for arg in sys.argv[1:-1]:
        key, value = arg.split("=", 1)
        root[key] = json.loads(value)
    root["manifest_checksum"] = self_checksum(root)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(root, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
