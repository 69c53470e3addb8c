#!/usr/bin/env python3
"""make bench-serve: attn-server's throughput (generated tokens/s over all streams) and time to
first token for 1, 4 and 8 concurrent streams, on each model of data/models.

Each stream asks for `--tokens` tokens of a distinct prompt at temperature 0.7 (a fixed seed per
stream, so an end token rarely comes early); throughput counts `usage.completion_tokens` over the
wall time of the whole round. Writes JSON rows (variant "serve") and prints a table.

usage: serve_bench.py --server .build/release/attn-server --models data/models [--streams 1,4,8] [--json out.json]
"""
import argparse, json, os, platform, sys, time
from concurrent.futures import ThreadPoolExecutor

import openai

sys.path.insert(0, os.path.dirname(__file__))
from serve_test import Server  # noqa: E402


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--models", default="data/models")
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    rows = []
    for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]:
        path = os.path.join(a.models, file)
        if not os.path.exists(path):
            continue
        name = os.path.splitext(file)[0]
        s = Server(a.server, path, ["--parallel", str(max(counts)), "--ctx", "512", "--threads", str(a.threads)])
        try:
            client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=600)

            def stream(i):
                t0 = time.perf_counter()
                first, tokens = None, 0
                for chunk in client.completions.create(model=name, prompt=f"Story {i}: Once upon a time, in a land far away,",
                                                       max_tokens=a.tokens, temperature=0.7, seed=i, stream=True,
                                                       stream_options={"include_usage": True}):
                    if first is None and chunk.choices and chunk.choices[0].text:
                        first = time.perf_counter() - t0
                    if getattr(chunk, "usage", None):
                        tokens = chunk.usage.completion_tokens
                return first or 0.0, tokens

            stream(0)   # warm-up
            single = None
            for n in counts:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    results = list(pool.map(stream, range(1, n + 1)))
                seconds = time.perf_counter() - t0
                tokens = sum(r[1] for r in results)
                rate = tokens / seconds
                single = single or rate
                ttft = sorted(r[0] for r in results)[len(results) // 2]
                row = {"variant": "serve", "impl": name, "model": name, "B": n, "threads": a.threads, "seconds": seconds,
                       "tokensPerSecond": rate, "timeToFirstTokenSeconds": ttft, "completionTokens": tokens,
                       "speedupOverOneStream": rate / single, "cpu": cpu_name(),
                       "note": f"{n} concurrent streams of {a.tokens} tokens: {rate:.1f} tokens/s in all "
                               f"({rate / single:.2f}x one stream), median time to first token {ttft * 1e3:.0f} ms"}
                rows.append(row)
                print(f"{name}: {row['note']}", flush=True)
        finally:
            s.stop()
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"cpu": cpu_name(), "rows": rows}, f, indent=1)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
