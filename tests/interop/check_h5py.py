#!/usr/bin/env python3
"""tests/interop/check_h5py.py - a dstrain checkpoint read by h5py + hdf5plugin, with no help
from dstrain: the zstd filter (HDF5 id 32015) must be readable by the standard plugin.

usage: check_h5py.py CKPT_DIR [--export HF_DIR]

Checks, against the formats documented in checkpoint/manifest.h and checkpoint/h5.h:
  - manifest.json: its manifest_checksum (XXH64 of the compact, key-sorted JSON without that
    key) recomputed here, and every file's size and XXH64 (a second implementation of both);
  - every rank file: the root attributes, every listed tensor (and its exp_avg / exp_avg_sq
    when the manifest says the moments are there) is float32 with shuffle + zstd filters,
    full_shape equal to its shape and slice_start zero, and reads without error; no dataset
    the manifest does not list; the /state attributes equal the manifest's step and tokens;
  - with --export HF_DIR (the output of `dstrain export` of the same checkpoint): every weight
    h5py reads equals, bit for bit, the same tensor in the safetensors files (parsed here by
    hand: u64 header length, JSON header, raw little-endian data). Those bytes went through
    dstrain's own HDF5 reader, so the two readers are compared on every value.
Prints SKIP and exits 0 when h5py, hdf5plugin or numpy is not importable; exits 1 on any
mismatch. Not here: transformers (check_hf.py).
"""
import json
import os
import struct
import sys

MASK = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & MASK


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & MASK, 31) * P1) & MASK


def xxh64(data):
    """XXH64, seed 0, from the xxHash specification (pure Python: for small files)."""
    n, i = len(data), 0
    if n >= 32:
        acc = [(P1 + P2) & MASK, P2, 0, (-P1) & MASK]
        while i + 32 <= n:
            lanes = struct.unpack_from("<4Q", data, i)
            acc = [_round(a, l) for a, l in zip(acc, lanes)]
            i += 32
        h = (_rotl(acc[0], 1) + _rotl(acc[1], 7) + _rotl(acc[2], 12) + _rotl(acc[3], 18)) & MASK
        for a in acc:
            h = (((h ^ _round(0, a)) * P1) + P4) & MASK
    else:
        h = P5
    h = (h + n) & MASK
    while i + 8 <= n:
        h ^= _round(0, struct.unpack_from("<Q", data, i)[0])
        h = (_rotl(h, 27) * P1 + P4) & MASK
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * P1) & MASK
        h = (_rotl(h, 23) * P2 + P3) & MASK
        i += 4
    while i < n:
        h ^= (data[i] * P5) & MASK
        h = (_rotl(h, 11) * P1) & MASK
        i += 1
    h ^= h >> 33
    h = (h * P2) & MASK
    h ^= h >> 29
    h = (h * P3) & MASK
    return h ^ (h >> 32)


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def expect(self, cond, msg):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL:", msg)


def read_safetensors(hf_dir):
    """name -> (dtype, shape, raw bytes) over every *.safetensors file of hf_dir."""
    out = {}
    for fname in sorted(os.listdir(hf_dir)):
        if not fname.endswith(".safetensors"):
            continue
        with open(os.path.join(hf_dir, fname), "rb") as f:
            blob = f.read()
        (hlen,) = struct.unpack_from("<Q", blob, 0)
        header = json.loads(blob[8:8 + hlen])
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, en = e["data_offsets"]
            out[name] = (e["dtype"], e["shape"], blob[8 + hlen + b:8 + hlen + en])
    return out


def check_manifest(c, ckpt):
    with open(os.path.join(ckpt, "manifest.json"), "rb") as f:
        m = json.loads(f.read())
    body = {k: v for k, v in m.items() if k != "manifest_checksum"}
    text = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    c.expect("%016x" % xxh64(text.encode()) == m["manifest_checksum"], "manifest_checksum does not match")
    for f in m["files"]:
        path = os.path.join(ckpt, f["name"])
        c.expect(os.path.getsize(path) == f["bytes"], "%s: size differs from the manifest" % f["name"])
        if f["bytes"] <= (64 << 20):   # pure-Python XXH64 is slow; big files are checked by dstrain itself
            with open(path, "rb") as fh:
                c.expect("%016x" % xxh64(fh.read()) == f["checksum"], "%s: checksum differs" % f["name"])
    return m


def check_rank_file(c, h5py, np, path, m, f, export):
    suffixes = ["", ".exp_avg", ".exp_avg_sq"] if m["optimizer_moments"] else [""]
    with h5py.File(path, "r") as h:
        c.expect(int(h.attrs["format_version"]) == m["format_version"], "%s: format_version" % path)
        c.expect(int(h.attrs["rank"]) == f["rank"], "%s: rank" % path)
        c.expect(int(h.attrs["world_size"]) == m["layout"]["world_size"], "%s: world_size" % path)
        listed = {t + s for t in f["tensors"] for s in suffixes}
        present = {k for k in h.keys() if k != "state"}
        c.expect(present == listed, "%s: datasets differ from the manifest's list (%d vs %d)"
                 % (path, len(present), len(listed)))
        # format 2: each tensor's rows [start, start + count) of the whole (one block per file)
        blocks = {}
        for t, b in zip(f["tensors"], f.get("row_blocks", [])):
            for s in suffixes:
                blocks[t + s] = b
        compared = 0
        for name in sorted(listed & present):
            ds = h[name]
            filters = ds._filters
            c.expect(ds.dtype == np.dtype("<f4"), "%s: dtype %s" % (name, ds.dtype))
            c.expect("shuffle" in filters and "32015" in filters, "%s: filters %s" % (name, filters))
            full, start = list(ds.attrs["full_shape"]), list(ds.attrs["slice_start"])
            b = blocks.get(name, [0, ds.shape[0]])
            c.expect(start == [b[0]] + [0] * (len(start) - 1) and ds.shape[0] == b[1] and b[0] + b[1] <= full[0]
                     and list(ds.shape[1:]) == full[1:], "%s: slice %s of %s, manifest block %s"
                     % (name, start, full, b))
            values = ds[()]
            c.expect(np.all(np.isfinite(values)), "%s: non-finite values" % name)
            if export is not None and name in export and list(ds.shape) == full:
                dtype, shape, raw = export[name]
                same = dtype == "F32" and list(shape) == list(ds.shape) and raw == values.astype("<f4").tobytes()
                c.expect(same, "%s: h5py's values differ from the export's" % name)
                compared += 1
        st = h["state"].attrs
        c.expect(int(st["step"]) == m["step"] and int(st["tokens"]) == m["tokens"], "%s: state step/tokens" % path)
        print("%s: %d datasets read, %d compared with the export, state step %d tokens %d cursor %d"
              % (path, len(present), compared, int(st["step"]), int(st["tokens"]), int(st["data_cursor"])))
        return compared


def main():
    try:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the zstd filter with h5py's HDF5)
        import numpy as np
    except ImportError as e:
        print("SKIP: %s (pip install h5py hdf5plugin to run this check)" % e)
        return 0
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help") or len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--export"):
        print(__doc__)
        return 2
    ckpt = args[0]
    export = read_safetensors(args[2]) if len(args) == 3 else None
    c = Checker()
    m = check_manifest(c, ckpt)
    compared = 0
    for f in m["files"]:
        compared += check_rank_file(c, h5py, np, os.path.join(ckpt, f["name"]), m, f, export)
    if export is not None:
        c.expect(compared == len(export), "compared %d tensors, the export holds %d" % (compared, len(export)))
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
