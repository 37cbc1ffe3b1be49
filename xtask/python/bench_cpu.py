#!/usr/bin/env python3
"""CPU generation speed of worker-orcd next to llama.cpp, in one run, same prompt and threads.

Usage: python3 xtask/python/bench_cpu.py --binary target/release/worker-orcd --model M.gguf
       [--threads 1 2] [--tokens 64] [--repeats 3]

Needs llama-cpp-python (see requirements-record.txt); never run in CI. Both engines get the
same token ids (the prompt tokenized by worker-orcd), greedy decoding, F32 KV cache for
llama.cpp (as in the reference recordings), and report prefill and decode tokens per second;
the median of the repeats is printed.
"""
import argparse
import json
import statistics
import subprocess
import time

PROMPT = "The history of lighthouses begins with fires lit on hilltops to guide ships home. Over the centuries,"


def run_worker(binary, model, threads, tokens):
    out = subprocess.run(
        [binary, "generate", "--json", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", str(tokens),
         "--threads", str(threads), "--model", model],
        check=True, capture_output=True, text=True,
    ).stdout
    v = json.loads(out)
    n_prompt = len(v["prompt_tokens"])
    # decode_ms covers tokens 2..n (the first comes from the prefill logits).
    return v["prompt_tokens"], n_prompt / (v["prefill_ms"] / 1e3), (len(v["tokens"]) - 1) / (v["decode_ms"] / 1e3)


def run_llama(model, ids, threads, tokens):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          type_k=0, type_v=0, verbose=False)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    n = 0
    t2 = time.perf_counter()
    for _ in range(tokens - 1):
        logits = llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
        llm.eval([tok])
        n += 1
    t3 = time.perf_counter()
    return len(ids) / (t1 - t0), n / (t3 - t2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"{'engine':<12} {'threads':>7} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for t in a.threads:
        w = [run_worker(a.binary, a.model, t, a.tokens) for _ in range(a.repeats)]
        ids = w[0][0]
        l = [run_llama(a.model, ids, t, a.tokens) for _ in range(a.repeats)]
        print(f"{'worker-orcd':<12} {t:>7} {statistics.median(x[1] for x in w):>14.1f} {statistics.median(x[2] for x in w):>13.1f}")
        print(f"{'llama.cpp':<12} {t:>7} {statistics.median(x[0] for x in l):>14.1f} {statistics.median(x[1] for x in l):>13.1f}")


if __name__ == "__main__":
    main()
