#!/usr/bin/env python3
"""Decode speed through the server, end to end: `/execute` SSE on one backend, per trace level,
with the recorder's dropped-frame count. Standard library only (runs on the GPU machine).

For each level it starts `worker-orcd serve --trace LEVEL --record-dir TMP`, sends one warm-up
request and then RUNS greedy requests of MAX_TOKENS tokens, and reports per request the client's
rate (token events received between the first token and the end event, over that time), the
server's own decode rate (tokens_out / decode_time_ms of the end event) and, after the runs,
`worker_orcd_recorder_dropped_frames_total` from /metrics. Medians are printed as a markdown table.

Usage: python3 xtask/python/server_bench.py --binary PATH --model MODEL.gguf [--backend cuda]
       [--levels off,summary,full] [--runs 3] [--max-tokens 256] [--encoders N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

PROMPT = "Count from one to one hundred in words, separated by commas: one, two, three,"


def wait_health(base: str, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def execute(base: str, job: str, max_tokens: int) -> tuple[int, float, float]:
    """One /execute; returns (tokens, client tokens/s after the first token, server decode tokens/s)."""
    body = json.dumps({"job_id": job, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/execute", data=body, headers={"content-type": "application/json"})
    n, first, end = 0, None, None
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            ev = json.loads(line[5:])
            if ev.get("type") == "token":
                n += 1
                if first is None:
                    first = time.perf_counter()
            elif ev.get("type") == "end":
                end = ev
                last = time.perf_counter()
            elif ev.get("type") == "error":
                raise SystemExit(f"request failed: {ev}")
    if end is None or first is None:
        raise SystemExit("no end event or no token")
    client = (n - 1) / (last - first) if n > 1 and last > first else float("nan")
    server = end["tokens_out"] / (end["decode_time_ms"] / 1000) if end["decode_time_ms"] else float("nan")
    return n, client, server


def dropped(base: str) -> int:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("worker_orcd_recorder_dropped_frames_total"):
                return int(float(line.split()[-1]))
    return -1


def recorder(base: str) -> dict:
    """The recorder's status from /health (`recorder`: RecorderSnapshot), or {} without one."""
    with urllib.request.urlopen(base + "/health", timeout=5) as r:
        return json.loads(r.read().decode()).get("recorder") or {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--levels", default="off,summary,full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--encoders", type=int, default=None)
    ap.add_argument("--port", type=int, default=18181)
    a = ap.parse_args()
    rows = []
    for level in a.levels.split(","):
        rec = tempfile.mkdtemp(prefix=f"bench-{level}-")
        base = f"http://127.0.0.1:{a.port}"
        cmd = [a.binary, "serve", "--backend", a.backend, "--model", a.model, "--addr", f"127.0.0.1:{a.port}", "--record-dir", rec, "--trace", level]
        if a.encoders is not None:
            cmd += ["--trace-encoders", str(a.encoders)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_health(base, proc)
            execute(base, f"warm-{level}", 32)
            tap0 = recorder(base).get("tap_ns", 0)
            res = [execute(base, f"bench-{level}-{i}", a.max_tokens) for i in range(a.runs)]
            time.sleep(1.0)  # the writer finishes the last recording
            d = dropped(base)
            # The serving thread's time in the recorder's tap (copying the traced rows into the
            # writer's buffers), per generated token.
            tap_us = (recorder(base).get("tap_ns", 0) - tap0) / 1e3 / max(1, sum(r[0] for r in res))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        size = sum(os.path.getsize(os.path.join(rec, f)) for f in os.listdir(rec))
        shutil.rmtree(rec, ignore_errors=True)
        toks = statistics.median(r[0] for r in res)
        client = statistics.median(r[1] for r in res)
        server = statistics.median(r[2] for r in res)
        rows.append((level, toks, client, server, d, size, tap_us))
        print(f"{level}: {res} dropped {d} recordings {size} bytes tap {tap_us:.1f} us/token", flush=True)
    print("\n| trace | tokens/request | client tok/s (SSE, after the first token) | server decode tok/s | dropped frames | recordings | tap µs/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for level, toks, client, server, d, size, tap_us in rows:
        print(f"| {level} | {toks:.0f} | {client:.0f} | {server:.0f} | {d} | {size / 1e6:.1f} MB | {tap_us:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
