#!/usr/bin/env python3
"""Record llama.cpp reference activations for worker-orcd.

For every case in a cases.json file this script runs llama.cpp (through the
low-level ctypes API of llama-cpp-python) on the CPU with fixed, deterministic
settings, captures intermediate tensors of the forward pass with the
`cb_eval` scheduler callback, greedy-generates a fixed number of tokens and
writes `<case>.safetensors.zst`: a standard safetensors file compressed with
zstd (level 19).  See recordings/llama.cpp/README.md for the format.

Usage:
    python3 xtask/python/record_llama.py --model PATH \
        --cases recordings/llama.cpp/cases.json --out recordings/llama.cpp

Regenerating with the same llama.cpp build, model and CPU is byte-for-byte
deterministic (nothing time- or host-dependent is written).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import struct
import sys
from typing import Any

import numpy as np
import zstandard

import llama_cpp
import llama_cpp.llama_cpp as L

# ---------------------------------------------------------------------------
# Fixed reference settings (mandatory; do not change without re-recording).
# ---------------------------------------------------------------------------
N_CTX = 1024
N_BATCH = 1024
N_UBATCH = 1024
N_THREADS = 2
TYPE_K = 0  # GGML_TYPE_F32
TYPE_V = 0  # GGML_TYPE_F32
FLASH_ATTN = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # 0
ZSTD_LEVEL = 19

TOP_LOGITS = 32  # logits.top_ids / top_vals per prompt position
TOP_GREEDY = 8  # greedy.top_ids / top_vals per generated step

# Per-layer ggml node names captured op-by-op in `op_layers` of op_capture
# cases.  `kq` (raw Q.K^T scores, before the scaled + masked softmax) is
# recorded too because it is cheap (mostly zeros) and separates the Q.K
# matmul from the softmax.  Deliberately NOT
# recorded: `norm-N` (RMS norm before the weight multiply, two occurrences per
# layer) and `kqv-N` (attention output before the head permute; `kqv_out-N`
# is its exact contiguous copy).
OP_NAMES = [
    "attn_norm", "Qcur", "Kcur", "Vcur", "kq", "kq_soft_max", "kqv_out",
    "attn_out", "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_swiglu",
    "ffn_out", "l_out",
]
# Attention inputs: always stored at ALL prompt positions, even when a case
# thins the other op captures to `row_pos` (attention at any position needs
# K and V of every earlier position).
ALL_POSITION_OPS = {"Kcur", "Vcur"}

GGML_TYPE_F32 = 0


# ---------------------------------------------------------------------------
# ggml access through the *already loaded* libggml-base.
# ---------------------------------------------------------------------------
def _load_ggml_base() -> ctypes.CDLL:
    """Return a handle to the libggml-base that libllama is linked against.

    The llama_cpp wheel ships *copies* (not symlinks) libggml-base.so,
    libggml-base.so.0, ...; libllama loads the soname `libggml-base.so.0`.
    Opening `lib/libggml-base.so` by path would map a second, independent copy
    with its own globals, so we open by soname with RTLD_NOLOAD, which only
    succeeds if that exact object is already mapped in this process.
    """
    try:
        return ctypes.CDLL("libggml-base.so.0", mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
    except OSError as e:  # pragma: no cover - environment problem
        raise SystemExit(f"libggml-base.so.0 is not loaded by llama_cpp: {e}")


GGML = _load_ggml_base()
GGML.ggml_get_name.restype = ctypes.c_char_p
GGML.ggml_get_name.argtypes = [ctypes.c_void_p]
GGML.ggml_op_desc.restype = ctypes.c_char_p
GGML.ggml_op_desc.argtypes = [ctypes.c_void_p]
GGML.ggml_nbytes.restype = ctypes.c_size_t
GGML.ggml_nbytes.argtypes = [ctypes.c_void_p]
GGML.ggml_backend_tensor_get.restype = None
GGML.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
GGML.ggml_version.restype = ctypes.c_char_p
GGML.ggml_commit.restype = ctypes.c_char_p


class GgmlTensorHead(ctypes.Structure):
    """Leading fields of `struct ggml_tensor` (ggml.h); only these are read."""

    _fields_ = [
        ("type", ctypes.c_int32),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int32),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
    ]


def read_tensor_f32(t: int) -> np.ndarray:
    """Copy an F32 ggml tensor (possibly a strided view) into a contiguous array.

    The result has numpy shape ne[3], ne[2], ne[1], ne[0] (ggml ne reversed).
    Non-contiguous views are handled by reading the whole byte span
    (ggml_nbytes) and applying the ggml strides nb[].
    """
    h = GgmlTensorHead.from_address(t)
    if h.type != GGML_TYPE_F32:
        raise RuntimeError(f"tensor {GGML.ggml_get_name(t)!r} has ggml type {h.type}, expected F32")
    nbytes = GGML.ggml_nbytes(t)
    raw = np.empty(nbytes, dtype=np.uint8)
    GGML.ggml_backend_tensor_get(t, raw.ctypes.data, 0, nbytes)
    ne = [int(x) for x in h.ne]
    nb = [int(x) for x in h.nb]
    shape = (ne[3], ne[2], ne[1], ne[0])
    strides = (nb[3], nb[2], nb[1], nb[0])
    # numpy bounds-checks the strided view against the nbytes span
    view = np.ndarray(shape=shape, dtype="<f4", buffer=raw, offset=0, strides=strides)
    out = np.ascontiguousarray(view).copy()
    return out


def logical_shape(ne: list[int]) -> list[int]:
    """ggml ne reversed, dropping trailing unit dims of ne (but keeping >= 2)."""
    n = 4
    while n > 2 and ne[n - 1] == 1:
        n -= 1
    return [int(x) for x in reversed(ne[:n])]


class Capture:
    """State shared with the cb_eval callback."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.seen: list[dict[str, Any]] = []  # in graph order
        self.data: list[np.ndarray] = []
        self.counts: dict[str, int] = {}
        self.n_asked = 0  # ask=True calls so far == index of the node in the graph
        self.error: BaseException | None = None

    def reset(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.seen = []
        self.data = []
        self.counts = {}
        self.n_asked = 0

    def alias(self, t: int, name: str) -> str:
        """The name a node is recorded under: its own, except the attention output projection,
        which llama names `attn_out-L` and qwen2's graph (src/models/qwen2.cpp) leaves unnamed:
        the MUL_MAT whose second source is `kqv_out-L` is recorded as `attn_out-L`."""
        if name in self.wanted or not name.startswith("node_"):
            return name
        h = GgmlTensorHead.from_address(t)
        if h.src[1] and GGML.ggml_op_desc(t) == b"MUL_MAT":
            src = GGML.ggml_get_name(h.src[1]).decode("utf-8")
            if src.startswith("kqv_out-"):
                return "attn_out-" + src.split("-", 1)[1]
        return name

    def callback(self, t: int, ask: bool, _ud: int) -> bool:
        try:
            name = self.alias(t, GGML.ggml_get_name(t).decode("utf-8"))
            if ask:
                # the scheduler asks exactly once per node, in graph order
                self.n_asked += 1
                return name in self.wanted
            if name not in self.wanted:
                return True
            h = GgmlTensorHead.from_address(t)
            occ = self.counts.get(name, 0)
            self.counts[name] = occ + 1
            srcs = []
            for s in h.src:
                if s:
                    srcs.append(GGML.ggml_get_name(s).decode("utf-8"))
            self.seen.append({
                "ggml_name": name,
                "occurrence": occ,
                "op": GGML.ggml_op_desc(t).decode("utf-8"),
                "ne": [int(x) for x in h.ne],
                "src": srcs,
                "node": self.n_asked - 1,
            })
            self.data.append(read_tensor_f32(t))
            return True
        except BaseException as e:  # never let an exception cross the C boundary
            if self.error is None:
                self.error = e
            return False


# ---------------------------------------------------------------------------
# Position selection
# ---------------------------------------------------------------------------
def strided_positions(n: int, all_upto: int, stride: int) -> list[int]:
    if n <= all_upto:
        return list(range(n))
    pos = list(range(0, n, stride))
    if pos[-1] != n - 1:
        pos.append(n - 1)
    return pos


# ---------------------------------------------------------------------------
# Chat template (HF semantics)
# ---------------------------------------------------------------------------
def render_chat(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tmpl = env.from_string(template)
    return tmpl.render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)


def render_builtin(name: str, messages: list[dict[str, str]]) -> str:
    """llama.cpp's own rendering of one of its built-in templates (`llama_chat_apply_template`
    with a template *name*, e.g. "gemma"): for a model whose file carries no Jinja template."""
    arr = (L.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    size = 4096 + 2 * sum(len(m["content"]) for m in messages)
    buf = ctypes.create_string_buffer(size)
    n = L.llama_chat_apply_template(name.encode(), arr, len(messages), True, buf, size)
    if n < 0 or n > size:
        raise RuntimeError(f"llama_chat_apply_template({name!r}) returned {n}")
    return buf.raw[:n].decode("utf-8")


def prompt_for(model, vocab, spec: dict, cfg: dict) -> tuple[str, bool, bool, list | None]:
    """(prompt_text, parse_special, add_special, messages) of a case. `cfg["add_special"]`
    (default false) adds the model's BOS as llama.cpp's tokenizer does; `cfg["chat_template"]`
    = "llama.cpp:<name>" renders chat cases with llama.cpp's built-in template of that name
    instead of the file's Jinja template (which the file may lack)."""
    add_special = bool(cfg.get("add_special", False))
    kind = spec["kind"]
    if kind == "plain":
        return spec["prompt"], False, add_special, None
    if kind != "chat":
        raise ValueError(f"{spec['name']}: unknown kind {kind}")
    messages = spec["messages"]
    builtin = cfg.get("chat_template", "")
    if builtin.startswith("llama.cpp:"):
        return render_builtin(builtin.split(":", 1)[1], messages), True, add_special, messages
    template = meta_str(model, "tokenizer.chat_template")
    if template is None:
        raise RuntimeError("model has no tokenizer.chat_template")
    bos = token_text(vocab, L.llama_vocab_bos(vocab))
    eos = token_text(vocab, L.llama_vocab_eos(vocab))
    return render_chat(template, messages, bos, eos), True, add_special, messages


def op_names_of(model) -> list[str]:
    """The per-layer graph node names of the model's architecture (llama.cpp's cb names)."""
    if meta_str(model, "general.architecture") == "gemma3":
        return ["attn_norm", "Qcur", "Qcur_normed", "Kcur", "Kcur_normed", "Vcur", "kq", "kq_soft_max",
                "kqv_out", "attn_out", "attn_post_norm", "sa_out", "ffn_norm", "ffn_gate", "ffn_up",
                "ffn_geglu", "ffn_out", "ffn_post_norm", "l_out"]
    return OP_NAMES


_SWA: dict[int, int] = {}


def swa_first_cell(model, il: int, pos: int) -> int:
    """The first cell a query at `pos` attends to in layer `il`: 0, or on a sliding-window
    layer (gemma3: llama.cpp's default pattern, il % 6 < 5, the file giving none) the window's."""
    key = ctypes.cast(model, ctypes.c_void_p).value or 0
    if key not in _SWA:
        n_swa = L.llama_model_n_swa(model)
        if n_swa > 0 and meta_str(model, "general.architecture") == "gemma3":
            if meta_str(model, "gemma3.attention.sliding_window_pattern") is not None:
                raise RuntimeError("the file gives its own sliding-window pattern: not mirrored here")
        else:
            n_swa = 0
        _SWA[key] = n_swa
    n_swa = _SWA[key]
    return max(0, pos + 1 - n_swa) if n_swa > 0 and il % 6 < 5 else 0


# ---------------------------------------------------------------------------
# safetensors writer
# ---------------------------------------------------------------------------
def safetensors_bytes(tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs = []
    off = 0
    for name, arr in tensors:
        if arr.dtype == np.float32:
            dt = "F32"
            b = arr.astype("<f4", copy=False).tobytes(order="C")
        elif arr.dtype == np.int32:
            dt = "I32"
            b = arr.astype("<i4", copy=False).tobytes(order="C")
        else:
            raise TypeError(f"{name}: unsupported dtype {arr.dtype}")
        if name in header:
            raise ValueError(f"duplicate tensor name {name}")
        header[name] = {"dtype": dt, "shape": [int(x) for x in arr.shape], "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    return struct.pack("<Q", len(hj)) + hj + b"".join(blobs)


# ---------------------------------------------------------------------------
# llama.cpp helpers
# ---------------------------------------------------------------------------
def meta_str(model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(1 << 20)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    if n < 0:
        return None
    return buf.value.decode("utf-8")


def token_text(vocab, tok: int) -> str:
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
    return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")


def tokenize(vocab, text: str, parse_special: bool, add_special: bool = False) -> list[int]:
    b = text.encode("utf-8")
    cap = len(b) + 16
    toks = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, b, len(b), toks, cap, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"tokenize failed ({n})")
    return list(toks[:n])


def decode(ctx, ids: list[int], start_pos: int) -> None:
    n = len(ids)
    batch = L.llama_batch_init(n, 0, 1)
    try:
        for i, t in enumerate(ids):
            batch.token[i] = t
            batch.pos[i] = start_pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = n
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
    finally:
        L.llama_batch_free(batch)


def top_k(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a logits row: descending value, ties broken by lowest id."""
    order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
    return order.astype(np.int32), row[order].astype(np.float32)


def logsumexp64(row: np.ndarray) -> float:
    r = row.astype(np.float64)
    m = r.max()
    return float(m + np.log(np.exp(r - m).sum()))


def make_context(model, cap: Capture, cb):
    cp = L.llama_context_default_params()
    cp.n_ctx = N_CTX
    cp.n_batch = N_BATCH
    cp.n_ubatch = N_UBATCH
    cp.n_seq_max = 1
    cp.n_threads = N_THREADS
    cp.n_threads_batch = N_THREADS
    cp.type_k = TYPE_K
    cp.type_v = TYPE_V
    cp.flash_attn_type = FLASH_ATTN
    cp.embeddings = False
    cp.no_perf = True
    cp.cb_eval = cb
    cp.cb_eval_user_data = None
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    return ctx


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------
def record_case(model, vocab, spec: dict, cfg: dict, cap: Capture, cb, version: str, model_sha: str,
                self_check: bool = False) -> tuple[bytes, dict]:
    name = spec["name"]
    kind = spec["kind"]
    n_layer = L.llama_model_n_layer(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    n_embd = L.llama_model_n_embd(model)
    n_greedy = int(cfg.get("n_greedy", 64))
    op_capture = bool(spec.get("op_capture", False))
    op_layers = [int(x) for x in cfg["op_layers"]] if op_capture else []

    prompt_text, parse_special, add_special, messages = prompt_for(model, vocab, spec, cfg)
    ids = tokenize(vocab, prompt_text, parse_special, add_special)
    n = len(ids)
    if n == 0 or n > N_BATCH or n + n_greedy > N_CTX:
        raise RuntimeError(f"{name}: bad prompt length {n}")

    # position selection (see README: "Positions")
    row_pos = strided_positions(n, 16, int(spec.get("row_stride", 8)))
    logits_row_pos = strided_positions(n, 8, int(spec.get("logits_row_stride", 16)))
    if spec.get("logits_rows") == "last":  # large vocabularies: one full row per case
        logits_row_pos = [n - 1]
    op_positions = spec.get("op_positions", "all")
    if op_positions not in ("all", "row_pos"):
        raise ValueError(f"{name}: op_positions must be 'all' or 'row_pos'")
    if op_capture and op_positions == "all":
        # op inputs (l_out of the previous layer) must exist at every position
        row_pos = list(range(n))

    row_names = ["embd"] + [f"l_out-{il}" for il in range(n_layer)] + ["result_norm"]
    op_names = {f"{op}-{il}" for il in op_layers for op in OP_NAMES}
    if op_layers and op_names_of(model) != OP_NAMES:
        raise RuntimeError(f"{name}: batch op captures are recorded for the llama family only (token mode hashes every op)")
    wanted = set(row_names) | op_names | {"result_output"}

    ctx = make_context(model, cap, cb)
    try:
        # ---------------- prefill, capture on ----------------
        cap.reset(wanted)
        decode(ctx, ids, 0)
        if cap.error:
            raise cap.error
        logits_ptr = L.llama_get_logits(ctx)
        logits = np.ctypeslib.as_array(logits_ptr, shape=(n * n_vocab,)).reshape(n, n_vocab).astype(np.float32, copy=True)
        prefill_seen, prefill_data = cap.seen, cap.data

        # sanity: captured result_output equals llama_get_logits
        ro = [d for s, d in zip(prefill_seen, prefill_data) if s["ggml_name"] == "result_output"]
        if len(ro) != 1 or not np.array_equal(ro[0].reshape(n, n_vocab), logits):
            raise RuntimeError(f"{name}: captured result_output != llama_get_logits")
        for nm in wanted:
            if not any(s["ggml_name"] == nm for s in prefill_seen):
                raise RuntimeError(f"{name}: ggml node {nm!r} never seen in the prefill graph")

        # ---------------- greedy, capture only result_output ----------------
        g_ids, g_top_ids, g_top_vals, g_gap = [], [], [], []
        cur = logits[n - 1].copy()
        for step in range(n_greedy):
            ti, tv = top_k(cur, TOP_GREEDY)
            tok = int(ti[0])  # argmax, ties -> lowest id
            g_ids.append(tok)
            g_top_ids.append(ti)
            g_top_vals.append(tv)
            g_gap.append(float(np.float32(tv[0] - tv[1])))
            if step + 1 == n_greedy:
                break
            cap.reset({"result_output"})
            decode(ctx, [tok], n + step)
            if cap.error:
                raise cap.error
            lp = L.llama_get_logits_ith(ctx, -1)
            cur = np.ctypeslib.as_array(lp, shape=(n_vocab,)).astype(np.float32, copy=True)
            if len(cap.data) != 1 or not np.array_equal(cap.data[0].reshape(-1), cur):
                raise RuntimeError(f"{name}: greedy step {step}: captured result_output != logits")
    finally:
        L.llama_free(ctx)

    if self_check:
        # Same prefill in a fresh context with nothing captured: the callback
        # splitting the graph must not change a single bit of the logits.
        ctx = make_context(model, cap, cb)
        try:
            cap.reset(set())
            decode(ctx, ids, 0)
            lp = L.llama_get_logits(ctx)
            plain = np.ctypeslib.as_array(lp, shape=(n * n_vocab,)).reshape(n, n_vocab)
            if not np.array_equal(plain, logits):
                raise RuntimeError(f"{name}: logits differ with capture on vs off")
        finally:
            L.llama_free(ctx)

    # ---------------- assemble tensors ----------------
    tensors: list[tuple[str, np.ndarray]] = []
    captured: list[dict] = []
    by_name: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for s, d in zip(prefill_seen, prefill_data):
        by_name.setdefault(s["ggml_name"], []).append((s, d))

    for rn in row_names:
        occ = by_name[rn]
        if len(occ) != 1:
            raise RuntimeError(f"{name}: {rn} occurs {len(occ)} times, expected 1")
        s, d = occ[0]
        if s["ne"][1:] != [n, 1, 1] or s["ne"][0] != n_embd:
            raise RuntimeError(f"{name}: {rn} has ne {s['ne']}")
        arr = np.ascontiguousarray(d.reshape(n, n_embd)[row_pos])
        tensors.append((rn, arr))
        captured.append({"stored_name": rn, "ggml_name": rn, "occurrence": 0, "op": s["op"],
                         "shape": list(arr.shape), "ne": s["ne"], "src": s["src"], "rows": "row_pos",
                         "token_axis": 0, "node": s["node"]})

    op_set = {f"{op}-{il}": op for il in op_layers for op in OP_NAMES}
    for s, d in zip(prefill_seen, prefill_data):  # graph order
        gname = s["ggml_name"]
        op = op_set.get(gname)
        if op is None:
            continue
        stored = f"{gname}#{s['occurrence']}"
        shape = logical_shape(s["ne"])
        arr = d.reshape(shape)
        # numpy axis holding the prompt position: Q/K/V after reshape/rope
        # are [n_tokens, n_head, head_dim]; everything else has the token
        # axis at ggml ne[1] (2-D [n_tokens, x]; kq/kq_soft_max
        # [n_head, n_tokens, n_kv]).
        tok_ne = 2 if (op in ("Qcur", "Kcur", "Vcur") and len(shape) == 3) else 1
        token_axis = len(shape) - 1 - tok_ne
        if shape[token_axis] != n:
            raise RuntimeError(f"{name}: {stored} shape {shape} has no token axis of length {n}")
        rows = "all"
        if op_positions == "row_pos" and op not in ALL_POSITION_OPS:
            rows = "row_pos"
            arr = np.take(arr, row_pos, axis=token_axis)
            shape = list(arr.shape)
        arr = np.ascontiguousarray(arr)
        tensors.append((stored, arr))
        captured.append({"stored_name": stored, "ggml_name": gname, "occurrence": s["occurrence"],
                         "op": s["op"], "shape": shape, "ne": s["ne"], "src": s["src"],
                         "rows": rows, "token_axis": token_axis, "node": s["node"]})

    top_ids = np.zeros((n, TOP_LOGITS), dtype=np.int32)
    top_vals = np.zeros((n, TOP_LOGITS), dtype=np.float32)
    lse = np.zeros((n,), dtype=np.float32)
    for p in range(n):
        top_ids[p], top_vals[p] = top_k(logits[p], TOP_LOGITS)
        lse[p] = np.float32(logsumexp64(logits[p]))
    tensors.append(("logits.top_ids", top_ids))
    tensors.append(("logits.top_vals", top_vals))
    tensors.append(("logits.logsumexp", lse))
    tensors.append(("logits.rows", np.ascontiguousarray(logits[logits_row_pos])))
    tensors.append(("greedy.top_ids", np.stack(g_top_ids).astype(np.int32)))
    tensors.append(("greedy.top_vals", np.stack(g_top_vals).astype(np.float32)))

    case_meta: dict[str, Any] = {
        "name": name,
        "kind": kind,
    }
    if messages is not None:
        case_meta["messages"] = messages
    case_meta.update({
        "prompt_text": prompt_text, "add_special": add_special,
        "parse_special": parse_special,
        "prompt_ids": ids,
        "greedy_ids": g_ids,
        "greedy_top2_gap": g_gap,
        "llama_cpp_version": version,
        "model_sha256": model_sha,
        "settings": {
            "n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_UBATCH,
            "type_k": TYPE_K, "type_v": TYPE_V, "flash_attn": False, "n_threads": N_THREADS,
        },
        "row_pos": row_pos,
        "logits_row_pos": logits_row_pos,
        "op_layers": op_layers,
        "op_positions": op_positions if op_capture else None,
        "captured": captured,
    })
    metadata = {
        "format": "worker-orcd/llama.cpp-reference/v1",
        "case": json.dumps(case_meta, ensure_ascii=False, separators=(",", ":")),
    }
    st = safetensors_bytes(tensors, metadata)
    info = {"name": name, "n_tokens": n, "row_pos": len(row_pos), "logits_rows": len(logits_row_pos),
            "greedy_text": "".join(token_text(vocab, t) for t in g_ids), "captured": captured}
    return st, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", default=[], help="record only these case names (repeatable)")
    ap.add_argument("--verbose-llama", action="store_true", help="keep llama.cpp's log output")
    ap.add_argument("--self-check", action="store_true",
                    help="also prefill each case with capture off and require bit-identical logits")
    ap.add_argument("--dump-layout", metavar="JSON", help="write the captured names/ops/shapes of every case here")
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

    if not args.verbose_llama:
        @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        def _quiet(level, text, ud):  # noqa: ANN001
            return None
        L.llama_log_set(_quiet, None)
        main._quiet = _quiet  # keep alive

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
    if meta_str(model, "tokenizer.ggml.add_bos_token") not in ("false", None) and not cfg.get("add_special"):
        print("warning: model add_bos_token is not false; BOS is still NOT added", file=sys.stderr)

    version = (f"llama-cpp-python {llama_cpp.__version__}; ggml {GGML.ggml_version().decode()} "
               f"(commit {GGML.ggml_commit().decode()}); CPU")

    cap = Capture()
    cb = L.ggml_backend_sched_eval_callback(cap.callback)

    os.makedirs(args.out, exist_ok=True)
    layout = {}
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True, write_content_size=True)
    for spec in cfg["cases"]:
        if args.only and spec["name"] not in args.only:
            continue
        st, info = record_case(model, vocab, spec, cfg, cap, cb, version, model_sha, args.self_check)
        comp = cctx.compress(st)
        path = os.path.join(args.out, f"{spec['name']}.safetensors.zst")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(comp)
        os.replace(tmp, path)
        layout[spec["name"]] = info["captured"]
        print(f"{spec['name']:20s} tokens={info['n_tokens']:4d} row_pos={info['row_pos']:3d} "
              f"logits_rows={info['logits_rows']:3d} raw={len(st)/1e6:7.2f}MB zst={len(comp)/1e6:6.2f}MB "
              f"sha256={hashlib.sha256(comp).hexdigest()[:16]}", flush=True)
        print(f"    greedy: {info['greedy_text']!r}", flush=True)
    if args.dump_layout:
        with open(args.dump_layout, "w", encoding="utf-8") as f:
            json.dump(layout, f, indent=1)
    L.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
