#!/usr/bin/env python3
"""Record what llama.cpp does with its own tokenizer-test vocabularies, beyond the .out files.

Usage:
    python3 xtask/python/vocab_suite.py VOCAB_DIR OUT.json CORPUS.json [CORPUS.json ...] [--family NAME ...] [--corpus-detok]

VOCAB_DIR holds llama.cpp's `ggml-vocab-FAMILY.gguf` files, most with `.inp`/`.out` pairs
(the cache directory that `cargo xtask fetch-vocab` fills). For every family (default: every
`.gguf` found) this loads the vocabulary only (vocab_only=True) through llama_cpp's low-level
API and records:

- per case of the .inp file (split exactly as tests/test-tokenizer-0.cpp splits it): the ids
  with add_special=False, parse_special=False (what the .out holds), the ids with
  add_special=True, parse_special=True, and llama_detokenize of the first list with
  remove_special=False, unparse_special=True (test-tokenizer-0's `common_detokenize`) and of
  the second with remove_special=True, unparse_special=False;
- per string of each CORPUS.json (`{"strings": [...]}`), under the file's name: the ids with
  add_special and parse_special both off and both on (with --corpus-detok, also their
  detokenizations as above: useful for large generated corpora, too big to commit);
- the vocabulary's sha256, size, BOS/EOS ids, add_bos/add_eos and EOG ids.

The Rust tests (tests/it/tokenizer_suite.rs) compare worker-orcd's tokenizer with this file
without needing Python or llama.cpp. Run it with llama-cpp-python 0.3.36 installed (never in
CI); the vocab files themselves are never committed.
"""

import ctypes
import hashlib
import json
import os
import sys


SEP = "\n__ggml_vocab_test__\n"
# --corpus-detok: also record the corpora's detokenizations (large; for fuzzing, not committed).
CORPUS_DETOK = False


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_cases(inp_path):
    """The .inp cases as test-tokenizer-0.cpp reads them (no empty case after a final separator)."""
    raw = open(inp_path, "rb").read().decode("utf-8")
    cases, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            cases.append(raw[pos:])
            break
        cases.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    return cases


def tokenize(ll, vocab, text, add_special, parse_special):
    data = text.encode("utf-8")
    n_max = len(data) + 16
    buf = (ll.llama_token * n_max)()
    n = ll.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
    if n < 0:
        n_max = -n
        buf = (ll.llama_token * n_max)()
        n = ll.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
    assert n >= 0, f"llama_tokenize failed for {text!r}"
    return [int(buf[i]) for i in range(n)]


def detokenize(ll, vocab, ids, remove_special, unparse_special):
    arr = (ll.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 8 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def text_or_hex(b):
    """Detokenized bytes as text when valid UTF-8, else as {"hex": ...}."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": b.hex()}


def record_family(ll, path, corpora):
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(path.encode(), params)
    if not model:
        return {"error": "llama.cpp failed to load the vocabulary"}
    vocab = ll.llama_model_get_vocab(model)
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    cases = []
    for text in (read_cases(path + ".inp") if os.path.exists(path + ".inp") else []):
        ids = tokenize(ll, vocab, text, False, False)
        ids_special = tokenize(ll, vocab, text, True, True)
        cases.append({
            "text": text,
            "ids": ids,
            "ids_special": ids_special,
            "detok": text_or_hex(detokenize(ll, vocab, ids, False, True)),
            "detok_special": text_or_hex(detokenize(ll, vocab, ids_special, True, False)),
        })
    corpus_cases = {}
    for name, strings in corpora.items():
        cases_here = []
        for text in strings:
            ids = tokenize(ll, vocab, text, False, False)
            ids_special = tokenize(ll, vocab, text, True, True)
            case = {"ids": ids, "ids_special": ids_special}
            if CORPUS_DETOK:
                case["detok"] = text_or_hex(detokenize(ll, vocab, ids, False, True))
                case["detok_special"] = text_or_hex(detokenize(ll, vocab, ids_special, True, False))
            cases_here.append(case)
        corpus_cases[name] = cases_here
    out = {
        "vocab_sha256": sha256_file(path),
        "n_vocab": n_vocab,
        "bos": ll.llama_vocab_bos(vocab),
        "eos": ll.llama_vocab_eos(vocab),
        "add_bos": bool(ll.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(ll.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if ll.llama_vocab_is_eog(vocab, t)],
        "cases": cases,
        "corpora": corpus_cases,
    }
    ll.llama_model_free(model)
    return out


def main(vocab_dir, out_path, corpus_paths, families):
    import llama_cpp
    import llama_cpp.llama_cpp as ll

    corpora = {}
    for p in corpus_paths:
        with open(p, encoding="utf-8") as f:
            corpora[os.path.basename(p)] = json.load(f)["strings"]
    if not families:
        families = sorted(
            name[len("ggml-vocab-"):-len(".gguf")]
            for name in os.listdir(vocab_dir)
            if name.startswith("ggml-vocab-") and name.endswith(".gguf")
        )
    ll.llama_backend_init()
    result = {}
    for fam in families:
        path = os.path.join(vocab_dir, f"ggml-vocab-{fam}.gguf")
        result[fam] = record_family(ll, path, corpora)
        print(f"{fam}: {len(result[fam].get('cases', []))} cases", file=sys.stderr)

    def dumps(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))

    # One case per line: diffable.
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("{\n" + json.dumps("header", ensure_ascii=False) + ": ")
        f.write(dumps({
            "generator": "xtask/python/vocab_suite.py",
            "llama_cpp_python": llama_cpp.__version__,
            "corpora": list(corpora),
        }))
        f.write(",\n\"families\": {\n")
        fams = []
        for fam, rec in result.items():
            lines = [dumps(fam) + ": {"]
            head = {k: v for k, v in rec.items() if k not in ("cases", "corpora")}
            lines.append(dumps(head)[1:-1] + ",")
            lines.append("\"cases\": [\n" + ",\n".join(dumps(c) for c in rec.get("cases", [])) + "\n],")
            parts = [dumps(name) + ": [\n" + ",\n".join(dumps(c) for c in cases) + "\n]"
                     for name, cases in rec.get("corpora", {}).items()]
            lines.append("\"corpora\": {\n" + ",\n".join(parts) + "\n}}")
            fams.append("\n".join(lines))
        f.write(",\n".join(fams) + "\n}\n}\n")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--corpus-detok" in args:
        CORPUS_DETOK = True
        args.remove("--corpus-detok")
    fams = [args[i + 1] for i, a in enumerate(args) if a == "--family" and i + 1 < len(args)]
    rest = [a for i, a in enumerate(args) if a != "--family" and (i == 0 or args[i - 1] != "--family")]
    if len(rest) < 3:
        sys.exit(__doc__)
    main(rest[0], rest[1], rest[2:], fams)
