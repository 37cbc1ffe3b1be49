#!/usr/bin/env python3
"""Record llama.cpp's tokenization of a corpus as the reference for worker-orcd's tokenizer.

Usage:
    python3 xtask/python/llama_tokenize.py MODEL.gguf CORPUS.json OUT.json
    python3 xtask/python/llama_tokenize.py --gen-unicode-table LLAMA_CPP/src/unicode-data.cpp OUT.rs

The first form loads only the vocabulary of MODEL.gguf through llama_cpp's
low-level API (vocab_only=True; no weights, no GPU) and writes, for every
string of CORPUS.json (`{"strings": [...]}`), llama.cpp's token ids with
add_special=False and parse_special False and True. It also records the piece
bytes of every vocab id as llama_token_to_piece(special=True) renders them,
the EOG ids, the BOS/EOS ids and add_bos, and a header with the llama_cpp
version and the model's sha256, so that the Rust tests can compare against a
committed file without needing Python.

The second form regenerates src/tokenizer/unicode_data.rs from llama.cpp's
unicode-data.cpp, so that our pre-tokenizer uses exactly llama.cpp's notion of
\\p{L}, \\p{N} and whitespace (which may differ from Rust's char tables).
"""

import ctypes
import hashlib
import json
import re
import sys


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize(ll, vocab, text, parse_special):
    data = text.encode("utf-8")
    n_max = len(data) + 16
    buf = (ll.llama_token * n_max)()
    n = ll.llama_tokenize(vocab, data, len(data), buf, n_max, False, parse_special)
    if n < 0:
        n_max = -n
        buf = (ll.llama_token * n_max)()
        n = ll.llama_tokenize(vocab, data, len(data), buf, n_max, False, parse_special)
    assert n >= 0, f"llama_tokenize failed for {text!r}"
    return [int(buf[i]) for i in range(n)]


def piece(ll, vocab, tok):
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_token_to_piece(vocab, tok, buf, size, 0, True)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def record(model_path, corpus_path, out_path):
    import llama_cpp
    import llama_cpp.llama_cpp as ll

    with open(corpus_path, encoding="utf-8") as f:
        strings = json.load(f)["strings"]

    ll.llama_backend_init()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        sys.exit(f"failed to load {model_path}")
    vocab = ll.llama_model_get_vocab(model)
    n_vocab = ll.llama_vocab_n_tokens(vocab)

    cases = []
    for s in strings:
        cases.append({
            "text": s,
            "ids": tokenize(ll, vocab, s, False),
            "ids_special": tokenize(ll, vocab, s, True),
        })

    # Piece bytes for every id, hex-encoded (pieces may be partial UTF-8).
    pieces = [piece(ll, vocab, t).hex() for t in range(n_vocab)]
    eog = [t for t in range(n_vocab) if ll.llama_vocab_is_eog(vocab, t)]

    version = ll.llama_version()
    out = {
        "header": {
            "generator": "xtask/python/llama_tokenize.py",
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_version": version.decode() if isinstance(version, bytes) else str(version),
            "model_file": model_path.rsplit("/", 1)[-1],
            "model_sha256": sha256_file(model_path),
            "add_special": False,
            "n_vocab": n_vocab,
            "bos": ll.llama_vocab_bos(vocab),
            "eos": ll.llama_vocab_eos(vocab),
            "add_bos": bool(ll.llama_vocab_get_add_bos(vocab)),
            "eog_ids": eog,
        },
        "cases": cases,
        "pieces_hex": pieces,
    }
    # One case per line and 16 pieces per line: diffable, and small enough to commit.
    def dumps(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))

    with open(out_path, "w", encoding="utf-8") as f:
        f.write('{\n"header": ' + json.dumps(out["header"], ensure_ascii=False, indent=1) + ',\n')
        f.write('"cases": [\n' + ",\n".join(dumps(c) for c in cases) + '\n],\n')
        chunks = [dumps(pieces[i:i + 16])[1:-1] for i in range(0, len(pieces), 16)]
        f.write('"pieces_hex": [\n' + ",\n".join(chunks) + '\n]\n}\n')
    ll.llama_model_free(model)
    print(f"wrote {len(cases)} cases and {len(pieces)} pieces to {out_path}")


def gen_unicode_table(unicode_data_cpp, out_path):
    """Collapse llama.cpp's unicode_ranges_flags into letter/number ranges + whitespace set."""
    src = open(unicode_data_cpp, encoding="utf-8").read()
    body = src.split("unicode_ranges_flags = {")[1].split("};")[0]
    ranges = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+)\}", body)]
    ws_body = src.split("unicode_set_whitespace = {")[1].split("};")[0]
    ws = sorted(int(x, 16) for x in re.findall(r"0x([0-9A-Fa-f]+)", ws_body))
    # flags: NUMBER = 0x2, LETTER = 0x4 (unicode.h); every range carries exactly one category
    runs = []  # (first, last, kind)
    for (start, flags), (nxt, _) in zip(ranges, ranges[1:]):
        kind = "L" if flags & 0x4 else "N" if flags & 0x2 else None
        if kind is None:
            continue
        if runs and runs[-1][2] == kind and runs[-1][1] + 1 == start:
            runs[-1] = (runs[-1][0], nxt - 1, kind)
        else:
            runs.append((start, nxt - 1, kind))
    lines = [
        "//! Unicode classes for the pre-tokenizer, generated from llama.cpp's src/unicode-data.cpp",
        "//! by `python3 xtask/python/llama_tokenize.py --gen-unicode-table .../unicode-data.cpp OUT.rs`.",
        "//! Data only; do not edit by hand. llama.cpp's tables, not Rust's, define \\p{L}, \\p{N} and \\s",
        "//! for its tokenizer, so we copy them rather than use `char::is_alphabetic` and friends.",
        "",
        "/// Inclusive codepoint ranges that llama.cpp flags as letters (`\\p{L}`), sorted.",
        "pub(crate) static LETTER_RANGES: &[(u32, u32)] = &[",
    ]

    def emit(kind):
        items = [f"(0x{a:X}, 0x{b:X})" for a, b, k in runs if k == kind]
        for i in range(0, len(items), 6):
            lines.append("    " + ", ".join(items[i:i + 6]) + ",")

    emit("L")
    lines += ["];", "", "/// Inclusive codepoint ranges that llama.cpp flags as numbers (`\\p{N}`), sorted.",
              "pub(crate) static NUMBER_RANGES: &[(u32, u32)] = &["]
    emit("N")
    lines += ["];", "", "/// llama.cpp's `unicode_set_whitespace` (`\\s`), sorted.",
              "pub(crate) static WHITESPACE: &[u32] = &["]
    items = [f"0x{x:X}" for x in ws]
    for i in range(0, len(items), 10):
        lines.append("    " + ", ".join(items[i:i + 10]) + ",")
    lines += ["];", ""]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {out_path}: {sum(1 for r in runs if r[2] == 'L')} letter ranges, "
          f"{sum(1 for r in runs if r[2] == 'N')} number ranges, {len(ws)} whitespace")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--gen-unicode-table":
        gen_unicode_table(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4:
        record(sys.argv[1], sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
