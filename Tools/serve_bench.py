#!/usr/bin/env python3
"""make bench-serve: attn-server's throughput (generated tokens/s over all streams) and time to
first token for 1, 4 and 8 concurrent streams, on each model of data/models; with
--llama-cpp (or when `python3 -c "import llama_cpp.server"` works and --llama-cpp auto, the
default), the same requests through llama-cpp-python's OpenAI server on the same model file and
threads, as rows with `peer: "llama.cpp"` (it runs one request at a time: concurrent streams
queue, `--interrupt_requests False`, rather than cut the running one short).

Each stream asks for `--tokens` tokens of a distinct prompt at temperature 0.7 (a fixed seed per
stream, so an end token rarely comes early); throughput counts `usage.completion_tokens` (or,
when a server sends no usage, the text chunks) over the wall time of the whole round, prefill and
time to first token included. `decodeTokensPerSecond` is the aggregate decode rate alone: text
chunks per second from the last stream's first chunk to the first stream's last, while every
stream of the round decodes (`decodeSpeedupOverOneStream` against one stream's, measured alike).

The client is light by default (`--client http`: http.client and a hand-rolled SSE reader): the
client runs on the same cores as the server, and OpenAI's Python client costs enough CPU per
request and per chunk that on 2 cores it slows the server it measures (measured on 2 cores:
server-side time to first token ~185 ms instead of ~17 ms, a single stream ~25% slower).
`--client openai` streams through OpenAI's client instead. Writes JSON rows (variant "serve")
and prints a table.

usage: serve_bench.py --server .build/release/attn-server --models data/models [--streams 1,4,8] [--json out.json]
                      [--client http|openai] [--llama-cpp auto|on|off] [--llama-python python3]
"""
import argparse, http.client, json, os, platform, socket, subprocess, sys, time, urllib.parse, urllib.request
from concurrent.futures import ThreadPoolExecutor

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


def load():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError):
        return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LlamaCppServer:
    """llama-cpp-python's OpenAI server (`python -m llama_cpp.server`) on a free loopback port."""

    def __init__(self, python, model, alias, threads, ctx):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", model, "--model_alias", alias,
                                      "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx),
                                      "--host", "127.0.0.1", "--port", str(port), "--verbose", "False",
                                      # Queue concurrent requests (its default cuts the running one short).
                                      "--interrupt_requests", "False"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit("llama_cpp.server exited")
            try:
                urllib.request.urlopen(self.url + "/v1/models", timeout=5).read()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        sys.exit("llama_cpp.server did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def http_stream(url, name, prompt, tokens, seed):
    """One streamed completion over http.client: (seconds to the first text, completion tokens,
    the perf_counter time of every text chunk)."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": name, "prompt": prompt, "max_tokens": tokens, "temperature": 0.7, "seed": seed,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {r.read()[:300]}")
    first, usage, chunks, times = None, None, 0, []
    while True:
        line = r.fp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        j = json.loads(data)
        if j.get("usage"):
            usage = j["usage"].get("completion_tokens")
        if j.get("choices") and j["choices"][0].get("text"):
            chunks += 1
            times.append(time.perf_counter())
            if first is None:
                first = times[-1] - t0
    c.close()
    return first or 0.0, usage if usage is not None else chunks, times


def openai_stream(url, name, prompt, tokens, seed):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    first, usage, chunks, times = None, None, 0, []
    for chunk in client.completions.create(model=name, prompt=prompt, max_tokens=tokens, temperature=0.7, seed=seed,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].text:
            chunks += 1
            times.append(time.perf_counter())
            if first is None:
                first = times[-1] - t0
        if getattr(chunk, "usage", None):
            usage = chunk.usage.completion_tokens
    return first or 0.0, usage if usage is not None else chunks, times


def steady_decode_rate(results):
    """Text chunks per second while every stream of the round is decoding: from the last stream's
    first chunk to the first stream's last one (prefill and the stragglers' tails left out). A
    chunk is a token but for the few the server holds back to complete a UTF-8 character. None
    when the streams never all decode at once."""
    if any(not r[2] for r in results):
        return None
    start, end = max(r[2][0] for r in results), min(r[2][-1] for r in results)
    if end <= start:
        return None
    n = sum(1 for r in results for t in r[2] if start < t <= end)
    return n / (end - start)


def bench(url, name, peer, counts, a, rows):
    stream = openai_stream if a.client == "openai" else http_stream

    def one(i):
        return stream(url, name, f"Story {i}: Once upon a time, in a land far away,", a.tokens, i)

    # Warm-up: two requests (llama-cpp-python's first ones ran several times slower than the next).
    one(0)
    one(0)
    single = single_decode = None
    for n in counts:
        before = load()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(1, n + 1)))
        seconds = time.perf_counter() - t0
        tokens = sum(r[1] for r in results)
        rate = tokens / seconds
        single = single or rate
        ttft = sorted(r[0] for r in results)[len(results) // 2]
        decode = steady_decode_rate(results)
        single_decode = single_decode or decode
        row = {"variant": "serve", "impl": name if peer is None else f"{name}-llama.cpp", "model": name, "B": n,
               "threads": a.threads, "seconds": seconds, "tokensPerSecond": rate, "timeToFirstTokenSeconds": ttft,
               "completionTokens": tokens, "speedupOverOneStream": rate / single, "cpu": cpu_name(), "client": a.client,
               "loadAverage": before, "decodeTokensPerSecond": decode,
               "decodeSpeedupOverOneStream": decode / single_decode if decode and single_decode else None,
               "note": f"{n} concurrent streams of {a.tokens} tokens: {rate:.1f} tokens/s in all "
                       f"({rate / single:.2f}x one stream), median time to first token {ttft * 1e3:.0f} ms"
                       + (f"; while all {n} decode: {decode:.1f} tokens/s ({decode / single_decode:.2f}x one stream's)"
                          if decode and single_decode else "")}
        if peer:
            row["peer"] = peer
        rows.append(row)
        print(f"{row['impl']}: {row['note']} (load {before})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--models", default="data/models")
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--client", choices=["http", "openai"], default="http")
    ap.add_argument("--llama-cpp", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--llama-python", default="python3", help="the Python that has llama_cpp.server")
    ap.add_argument("--json")
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    llama = a.llama_cpp == "on"
    if a.llama_cpp == "auto":
        llama = subprocess.run([a.llama_python, "-c", "import llama_cpp.server"], capture_output=True).returncode == 0
    rows = []
    for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]:
        path = os.path.join(a.models, file)
        if not os.path.exists(path):
            continue
        name = os.path.splitext(file)[0]
        s = Server(a.server, path, ["--parallel", str(max(counts)), "--ctx", "512", "--threads", str(a.threads)])
        try:
            bench(s.url, name, None, counts, a, rows)
        finally:
            s.stop()
        if llama:
            p = LlamaCppServer(a.llama_python, path, name, a.threads, 512)
            try:
                bench(p.url, name, "llama.cpp", counts, a, rows)
            finally:
                p.stop()
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"cpu": cpu_name(), "rows": rows}, f, indent=1)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
