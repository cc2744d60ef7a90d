"""tests/interop/test_fp8_ml_dtypes.py - kernels/fp8.h against PyPI's ml_dtypes, an
independent implementation of E4M3 ("float8_e4m3fn") and bfloat16 (issue 10, acceptance 1).

Reads the text of tests/tools/fp8_dump (see its header for the format) and recomputes every
encoding and every quantised tile with numpy + ml_dtypes:
  - E4M3, where the two define the same thing (finite |x| <= 464): codes equal bit for bit.
    Where they differ by design, the header's own rule is asserted and ml_dtypes' answer only
    counted: above 464 and for +-inf ml_dtypes gives NaN, the header saturates to +-448
    (0x7E / 0xFE, SPEC section 6: "finite values saturate"); for NaN inputs ml_dtypes keeps
    the sign (0xFF for a negative NaN), the header writes 0x7F always.
  - BF16: bits equal; NaN inputs must give a NaN of the same sign (payloads are not compared).
  - Tiles: scale = max(amax, FP8_AMAX_MIN) / 448 in numpy float32 (IEEE division), the power-
    of-two scale by frexp/ldexp (not by bits), codes = (x / s) cast to float8_e4m3fn.
Usage: python3 test_fp8_ml_dtypes.py DUMP_TXT.  Exits 1 on any mismatch.
"""
import sys

import ml_dtypes
import numpy as np

F8 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16


def bits_to_f32(words):
    return np.array([int(w, 16) for w in words], dtype=np.uint32).view(np.float32)


def check_values(xs, e4, bf):
    x = bits_to_f32(xs)
    e4 = np.array([int(w, 16) for w in e4], dtype=np.uint8)
    bf = np.array([int(w, 16) for w in bf], dtype=np.uint16)
    with np.errstate(all="ignore"):
        ref_e4 = x.astype(F8).view(np.uint8)
        ref_bf = x.astype(BF16).view(np.uint16)
    fails = []
    nan = np.isnan(x)
    ax = np.abs(x)
    same = ~nan & (ax <= 464)
    bad = same & (e4 != ref_e4)
    for i in np.flatnonzero(bad)[:5]:
        fails.append(f"e4m3({x[i]!r}) = 0x{e4[i]:02x}, ml_dtypes 0x{ref_e4[i]:02x}")
    beyond = ~nan & (ax > 464)
    want_sat = np.where(np.signbit(x), 0xFE, 0x7E).astype(np.uint8)
    bad_sat = beyond & (e4 != want_sat)
    for i in np.flatnonzero(bad_sat)[:5]:
        fails.append(f"e4m3({x[i]!r}) = 0x{e4[i]:02x}, want saturation 0x{want_sat[i]:02x}")
    bad_nan = nan & ((e4 != 0x7F) | ((ref_e4 & 0x7F) != 0x7F))
    if bad_nan.any():
        fails.append(f"{int(bad_nan.sum())} NaN inputs not encoded as NaN")
    ml_nan_beyond = int((beyond & ((ref_e4 & 0x7F) == 0x7F)).sum())

    bf_nan = nan
    bad_bf = ~bf_nan & (bf != ref_bf)
    for i in np.flatnonzero(bad_bf)[:5]:
        fails.append(f"bf16({x[i]!r}) = 0x{bf[i]:04x}, ml_dtypes 0x{ref_bf[i]:04x}")
    ours_nan = ((bf & 0x7F80) == 0x7F80) & ((bf & 0x7F) != 0)
    ref_nan = ((ref_bf & 0x7F80) == 0x7F80) & ((ref_bf & 0x7F) != 0)
    sign_ok = (bf >> 15) == (x.view(np.uint32) >> 31)
    bad_bf_nan = bf_nan & ~(ours_nan & ref_nan & sign_ok)
    if bad_bf_nan.any():
        fails.append(f"{int(bad_bf_nan.sum())} NaN inputs not NaN of the same sign in bf16")
    print(f"values: {len(x)} ({int(same.sum())} E4M3 compared bit for bit, "
          f"{int(beyond.sum())} beyond 464 saturated by the header where ml_dtypes gave NaN "
          f"{ml_nan_beyond} times, {int(nan.sum())} NaN); "
          f"bf16: {int((~bf_nan).sum())} compared bit for bit")
    return fails


def pow2_ceil(s):
    m, e = np.frexp(s)                    # s = m 2^e, m in [0.5, 1)
    if m == 0.5:
        return s
    return np.float32(np.ldexp(np.float32(1.0), int(e)))


def check_tile(amin, pow2, n, sbits, words):
    x = bits_to_f32(words[:n])
    q = np.array([int(w, 16) for w in words[n:]], dtype=np.uint8)
    s = bits_to_f32([sbits])[0]
    amax = np.max(np.abs(x))
    amax = amax if amax >= amin else amin
    ref_s = np.float32(amax) / np.float32(448.0)
    if pow2:
        ref_s = pow2_ceil(ref_s)
    if ref_s.view(np.uint32) != s.view(np.uint32):
        return [f"tile (pow2 {pow2}, n {n}): scale {s!r}, numpy {ref_s!r}"]
    with np.errstate(all="ignore"):
        ref_q = (x / ref_s).astype(F8).view(np.uint8)
    bad = np.flatnonzero(q != ref_q)
    return [f"tile (pow2 {pow2}, n {n}, scale {s!r}): x {x[i]!r} -> 0x{q[i]:02x}, "
            f"ml_dtypes 0x{ref_q[i]:02x}" for i in bad[:3]]


def main():
    xs, e4, bf, fails = [], [], [], []
    amin, tiles = None, 0
    with open(sys.argv[1]) as f:
        for line in f:
            w = line.split()
            if w[:2] == ["#", "amax_min"]:
                amin = bits_to_f32([w[2]])[0]
            elif w[0] == "v":
                xs.append(w[1])
                e4.append(w[2])
                bf.append(w[3])
            elif w[0] == "t":
                if len(w) != 4 + 2 * int(w[2]):
                    fails.append(f"malformed tile line: {line[:60]}")
                    continue
                fails += check_tile(amin, int(w[1]), int(w[2]), w[3], w[4:])
                tiles += 1
    if amin is None or not xs or tiles == 0:
        fails.append("the dump has no amax_min, values or tiles")
    else:
        fails += check_values(xs, e4, bf)
        print(f"tiles: {tiles} (scales and codes recomputed with numpy + ml_dtypes "
              f"{ml_dtypes.__version__}); FP8_AMAX_MIN = {amin!r}")
    for msg in fails[:20]:
        print("FAIL", msg)
    print(f"fp8.h vs ml_dtypes: {'FAILED' if fails else 'OK'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
