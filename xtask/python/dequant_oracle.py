#!/usr/bin/env python3
"""Record the gguf-py dequantization of real tensors as sha256, for tests/it/gguf.rs.

gguf-py (the PyPI package `gguf`, llama.cpp's own Python reader) dequantizes every
type exactly like C ggml's `dequantize_row_*`, so it is the oracle for
`worker_orcd::gguf::quant`.  This script writes
`recordings/quantize/dequant_sha256.json` with, for each named model file and each
ggml type in it, the sha256 of the little-endian f32 values of three tensors of
that type (the first, middle and last in file order), and, for the quantized rows
of `rows_sha256.json` (made by `ggml_quantize_chunk`, covering types such as Q2_K
that no SmolLM2 file contains), the sha256 of their dequantization.

Usage (the venv of quantize_reference.py; C = ~/.cache/worker-orcd, L = the --out
directory of quantize_reference.py); the committed table was made with exactly:
    python3 xtask/python/dequant_oracle.py --recordings recordings/quantize \
        --model smollm2=$C/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model qwen2.5-coder-0.5b-q4_k_m=$C/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf \
        --model smollm2-q4_0=$L/SmolLM2-135M-Instruct.Q4_0.gguf \
        --model smollm2-q5_k_m=$L/SmolLM2-135M-Instruct.Q5_K_M.gguf \
        --model smollm2-q3_k_s=$L/SmolLM2-135M-Instruct.Q3_K_S.gguf \
        --model smollm2-iq4_nl=$L/SmolLM2-135M-Instruct.IQ4_NL.gguf \
        --model smollm2-bf16=$L/SmolLM2-135M-Instruct.BF16.gguf \
        --model gemma3-270m-q4_k_m=$C/gemma-3-270m-q4_k_m.gguf

The names are those of `cargo xtask fetch-model NAME`; the test fetches each by
name (the smollm2-* files are made by worker-orcd quantize and checked against
llama.cpp's sha256 first).  Model files are never committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quantize_reference as qr  # noqa: E402  (same directory)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def deq(data, ty) -> bytes:
    return np.ascontiguousarray(gguf.quants.dequantize(data, ty), dtype="<f4").tobytes()


def file_cases(path: str) -> dict:
    reader = gguf.GGUFReader(path)
    by_type: dict[str, list] = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type.name, []).append(t)
    out = {}
    for ty, ts in sorted(by_type.items()):
        if ty in ("F32",) and len(by_type) > 1:
            picks = [ts[0]]  # plain f32 is a copy; one tensor is enough
        else:
            picks = [ts[0], ts[len(ts) // 2], ts[-1]]
        for t in picks:
            out[t.name] = {"type": ty.lower(), "sha256": sha(deq(t.data, t.tensor_type))}
    return out


def rows_cases(recordings: str, model: str) -> dict:
    with open(os.path.join(recordings, "rows_sha256.json")) as f:
        table = json.load(f)["cases"]
    lib = qr.ggml_base()
    reader = gguf.GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}
    out = {}
    for case, entry in table.items():
        if case.startswith("synthetic-"):
            x = qr.synthetic_rows(entry["n_per_row"])
        else:
            t = tensors[case]
            x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, int(t.shape[0]))
        assert qr.sha(x.tobytes()) == entry["input_sha256"], case
        out[case] = {}
        for ty, want in entry["types"].items():
            q = qr.quantize_rows(lib, ty, x)
            assert qr.sha(q) == want, (case, ty)
            qt = gguf.GGMLQuantizationType[ty.upper()]
            raw = np.frombuffer(q, dtype=np.uint8).reshape(x.shape[0], -1)
            out[case][ty] = sha(deq(raw, qt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recordings", default="recordings/quantize")
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH, NAME as in cargo xtask fetch-model")
    a = ap.parse_args()
    files = {}
    smollm2 = None
    for spec in a.model:
        name, path = spec.split("=", 1)
        files[name] = file_cases(path)
        if name == "smollm2":
            smollm2 = path
        print(f"{name}: {len(files[name])} tensors", file=sys.stderr)
    if smollm2 is None:
        sys.exit("--model smollm2=PATH is needed for the rows cases")
    out = {
        "gguf_py": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
        "what": "sha256 of gguf.quants.dequantize(...) as little-endian float32",
        "files": files,
        "rows": rows_cases(a.recordings, smollm2),
    }
    with open(os.path.join(a.recordings, "dequant_sha256.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
