#!/usr/bin/env python3
"""CPU generation speed of worker-orcd next to llama.cpp, in one run, same prompt and threads.

Usage: python3 xtask/python/bench_cpu.py --binary target/release/worker-orcd --model M.gguf
       [--threads 1 2] [--tokens 64] [--repeats 3]

Needs llama-cpp-python (see requirements-record.txt); never run in CI. Both engines get the
same token ids (the prompt tokenized by worker-orcd), greedy decoding, F32 KV cache for
llama.cpp (as in the reference recordings), and report prefill and decode tokens per second;
the median of the repeats is printed, with the ratio worker/llama.cpp.

Besides wall-clock rates, decode is also given per CPU second (tokens per second of the
process's CPU time, all its threads): on a machine where other work competes for the cores, wall
time measures the competition as much as the engine, CPU time much less. The worker's decode
CPU time is the difference between a run of N tokens and a run of 1 token (same prompt), over
N - 1 tokens; llama.cpp's is `time.process_time()` around its decode loop (in-process).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import time

PROMPT = "The history of lighthouses begins with fires lit on hilltops to guide ships home. Over the centuries,"


def worker_once(binary, model, threads, tokens):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [binary, "generate", "--json", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", str(tokens),
         "--threads", str(threads), "--model", model],
        check=True, capture_output=True, text=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out), cpu


def run_worker(binary, model, threads, tokens):
    v, cpu_n = worker_once(binary, model, threads, tokens)
    _, cpu_1 = worker_once(binary, model, threads, 1)
    n_prompt = len(v["prompt_tokens"])
    n_dec = len(v["tokens"]) - 1
    # decode_ms covers tokens 2..n (the first comes from the prefill logits).
    return (v["prompt_tokens"], n_prompt / (v["prefill_ms"] / 1e3), n_dec / (v["decode_ms"] / 1e3),
            n_dec / max(cpu_n - cpu_1, 1e-9))


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
    c2 = time.process_time()
    for _ in range(tokens - 1):
        logits = llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
        llm.eval([tok])
        n += 1
    t3 = time.perf_counter()
    c3 = time.process_time()
    return len(ids) / (t1 - t0), n / (t3 - t2), n / max(c3 - c2, 1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    print(f"{'engine':<12} {'threads':>7} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode tok/CPU-s':>17}")
    rows = []
    for t in a.threads:
        w = [run_worker(a.binary, a.model, t, a.tokens) for _ in range(a.repeats)]
        ids = w[0][0]
        l = [run_llama(a.model, ids, t, a.tokens) for _ in range(a.repeats)]
        wm = [statistics.median(x[i] for x in w) for i in (1, 2, 3)]
        lm = [statistics.median(x[i] for x in l) for i in (0, 1, 2)]
        print(f"{'worker-orcd':<12} {t:>7} {wm[0]:>14.1f} {wm[1]:>13.1f} {wm[2]:>17.1f}")
        print(f"{'llama.cpp':<12} {t:>7} {lm[0]:>14.1f} {lm[1]:>13.1f} {lm[2]:>17.1f}")
        print(f"{'ratio':<12} {t:>7} {wm[0] / lm[0]:>14.2f} {wm[1] / lm[1]:>13.2f} {wm[2] / lm[2]:>17.2f}")
        rows.append((t, wm, lm))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
