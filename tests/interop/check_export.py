#!/usr/bin/env python3
"""tests/interop/check_export.py - a `dstrain export` directory against the checkpoint it came
from, read with no help from dstrain, one tensor at a time (so it runs beside a large model).

usage: check_export.py CKPT_DIR HF_DIR

The checkpoint may be of any layout (checkpoint/manifest.h): each tensor is gathered here from
the row blocks of every rank file listing it ("row_blocks", format 2; whole in one file, format
1), read by h5py + hdf5plugin. The export (checkpoint/safetensors.h) is parsed by hand: u64
header length, JSON header, raw little-endian F32 data. Checks:
  - every weight of the checkpoint is in the export exactly once, bit for bit, with its shape,
    and the export holds nothing else; the blocks of each tensor cover its rows exactly once;
  - MTP tensors (layer >= num_hidden_layers) are in mtp.safetensors only, the others in
    model.safetensors or the shards the index names, and the index's total_size is theirs;
  - each safetensors file's tensors are contiguous from offset 0 and fill the file;
  - config.json names DeepseekV3ForCausalLM with the checkpoint's [model] shape keys.
Prints SKIP and exits 0 when h5py, hdf5plugin or numpy is not importable; exits 1 on any
mismatch (the first few printed).
"""
import json
import os
import sys

SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "n_routed_experts", "moe_intermediate_size",
              "num_nextn_predict_layers", "num_attention_heads", "kv_lora_rank")


def model_keys(config_text):
    """The [model] section's integer keys of the resolved config text in the manifest."""
    keys, section = {}, None
    for line in config_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif "=" in line and section == "model":
            k, v = (x.strip() for x in line.split("=", 1))
            try:
                keys[k] = int(v)
            except ValueError:
                pass
    return keys


def read_safetensors(path):
    """(header without __metadata__, data offset, file size)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n, os.path.getsize(path)


class Checker:
    def __init__(self):
        self.failed = 0
        self.passed = 0

    def expect(self, cond, msg):
        if cond:
            self.passed += 1
            return True
        self.failed += 1
        if self.failed <= 10:
            print("FAIL: " + msg)
        return False


def export_files(hf, keys, c):
    """name -> (file path, header entry, data start) over the export; checks the layout."""
    index = os.path.join(hf, "model.safetensors.index.json")
    if os.path.exists(index):
        idx = json.load(open(index))
        main = sorted(set(idx["weight_map"].values()))
    else:
        idx, main = None, ["model.safetensors"]
    files = [(f, False) for f in main]
    if os.path.exists(os.path.join(hf, "mtp.safetensors")):
        files.append(("mtp.safetensors", True))
    where, main_bytes = {}, 0
    for name, mtp in files:
        path = os.path.join(hf, name)
        header, start, size = read_safetensors(path)
        spans = sorted(tuple(e["data_offsets"]) for e in header.values())
        contiguous = all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and spans[0][0] == 0
        c.expect(contiguous and start + spans[-1][1] == size, "%s: data not contiguous or not filling the file" % name)
        for t, e in header.items():
            c.expect(t not in where, "%s: tensor %s appears twice in the export" % (name, t))
            layer = t.split(".")[2] if t.startswith("model.layers.") else None
            is_mtp = layer is not None and int(layer) >= keys["num_hidden_layers"]
            c.expect(is_mtp == mtp, "%s: tensor %s in the wrong file" % (name, t))
            if idx is not None and not mtp:
                c.expect(idx["weight_map"].get(t) == name, "index: %s not mapped to %s" % (t, name))
            if not mtp:
                main_bytes += e["data_offsets"][1] - e["data_offsets"][0]
            where[t] = (path, e, start)
    if idx is not None:
        c.expect(idx["metadata"]["total_size"] == main_bytes, "index total_size %s, the shards hold %d"
                 % (idx["metadata"]["total_size"], main_bytes))
    return where


def gather(np, h5, ckpt, blocks, name):
    """The whole tensor `name` from its row blocks [(file, start, count)]; None when they do not tile it."""
    parts, rows = [], 0
    for fname, start, count in sorted(blocks, key=lambda b: b[1]):
        ds = h5[fname][name]
        full = [int(x) for x in ds.attrs["full_shape"]]
        if start != rows or (count >= 0 and ds.shape[0] != count):
            return None
        parts.append(np.asarray(ds[...], dtype="<f4"))
        rows += ds.shape[0]
    if rows != full[0]:
        return None
    return np.concatenate(parts, axis=0).reshape(full)


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    try:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the zstd filter)
        import numpy as np
    except ImportError as e:
        print("SKIP: %s" % e)
        return 0
    ckpt, hf = argv
    c = Checker()
    m = json.load(open(os.path.join(ckpt, "manifest.json")))
    keys = model_keys(m["config"])
    blocks = {}
    for f in m["files"]:
        rb = f.get("row_blocks") or [[0, -1]] * len(f["tensors"])
        for t, (start, count) in zip(f["tensors"], rb):
            blocks.setdefault(t, []).append((f["name"], start, count))
    where = export_files(hf, keys, c)
    c.expect(set(where) == set(blocks), "export and checkpoint hold other tensors (%d vs %d; e.g. %s)"
             % (len(where), len(blocks), sorted(set(where) ^ set(blocks))[:3]))
    h5 = {f["name"]: h5py.File(os.path.join(ckpt, f["name"]), "r") for f in m["files"]}
    values = 0
    for t in sorted(set(where) & set(blocks)):
        a = gather(np, h5, ckpt, blocks[t], t)
        if not c.expect(a is not None, "%s: the row blocks do not cover the tensor once" % t):
            continue
        path, e, start = where[t]
        b = np.memmap(path, dtype="<f4", mode="r", offset=start + e["data_offsets"][0], shape=tuple(e["shape"]))
        c.expect(e["dtype"] == "F32" and list(a.shape) == e["shape"] and
                 np.array_equal(a.view("<u4"), np.asarray(b).view("<u4")), "%s differs from the checkpoint" % t)
        values += a.size
        del b
    for h in h5.values():
        h.close()
    cfg = json.load(open(os.path.join(hf, "config.json")))
    c.expect(cfg.get("architectures") == ["DeepseekV3ForCausalLM"] and cfg.get("model_type") == "deepseek_v3",
             "config.json does not name DeepseekV3ForCausalLM")
    for k in SHAPE_KEYS:
        c.expect(cfg.get(k) == keys.get(k), "config.json %s = %s, the checkpoint %s" % (k, cfg.get(k), keys.get(k)))
    print("%d tensors (%d values) from %d rank files equal bit for bit; %d checks passed, %d failed"
          % (len(blocks), values, len(m["files"]), c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
