#!/usr/bin/env python3
"""Record token-by-token llama.cpp reference activations for worker-orcd.

The batch recorder (`record_llama.py`) prefills each prompt as one batch. For
n >= 2 positions llama.cpp routes F32 and Q8_0 matrix products through
llamafile's tinyBLAS, whose summation order differs from ggml's one-token
`vec_dot` kernels, so a batch recording cannot be reproduced bit for bit by an
engine that, like worker-orcd, computes every position the same way however a
prompt is split. This recorder feeds llama.cpp **one token per `llama_decode`**
(n_batch = n_ubatch = 1), so every product goes through `vec_dot`, and captures
every tap of every layer at every position: the prompt and the free-running
greedy continuation.

What a token recording holds (see recordings/llama.cpp/README.md, "Token-by-token
recordings"):
- `hashes` (I32 [n_positions, n_columns, 2]): xxh3-64 of the exact f32 bytes of
  every captured tensor at every position, as (low, high) 32-bit halves.
  Columns are named `<ggml name>#<occurrence>` (`Qcur-3#2` is the RoPE'd Q of
  layer 3), listed in `hash_columns`; `kq-L#0` and `kq_soft_max-L#0` are hashed
  over the first `pos + 1` cells of each head only (the rest is padding).
- the same per-position value tensors as a batch recording (`embd`,
  `l_out-L`, `result_norm` at `row_pos`; op captures of `op_layers`; logits),
  so errors can be measured where hashes differ.

Usage:
    python3 xtask/python/record_llama_token.py --model PATH \
        --cases recordings/llama.cpp/cases.json --out recordings/llama.cpp/token \
        --build-flags "GGML_NATIVE=OFF"
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import sys
from typing import Any

import numpy as np
import xxhash
import zstandard

import llama_cpp
import llama_cpp.llama_cpp as L

import record_llama as R

N_CTX = 1024
N_BATCH = 1
N_UBATCH = 1
# Never hashed: these ops only reinterpret the bytes of their source.
VIEW_OPS = {"RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE"}


def row_hash(arr: np.ndarray) -> int:
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(arr, dtype="<f4").tobytes())


def make_context(model, cb):
    cp = L.llama_context_default_params()
    cp.n_ctx = N_CTX
    cp.n_batch = N_BATCH
    cp.n_ubatch = N_UBATCH
    cp.n_seq_max = 1
    cp.n_threads = R.N_THREADS
    cp.n_threads_batch = R.N_THREADS
    cp.type_k = R.TYPE_K
    cp.type_v = R.TYPE_V
    cp.flash_attn_type = R.FLASH_ATTN
    cp.embeddings = False
    cp.no_perf = True
    cp.cb_eval = cb
    cp.cb_eval_user_data = None
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    return ctx


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_info(build_flags: str) -> dict[str, str]:
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "ggml_version": R.GGML.ggml_version().decode(),
        "ggml_commit": R.GGML.ggml_commit().decode(),
        "build_flags": build_flags,
        "weight_repacking": "off (use_extra_bufts = false)",
        "system_info": L.llama_print_system_info().decode().strip(),
        "cpu": cpu_model(),
        "machine": platform.machine(),
    }


class Step:
    """What one single-token decode produced: every wanted node, in graph order."""

    def __init__(self, seen: list[dict[str, Any]], data: list[np.ndarray], model=None):
        self.nodes = list(zip(seen, data))
        self.model = model

    def columns(self) -> list[str]:
        return [f"{s['ggml_name']}#{s['occurrence']}" for s, _ in self.nodes if s["op"] not in VIEW_OPS]

    def ops(self) -> list[str]:
        return [s["op"] for s, _ in self.nodes if s["op"] not in VIEW_OPS]

    def hashes(self, pos: int) -> list[int]:
        out = []
        for s, d in self.nodes:
            if s["op"] in VIEW_OPS:
                continue
            name = s["ggml_name"]
            if name.startswith("kq-") or name.startswith("kq_soft_max-"):
                # numpy [n_head, 1, n_kv_padded]: only the cells 0..=pos are attention, on a
                # sliding-window layer only those of the window (the others are masked).
                first = R.swa_first_cell(self.model, int(name.rsplit("-", 1)[1]), pos) if self.model else 0
                d = d.reshape(d.shape[-3], d.shape[-1])[:, first : pos + 1]
            out.append(row_hash(d))
        return out

    def get(self, stored: str) -> np.ndarray:
        for s, d in self.nodes:
            if f"{s['ggml_name']}#{s['occurrence']}" == stored:
                return d
        raise KeyError(stored)

    def meta(self, stored: str) -> dict[str, Any]:
        for s, _ in self.nodes:
            if f"{s['ggml_name']}#{s['occurrence']}" == stored:
                return s
        raise KeyError(stored)


def decode_one(ctx, cap: R.Capture, wanted: set[str], tok: int, pos: int, n_vocab: int, model=None) -> tuple[Step, np.ndarray]:
    cap.reset(wanted)
    R.decode(ctx, [tok], pos)
    if cap.error:
        raise cap.error
    lp = L.llama_get_logits_ith(ctx, -1)
    logits = np.ctypeslib.as_array(lp, shape=(n_vocab,)).astype(np.float32, copy=True)
    step = Step(cap.seen, cap.data, model)
    ro = step.get("result_output#0").reshape(-1)
    if not np.array_equal(ro, logits):
        raise RuntimeError(f"position {pos}: captured result_output != llama_get_logits")
    return step, logits


def record_case(model, vocab, spec: dict, cfg: dict, cap: R.Capture, cb, build: dict, model_sha: str) -> tuple[bytes, dict]:
    name = spec["name"]
    kind = spec["kind"]
    n_layer = L.llama_model_n_layer(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    n_embd = L.llama_model_n_embd(model)
    n_greedy = int(cfg.get("n_greedy", 64))
    # Value captures are diagnostics here (the hashes prove every tap): keep them small. Op
    # captures only where the case asks for them in token mode too, and one full logits row (the
    # last prompt position; `result_output` is hashed at every position).
    op_capture = bool(spec.get("token_op_capture", spec.get("op_capture", False)))
    op_layers = [int(x) for x in cfg["op_layers"]] if op_capture else []

    prompt_text, parse_special, add_special, messages = R.prompt_for(model, vocab, spec, cfg)
    ids = R.tokenize(vocab, prompt_text, parse_special, add_special)
    n = len(ids)
    if n == 0 or n + n_greedy > N_CTX:
        raise RuntimeError(f"{name}: bad prompt length {n}")

    row_pos = R.strided_positions(n, 16, int(spec.get("row_stride", 8)))
    logits_row_pos = [n - 1]
    op_positions = spec.get("op_positions", "all")
    if op_capture and op_positions == "all":
        row_pos = list(range(n))
    op_pos = set(range(n)) if op_positions == "all" else set(row_pos)

    names = R.op_names_of(model)
    layer_names = [f"{op}-{il}" for il in range(n_layer) for op in names]
    wanted = {"embd", "result_norm", "result_output"} | set(layer_names)
    if names != R.OP_NAMES:
        wanted.add("inp_scaled")

    ctx = make_context(model, cb)
    columns: list[str] | None = None
    column_ops: list[str] = []
    hashes: list[list[int]] = []
    rows: dict[str, list[np.ndarray]] = {}
    ops: dict[str, list[tuple[int, np.ndarray]]] = {}
    op_meta: dict[str, dict[str, Any]] = {}
    logits_all: list[np.ndarray] = []
    g_ids, g_top_ids, g_top_vals, g_gap = [], [], [], []
    row_names = ["embd"] + [f"l_out-{il}" for il in range(n_layer)] + ["result_norm"]
    op_stored = {f"{op}-{il}" for il in op_layers for op in names}

    def absorb(step: Step, pos: int) -> None:
        nonlocal columns, column_ops
        cols = step.columns()
        if columns is None:
            columns = cols
            column_ops = step.ops()
            missing = wanted - {c.split("#")[0] for c in cols}
            if missing:
                raise RuntimeError(f"{name}: nodes never seen: {sorted(missing)[:5]}")
        elif cols != columns:
            raise RuntimeError(f"{name}: position {pos}: graph nodes differ from position 0")
        hashes.append(step.hashes(pos))
        if pos < n and pos in set(row_pos):
            for rn in row_names:
                rows.setdefault(rn, []).append(step.get(f"{rn}#0").reshape(n_embd))
        if pos < n:
            for s, d in step.nodes:
                # K and V at every prompt position (attention at any stored position needs all
                # earlier ones), the other op captures at `op_pos`, as the batch recorder keeps them.
                op = s["ggml_name"].rsplit("-", 1)[0]
                if s["ggml_name"] in op_stored and (pos in op_pos or op in R.ALL_POSITION_OPS):
                    key = f"{s['ggml_name']}#{s['occurrence']}"
                    ops.setdefault(key, []).append((pos, d))
                    op_meta.setdefault(key, s)

    try:
        for p, tok in enumerate(ids):
            step, logits = decode_one(ctx, cap, wanted, tok, p, n_vocab, model)
            absorb(step, p)
            logits_all.append(logits)
        cur = logits_all[-1]
        for s in range(n_greedy):
            ti, tv = R.top_k(cur, R.TOP_GREEDY)
            tok = int(ti[0])
            g_ids.append(tok)
            g_top_ids.append(ti)
            g_top_vals.append(tv)
            g_gap.append(float(np.float32(tv[0] - tv[1])))
            if s + 1 == n_greedy:
                break
            step, cur = decode_one(ctx, cap, wanted, tok, n + s, n_vocab, model)
            absorb(step, n + s)
    finally:
        L.llama_free(ctx)

    tensors: list[tuple[str, np.ndarray]] = []
    captured: list[dict] = []
    for rn in row_names:
        arr = np.ascontiguousarray(np.stack(rows[rn]))
        tensors.append((rn, arr))
        captured.append({"stored_name": rn, "ggml_name": rn, "occurrence": 0, "op": "row", "shape": list(arr.shape),
                         "ne": [n_embd, len(row_pos), 1, 1], "src": [], "rows": "row_pos", "token_axis": 0, "node": 0})
    for key in sorted(ops, key=lambda k: (int(k.split("#")[0].rsplit("-", 1)[1]), op_meta[k]["node"])):
        entries = ops[key]
        gname = key.split("#")[0]
        op = gname.rsplit("-", 1)[0]
        m = op_meta[key]
        if op in ("kq", "kq_soft_max"):
            # [n_head, 1, n_kv_padded] per position -> [n_head, positions, n] (batch layout, cells < n).
            arr = np.stack([d.reshape(d.shape[-3], d.shape[-1])[:, :n] for _, d in entries], axis=1)
            token_axis = 1
        else:
            # Per position: ne [x, 1, 1, 1] (a product) or [head_dim, heads, 1, 1] (after reshape
            # or RoPE); stacked over positions as the batch recorder stores them ([n, x] or
            # [n, heads, head_dim]).
            ne = m["ne"]
            per = (ne[0],) if ne[1] == 1 else (ne[1], ne[0])
            arr = np.stack([d.reshape(per) for _, d in entries], axis=0)
            token_axis = 0
        rows_kind = "all" if len(entries) == n else "row_pos"
        arr = np.ascontiguousarray(arr)
        tensors.append((key, arr))
        captured.append({"stored_name": key, "ggml_name": gname, "occurrence": m["occurrence"], "op": m["op"],
                         "shape": list(arr.shape), "ne": m["ne"], "src": m["src"], "rows": rows_kind,
                         "token_axis": token_axis, "node": m["node"]})

    logits = np.stack(logits_all)
    top_ids = np.zeros((n, R.TOP_LOGITS), dtype=np.int32)
    top_vals = np.zeros((n, R.TOP_LOGITS), dtype=np.float32)
    lse = np.zeros((n,), dtype=np.float32)
    for p in range(n):
        top_ids[p], top_vals[p] = R.top_k(logits[p], R.TOP_LOGITS)
        lse[p] = np.float32(R.logsumexp64(logits[p]))
    h = np.array(hashes, dtype=np.uint64)
    halves = np.stack([(h & 0xFFFFFFFF).astype(np.uint32), (h >> 32).astype(np.uint32)], axis=-1).view(np.int32)
    tensors += [
        ("logits.top_ids", top_ids), ("logits.top_vals", top_vals), ("logits.logsumexp", lse),
        ("logits.rows", np.ascontiguousarray(logits[logits_row_pos])),
        ("greedy.top_ids", np.stack(g_top_ids).astype(np.int32)),
        ("greedy.top_vals", np.stack(g_top_vals).astype(np.float32)),
        ("hashes", np.ascontiguousarray(halves)),
    ]
    case_meta: dict[str, Any] = {"name": name, "kind": kind}
    if messages is not None:
        case_meta["messages"] = messages
    case_meta.update({
        "prompt_text": prompt_text, "parse_special": parse_special, "add_special": add_special, "prompt_ids": ids,
        "greedy_ids": g_ids, "greedy_top2_gap": g_gap,
        "llama_cpp_version": f"llama-cpp-python {build['llama_cpp_python']}; ggml {build['ggml_version']} (commit {build['ggml_commit']}); CPU",
        "model_sha256": model_sha,
        "settings": {"n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_UBATCH, "type_k": R.TYPE_K,
                     "type_v": R.TYPE_V, "flash_attn": False, "n_threads": R.N_THREADS},
        "row_pos": row_pos, "logits_row_pos": logits_row_pos, "op_layers": op_layers,
        "op_positions": op_positions if op_capture else None,
        "captured": captured,
        "mode": "token",
        "build": build,
        "hash_columns": columns,
        "hash_ops": column_ops,
    })
    metadata = {"format": "worker-orcd/llama.cpp-reference/v2", "case": json.dumps(case_meta, ensure_ascii=False, separators=(",", ":"))}
    info = {"name": name, "n_tokens": n, "positions": len(hashes), "columns": len(columns or []),
            "greedy_text": "".join(R.token_text(vocab, t) for t in g_ids)}
    return R.safetensors_bytes(tensors, metadata), info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--build-flags", default="GGML_NATIVE=OFF",
                    help="the CMAKE_ARGS llama-cpp-python was built with (recorded, not checked)")
    args = ap.parse_args()
    with open(args.cases, encoding="utf-8") as f:
        cfg = json.load(f)
    h = hashlib.sha256()
    with open(args.model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    model_sha = h.hexdigest()
    if cfg.get("model_sha256") and cfg["model_sha256"] != model_sha:
        print(f"error: model sha256 {model_sha} != cases.json model_sha256 {cfg['model_sha256']}", file=sys.stderr)
        return 2

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def _quiet(level, text, ud):  # noqa: ANN001
        return None
    L.llama_log_set(_quiet, None)

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_mmap = True
    # No weight repacking (the "extra" CPU buffer types): on AVX2 llama.cpp would repack Q4_0,
    # Q4_K and IQ4_NL matrices and multiply them with its 8x8 gemv kernels instead of
    # `vec_dot`, whose arithmetic is the one the worker follows. The default model's types
    # (Q4_1, Q8_0) are never repacked, so this changes nothing for its recordings.
    mp.use_extra_bufts = False
    model = L.llama_model_load_from_file(args.model.encode(), mp)
    if not model:
        print("error: failed to load model", file=sys.stderr)
        return 2
    vocab = L.llama_model_get_vocab(model)
    build = build_info(args.build_flags)
    cap = R.Capture()
    cb = L.ggml_backend_sched_eval_callback(cap.callback)
    os.makedirs(args.out, exist_ok=True)
    cctx = zstandard.ZstdCompressor(level=R.ZSTD_LEVEL, threads=0, write_checksum=True, write_content_size=True)
    for spec in cfg["cases"]:
        if args.only and spec["name"] not in args.only:
            continue
        st, info = record_case(model, vocab, spec, cfg, cap, cb, build, model_sha)
        comp = cctx.compress(st)
        path = os.path.join(args.out, f"{spec['name']}{'.safetensors.zst'}")
        with open(path + ".tmp", "wb") as f:
            f.write(comp)
        os.replace(path + ".tmp", path)
        print(f"{spec['name']:20s} tokens={info['n_tokens']:4d} positions={info['positions']:4d} "
              f"columns={info['columns']} raw={len(st)/1e6:6.2f}MB zst={len(comp)/1e6:6.2f}MB", flush=True)
        print(f"    greedy: {info['greedy_text']!r}", flush=True)
    L.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
