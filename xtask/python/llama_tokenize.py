#!/usr/bin/env python3
"""Record llama.cpp's tokenization of a corpus as the reference for worker-orcd's tokenizer.

Usage:
    python3 xtask/python/llama_tokenize.py MODEL.gguf CORPUS.json OUT.json
    python3 xtask/python/llama_tokenize.py --gen-unicode-table LLAMA_CPP/src/unicode-data.cpp LLAMA_CPP/src/llama-vocab.cpp OUT.rs

The first form loads only the vocabulary of MODEL.gguf through llama_cpp's
low-level API (vocab_only=True; no weights, no GPU) and writes, for every
string of CORPUS.json (`{"strings": [...]}`), llama.cpp's token ids with
add_special=False and parse_special False and True. It also records the piece
bytes of every vocab id as llama_token_to_piece(special=True) renders them,
the EOG ids, the BOS/EOS ids and add_bos, and a header with the llama_cpp
version and the model's sha256, so that the Rust tests can compare against a
committed file without needing Python.

The second form regenerates src/tokenizer/unicode_data.rs from llama.cpp's
unicode-data.cpp (and the literal character classes of the deepseek regexes in
llama-vocab.cpp), so that our pre-tokenizers use exactly llama.cpp's notion of
\\p{L}, \\p{N}, \\p{P}, ... and whitespace (which may differ from Rust's char tables).
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


def _cpp_literals(src, after, count):
    """The first `count` C++ string literals following the text `after` in `src`, unescaped."""
    tail = src[src.index(after):]
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', tail):
        lit = m.group(1)
        lit = re.sub(r"\\(.)", lambda e: {"r": "\r", "n": "\n", "t": "\t"}.get(e.group(1), "\\" + e.group(1))
                     if e.group(1) in "rnt" else "\\" + e.group(1), lit)
        # C++ "\\x" is the two characters backslash x for the regex engine.
        out.append(lit.replace("\\\\", "\\"))
        if len(out) == count:
            return out
    raise SystemExit(f"fewer than {count} string literals after {after!r}")


def _class_ranges(regex, prefix, suffix):
    """Inclusive codepoint ranges of the one literal bracket class in `regex`, which must be
    `prefix + "[...]" + suffix` with no escapes and no nested classes inside the brackets."""
    assert regex.startswith(prefix + "[") and regex.endswith("]" + suffix), regex
    body = regex[len(prefix) + 1:len(regex) - len(suffix) - 1]
    assert "\\" not in body and "[" not in body, body
    ranges, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            ranges.append((ord(body[i]), ord(body[i + 2])))
            i += 3
        else:
            ranges.append((ord(body[i]), ord(body[i])))
            i += 1
    assert all(a <= b for a, b in ranges), ranges
    return sorted(ranges)


def gen_unicode_table(unicode_data_cpp, llama_vocab_cpp, out_path):
    """llama.cpp's codepoint categories, whitespace set, lower-case map and NFD base map
    (unicode-data.cpp), plus the literal
    character classes of the pre-tokenizer regexes that llama.cpp runs through std::wregex
    (llama-vocab.cpp), as Rust tables."""
    src = open(unicode_data_cpp, encoding="utf-8").read()
    body = src.split("unicode_ranges_flags = {")[1].split("};")[0]
    runs = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+)\}", body)]
    # The table covers [0, 0x110000) in runs; each run carries exactly one category bit
    # (unicode.h: UNDEFINED 0x1 .. CONTROL 0x80); the last entry is the 0x110000 sentinel.
    assert runs[0][0] == 0 and runs[-1] == (0x110000, 0), runs[-1]
    runs = runs[:-1]
    assert all(bin(f).count("1") == 1 and f <= 0x80 for _, f in runs)
    assert all(a[0] < b[0] for a, b in zip(runs, runs[1:]))
    ws_body = src.split("unicode_set_whitespace = {")[1].split("};")[0]
    ws = sorted(int(x, 16) for x in re.findall(r"0x([0-9A-Fa-f]+)", ws_body))
    # The llama3/qwen2 splitters lower-case the letter after an apostrophe with
    # unicode_tolower and compare it with ASCII; our Rust code lower-cases ASCII only, which is
    # the same as long as no other codepoint lower-cases to one of the contraction letters.
    lower_body = src.split("unicode_map_lowercase = {")[1].split("};")[0]
    lower = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+)\}", lower_body)]
    bad = [(a, b) for a, b in lower if chr(b) in "stmdrevl" and not (0x41 <= a <= 0x5A)]
    assert not bad, f"non-ASCII codepoints lower-case to contraction letters: {bad}"
    assert lower == sorted(lower) and len({a for a, _ in lower}) == len(lower)
    nfd_body = src.split("unicode_ranges_nfd = {")[1].split("};")[0]
    nfd = [tuple(int(x, 16) for x in t) for t in
           re.findall(r"\{0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+)\}", nfd_body)]
    assert nfd == sorted(nfd) and all(a <= b for a, b, _ in nfd)
    assert all(p[1] < q[0] for p, q in zip(nfd, nfd[1:])), "nfd ranges overlap"

    vocab = open(llama_vocab_cpp, encoding="utf-8").read()
    ds_llm = _cpp_literals(vocab, "case LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM:", 6)
    ds_coder = _cpp_literals(vocab, "case LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER:", 5)
    assert ds_llm[4] == ds_coder[3], (ds_llm[4], ds_coder[3])
    tables = [
        ("DEEPSEEK_LLM_LETTERS", "the letter class of deepseek-llm's `\\s?[A-Za-zµÀ-ÖØ-ö...]+`",
         _class_ranges(ds_llm[1], "\\s?", "+")),
        ("DEEPSEEK_LLM_PUNCT", "the punctuation class of deepseek-llm's `\\s?[!-/:-~！-／...]+`",
         _class_ranges(ds_llm[2], "\\s?", "+")),
        ("DEEPSEEK_CJK", "deepseek's `[一-龥ࠀ-一가-퟿]+` (llm and coder)", _class_ranges(ds_llm[4], "", "+")),
    ]

    lines = [
        "//! Unicode tables for the pre-tokenizers, generated from llama.cpp's src/unicode-data.cpp and",
        "//! src/llama-vocab.cpp by `python3 xtask/python/llama_tokenize.py --gen-unicode-table",
        "//! .../unicode-data.cpp .../llama-vocab.cpp OUT.rs`. Data only; do not edit by hand.",
        "//! llama.cpp's tables, not Rust's, define \\p{L}, \\p{N}, \\p{P}, ... and \\s for its",
        "//! tokenizer, so we copy them rather than use `char::is_alphabetic` and friends.",
        "",
        "/// `(first codepoint, category bit)` runs covering 0..0x110000, sorted: each run lasts up to",
        "/// the next run's first codepoint. Bits as llama.cpp's `unicode_cpt_flags` (0x01 undefined,",
        "/// 0x02 number, 0x04 letter, 0x08 separator, 0x10 mark, 0x20 punctuation, 0x40 symbol,",
        "/// 0x80 control).",
        "pub(crate) static CATEGORY_RUNS: &[(u32, u8)] = &[",
    ]
    items = [f"(0x{a:X}, 0x{f:02X})" for a, f in runs]
    for i in range(0, len(items), 8):
        lines.append("    " + ", ".join(items[i:i + 8]) + ",")
    lines += ["];", "", "/// llama.cpp's `unicode_set_whitespace` (`\\s`), sorted.",
              "pub(crate) static WHITESPACE: &[u32] = &["]
    items = [f"0x{x:X}" for x in ws]
    for i in range(0, len(items), 10):
        lines.append("    " + ", ".join(items[i:i + 10]) + ",")
    lines += ["];", "", "/// llama.cpp's `unicode_map_lowercase`: `(codepoint, lower-case codepoint)`, sorted.",
              "pub(crate) static LOWERCASE: &[(u32, u32)] = &["]
    items = [f"(0x{a:X}, 0x{b:X})" for a, b in lower]
    for i in range(0, len(items), 8):
        lines.append("    " + ", ".join(items[i:i + 8]) + ",")
    lines += ["];", "",
              "/// llama.cpp's `unicode_ranges_nfd`: `(first, last, base)`, sorted and disjoint; every",
              "/// codepoint of a range maps to `base` (the first codepoint of its NFD decomposition).",
              "pub(crate) static NFD_RANGES: &[(u32, u32, u32)] = &["]
    items = [f"(0x{a:X}, 0x{b:X}, 0x{c:X})" for a, b, c in nfd]
    for i in range(0, len(items), 6):
        lines.append("    " + ", ".join(items[i:i + 6]) + ",")
    lines += ["];"]
    for name, doc, ranges in tables:
        lines += ["", f"/// Inclusive codepoint ranges of {doc}, sorted.", f"pub(crate) static {name}: &[(u32, u32)] = &["]
        items = [f"(0x{a:X}, 0x{b:X})" for a, b in ranges]
        for i in range(0, len(items), 6):
            lines.append("    " + ", ".join(items[i:i + 6]) + ",")
        lines += ["];"]
    lines += [""]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {out_path}: {len(runs)} category runs, {len(ws)} whitespace, "
          f"{len(lower)} lower-case pairs, {len(nfd)} nfd ranges, "
          + ", ".join(f"{n} {len(r)} ranges" for n, _, r in tables))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--gen-unicode-table":
        gen_unicode_table(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 4:
        record(sys.argv[1], sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
