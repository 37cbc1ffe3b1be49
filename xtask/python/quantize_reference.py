#!/usr/bin/env python3
"""Make llama.cpp's quantized files and quantized rows, and record their sha256.

This produces the reference data that `worker-orcd quantize` is held to, in
`recordings/quantize/` (never run in CI; the tests only read the JSON it writes):

* `llama_cpp_sha256.json`: for each llama.cpp file type (Q4_K_M, Q5_0, ...),
  the size and sha256 of `llama_model_quantize(IN, OUT, params)` with
  `allow_requantize = true`, no importance matrix and otherwise default
  parameters, on the default model (SmolLM2-135M-Instruct Q4_1).  Also the
  llama.cpp build that made them.
* `rows_sha256.json`: for each ggml block type, the sha256 of
  `ggml_quantize_chunk(type, rows, ...)` (no importance matrix, the function
  `llama_model_quantize` calls) on real rows of the model that the file types
  never exercise for every type (the model's 576-wide matrices fall back to
  32-blocks, so e.g. Q2_K appears in no file), and on synthetic rows that hit
  the edge cases (all-zero blocks, constant blocks, single outliers, tiny and
  huge magnitudes, ties).  The real rows are dequantized with gguf-py, which
  dequantizes exactly like ggml; the sha256 of the f32 input is recorded too so
  the Rust test proves it feeds the same numbers.

Usage (a venv with the llama-cpp-python wheel, numpy and gguf):
    python3 xtask/python/quantize_reference.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --out /tmp/lc-quant --recordings recordings/quantize \
        [--llama-cpp-src .../vendor/llama.cpp]

Quantized outputs are left in --out (model files are never committed).

Requantizing the other named models (Qwen2.5-Coder and Gemma-3 Q4_K_M, other
architectures, K-quant inputs) goes to `llama_cpp_extra_sha256.json`:
    python3 xtask/python/quantize_reference.py --out /tmp/lc-quant \
        --extra qwen2.5-coder-0.5b-q4_k_m=PATH --extra gemma3-270m-q4_k_m=PATH \
        --extra-types Q4_K_M,Q8_0,Q5_K_M,Q2_K,IQ4_NL

When a file differs, find where:
    python3 xtask/python/quantize_reference.py --compare OURS.gguf LLAMA_CPP.gguf
prints the first differing byte offset and what lives there (a metadata key, a
tensor info, or a tensor's data with its block and element).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import gguf
import llama_cpp
import llama_cpp.llama_cpp as L

# llama_ftype values (include/llama.h) of the file types recorded.
FTYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ4_NL": 25,
    "BF16": 32,
}

# ggml_type values (ggml/include/ggml.h) of the block types whose rows are recorded.
GGML_TYPES = {
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "q2_K": 10,
    "q3_K": 11,
    "q4_K": 12,
    "q5_K": 13,
    "q6_K": 14,
    "iq4_nl": 20,
}
BLOCK = {"q2_K": 256, "q3_K": 256, "q4_K": 256, "q5_K": 256, "q6_K": 256}
TYPE_SIZE = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q8_0": 34, "q2_K": 84,
             "q3_K": 110, "q4_K": 144, "q5_K": 176, "q6_K": 210, "iq4_nl": 18}

# Real tensors whose rows are quantized into every block type (row widths 1536 and
# 576; 576-wide rows only for the 32-block types).
REAL_TENSORS = ["blk.0.ffn_down.weight", "blk.17.ffn_down.weight", "blk.3.attn_v.weight"]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quantize_files(model: str, out_dir: str, names: list[str], nthread: int, stem: str = "SmolLM2-135M-Instruct") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    table = {}
    for name in names:
        out = os.path.join(out_dir, f"{stem}.{name}.gguf")
        params = L.llama_model_quantize_default_params()
        params.ftype = FTYPES[name]
        params.allow_requantize = True
        params.nthread = nthread
        t0 = time.perf_counter()
        rc = L.llama_model_quantize(model.encode(), out.encode(), ctypes.byref(params))
        dt = time.perf_counter() - t0
        if rc != 0:
            print(f"{name}: llama_model_quantize failed (rc {rc}), not recorded", file=sys.stderr)
            continue
        table[name] = {"size": os.path.getsize(out), "sha256": sha256_file(out), "seconds": round(dt, 2)}
        print(f"{name}: {table[name]}", file=sys.stderr)
    return table


# ---------------------------------------------------------------------------
# Row-level oracle: ggml_quantize_chunk from the wheel's libggml-base.
# ---------------------------------------------------------------------------

def ggml_base() -> ctypes.CDLL:
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def quantize_rows(lib, ty: str, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n_per_row = x.shape
    out = ctypes.create_string_buffer(nrows * n_per_row // BLOCK.get(ty, 32) * TYPE_SIZE[ty])
    n = lib.ggml_quantize_chunk(GGML_TYPES[ty], x.ctypes.data, out, 0, nrows, n_per_row, None)
    assert n == len(out.raw), (ty, n, len(out.raw))
    return out.raw


def splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


def synthetic_rows(n_per_row: int) -> np.ndarray:
    """Edge-case rows, built from exact f32 bit patterns so Rust can rebuild them.

    Mirrored by `synthetic_rows` in tests/it/quantize.rs: change both together.
    Row r, element i (u = next splitmix64 output of seed 0x5eed, one per element):
      0: zeros            1: constant 0.25       2: constant -3.0
      3: uniform in [-1, 1): ((u >> 40) / 2^24) * 2 - 1
      4: row 3 times 1e-20 (tiny, near GROUP_MAX_EPS)
      5: row 3 with every 37th element set to 40.0 (outliers)
      6: multiples of 1/4 in [-2, 2): ((u >> 60) - 8) / 4  (many exact ties)
      7: row 3 times 3e4 (large)
      8: non-negative |row 3|  9: non-positive -|row 3|
    """
    rows = np.zeros((10, n_per_row), dtype=np.float32)
    state = 0x5EED
    uni = np.zeros(n_per_row, dtype=np.float32)
    ties = np.zeros(n_per_row, dtype=np.float32)
    for i in range(n_per_row):
        state, u = splitmix64(state)
        uni[i] = np.float32(np.float32((u >> 40) / 16777216.0) * np.float32(2.0) - np.float32(1.0))
        ties[i] = np.float32(((u >> 60) - 8) / 4.0)
    rows[1, :] = np.float32(0.25)
    rows[2, :] = np.float32(-3.0)
    rows[3] = uni
    rows[4] = uni * np.float32(1e-20)
    rows[5] = uni
    rows[5, ::37] = np.float32(40.0)
    rows[6] = ties
    rows[7] = uni * np.float32(3e4)
    rows[8] = np.abs(uni)
    rows[9] = -np.abs(uni)
    return rows


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def rows_table(model: str) -> dict:
    lib = ggml_base()
    reader = gguf.GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}
    cases = {}
    for name in REAL_TENSORS:
        t = tensors[name]
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        x = x.reshape(-1, int(t.shape[0]))
        cases[name] = x
    cases["synthetic-1536"] = synthetic_rows(1536)
    cases["synthetic-576"] = synthetic_rows(576)
    table = {}
    for case, x in cases.items():
        entry = {"rows": int(x.shape[0]), "n_per_row": int(x.shape[1]), "input_sha256": sha(x.tobytes()), "types": {}}
        for ty in GGML_TYPES:
            if x.shape[1] % BLOCK.get(ty, 32) != 0:
                continue
            entry["types"][ty] = sha(quantize_rows(lib, ty, x))
        table[case] = entry
        print(f"rows {case}: {len(entry['types'])} types", file=sys.stderr)
    return table


def compare(a: str, b: str) -> int:
    """Prints the first offset where files a and b differ and the GGUF region there."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                n = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
                off += n
                break
            if not x:
                print("identical")
                return 0
            off += len(x)
    print(f"first difference at byte {off} (sizes {os.path.getsize(a)} and {os.path.getsize(b)})")
    reader = gguf.GGUFReader(b)
    if off < reader.data_offset:
        fields = sorted(reader.fields.values(), key=lambda f: f.offset)
        where = "header"
        for f in fields:
            if f.offset <= off:
                where = f"metadata key {f.name!r}"
        tinfos = sorted(reader.tensors, key=lambda t: t.field.offset)
        for t in tinfos:
            if t.field.offset <= off:
                where = f"tensor info of {t.name!r}"
        print(f"in the metadata section: {where}")
    else:
        for t in reader.tensors:
            if t.data_offset <= off < t.data_offset + t.n_bytes:
                bs, ts = gguf.GGML_QUANT_SIZES[t.tensor_type]
                rel = off - t.data_offset
                print(f"in tensor {t.name!r} ({t.tensor_type.name}, shape {[int(d) for d in t.shape]}): byte {rel}, "
                      f"block {rel // ts} (elements {rel // ts * bs}..{rel // ts * bs + bs}), byte {rel % ts} of the block")
                break
        else:
            print("in padding between tensors")
    return 1


def build_info(src: str | None) -> dict:
    info = {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": L.llama_print_system_info().decode().strip(),
        "machine": platform.machine(),
        "params": "llama_model_quantize_default_params() with allow_requantize = true, ftype set, no imatrix",
    }
    if src:
        try:
            info["llama_cpp_commit"] = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True,
                                                      text=True, check=True).stdout.strip()
        except Exception as e:  # noqa: BLE001 - informational only
            info["llama_cpp_commit"] = f"unknown ({e})"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", nargs=2, metavar=("OURS", "THEIRS"), help="report the first differing byte and exit")
    ap.add_argument("--model", help="the default model, SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", help="directory for llama.cpp's quantized files (not committed)")
    ap.add_argument("--recordings", default="recordings/quantize", help="where the JSON tables go")
    ap.add_argument("--types", default=",".join(FTYPES), help="comma-separated file types")
    ap.add_argument("--nthread", type=int, default=2)
    ap.add_argument("--llama-cpp-src", default=None, help="llama.cpp source tree, to record its commit")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another named model to requantize (writes llama_cpp_extra_sha256.json only)")
    ap.add_argument("--extra-types", default="Q4_K_M,Q8_0,Q5_K_M,Q2_K,IQ4_NL")
    ap.add_argument("--build-flags", default="CMAKE_ARGS=-DGGML_NATIVE=OFF (x86-64 AVX2/FMA/F16C in ggml-cpu; "
                    "ggml-base, which holds the quantizers, is plain x86-64 SSE2)")
    a = ap.parse_args()
    if a.compare:
        sys.exit(compare(*a.compare))
    if a.extra:
        if not a.out:
            ap.error("--out is required")
        L.llama_backend_init()
        info = build_info(a.llama_cpp_src)
        info["build_flags"] = a.build_flags
        models = {}
        for spec in a.extra:
            name, path = spec.split("=", 1)
            files = quantize_files(path, a.out, a.extra_types.split(","), a.nthread, stem=name)
            models[name] = {"input_sha256": sha256_file(path), "files": files}
        with open(os.path.join(a.recordings, "llama_cpp_extra_sha256.json"), "w") as f:
            json.dump({"llama_cpp": info, "models": models}, f, indent=2)
            f.write("\n")
        return
    if not a.model or not a.out:
        ap.error("--model and --out are required")

    L.llama_backend_init()
    os.makedirs(a.recordings, exist_ok=True)
    info = build_info(a.llama_cpp_src)
    info["build_flags"] = a.build_flags
    model_sha = sha256_file(a.model)

    files = quantize_files(a.model, a.out, [t for t in a.types.split(",") if t], a.nthread)
    with open(os.path.join(a.recordings, "llama_cpp_sha256.json"), "w") as f:
        json.dump({"input": {"file": os.path.basename(a.model), "sha256": model_sha}, "llama_cpp": info,
                   "files": files}, f, indent=2, sort_keys=False)
        f.write("\n")

    rows = rows_table(a.model)
    with open(os.path.join(a.recordings, "rows_sha256.json"), "w") as f:
        json.dump({"input": {"file": os.path.basename(a.model), "sha256": model_sha}, "llama_cpp": info,
                   "function": "ggml_quantize_chunk(type, rows, dst, 0, nrows, n_per_row, NULL)",
                   "cases": rows}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
