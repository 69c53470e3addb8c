#!/usr/bin/env python3
"""make test-serve: attn-server driven by OpenAI's official Python client.

Starts the server on a free loopback port with SmolLM2, then: /v1/models; a chat completion; a
streamed chat completion whose deltas concatenate to the non-streamed text (temperature 0); a
completion with `stop`; 8 concurrent streams that each finish with the text they get alone; a
client that disconnects mid-stream (its sequence freed, as /metrics shows); the bad requests of
SPEC.md's "Serving" (raw HTTP, since the client refuses some of them itself); and the server's
resident memory after 500 requests within 5% of after 50.

usage: serve_test.py --server .build/release/attn-server --model data/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse, json, os, re, subprocess, sys, threading, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


class Server:
    def __init__(self, binary, model, args):
        self.proc = subprocess.Popen([binary, "--model", model, "--port", "0"] + args,
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.time() + 300
        self.url = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.proc.kill()
            sys.exit("attn-server did not start")
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def metric(self, name):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=30).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def raw(self, path, body, content_type="application/json"):
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=500)
    a = ap.parse_args()
    name = os.path.splitext(os.path.basename(a.model))[0]
    s = Server(a.server, a.model, ["--parallel", "8", "--queue", "16", "--ctx", "512"])
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
        ids = [m.id for m in client.models.list().data]
        check(ids == [name], f"/v1/models lists {ids}")

        messages = [{"role": "user", "content": "What is the capital of France?"}]
        chat = client.chat.completions.create(model=name, messages=messages, max_tokens=32, temperature=0)
        text = chat.choices[0].message.content
        check(bool(text) and chat.usage.completion_tokens > 0, f"chat completion: {text!r}, usage {chat.usage.completion_tokens}")
        deltas, finish = "", None
        for chunk in client.chat.completions.create(model=name, messages=messages, max_tokens=32, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                deltas += chunk.choices[0].delta.content
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        check(deltas == text and finish is not None, f"streamed deltas equal the non-streamed text (finish {finish})")

        plain = client.completions.create(model=name, prompt="The capital of France is", max_tokens=16, temperature=0).choices[0].text
        words = plain.split()
        if len(words) > 2:
            stop = words[1]
            c = client.completions.create(model=name, prompt="The capital of France is", max_tokens=16, temperature=0, stop=[stop])
            check(stop not in c.choices[0].text and plain.startswith(c.choices[0].text) and c.choices[0].finish_reason == "stop",
                  f"completion with stop {stop!r}: {c.choices[0].text!r}")
        else:
            check(False, f"completion too short to test stop: {plain!r}")

        # 8 concurrent streams: each the text it gets alone (greedy and seeded sampling).
        prompts = [f"Write one sentence about the number {i}." for i in range(8)]

        def stream(i):
            out = ""
            for chunk in client.completions.create(model=name, prompt=prompts[i], max_tokens=24, temperature=0.7 if i % 2 else 0,
                                                   seed=i, stream=True):
                if chunk.choices:
                    out += chunk.choices[0].text
            return out
        alone = [stream(i) for i in range(8)]
        batched_before = s.metric("attn_server_decode_batch_rows_count") or 0
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(stream, range(8)))
        check(together == alone, "8 concurrent streams each finish with their text alone")
        check((s.metric("attn_server_decode_batch_rows_count") or 0) > batched_before, "the concurrent streams decoded in batched steps")

        # A client that disconnects mid-stream: its sequence is freed.
        with client.completions.with_streaming_response.create(model=name, prompt="Once upon a time", max_tokens=400, stream=True) as r:
            for n, _ in enumerate(r.iter_lines()):
                if n >= 3:
                    break
        deadline = time.time() + 60
        while time.time() < deadline and s.metric("attn_server_active_sequences") != 0:
            time.sleep(0.1)
        check(s.metric("attn_server_active_sequences") == 0, "a disconnected stream's sequence is freed")

        # Bad requests, each answered in OpenAI's error shape, the server still serving.
        bad = [("malformed JSON", b'{"prompt": "hi"', 400),
               ("wrong type", json.dumps({"prompt": 5}).encode(), 400),
               ("unknown model", json.dumps({"model": "gpt-9", "prompt": "hi"}).encode(), 404),
               ("max_tokens beyond the context", json.dumps({"prompt": "hi", "max_tokens": 100000}).encode(), 400),
               ("negative temperature", json.dumps({"prompt": "hi", "temperature": -1}).encode(), 400),
               ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', 400),
               ("a 20 MB body", b'{"prompt": "' + b"a" * (20 << 20) + b'"}', 413)]
        for what, body, status in bad:
            code, payload = s.raw("/v1/completions", body)
            try:
                shaped = "message" in json.loads(payload)["error"]
            except Exception:
                shaped = False
            check(code == status and shaped, f"{what}: {code} (expected {status}), OpenAI error shape {shaped}")
        check(client.completions.create(model=name, prompt="Hello", max_tokens=2).choices[0].text is not None, "still serving")

        # Resident memory: after 500 requests within 5% of after 50.
        def some(n):
            for i in range(n):
                client.completions.create(model=name, prompt=f"Request {i}: say something.", max_tokens=4, temperature=0)
        some(50)
        r50 = s.rss()
        some(a.requests - 50)
        r500 = s.rss()
        check(r500 <= r50 * 1.05, f"resident memory after {a.requests} requests {r500 / 2**20:.1f} MiB, after 50 {r50 / 2**20:.1f} MiB")
        check(s.proc.poll() is None, "the server is still running")
    finally:
        s.stop()
    print(f"{len(FAILURES)} failed" if FAILURES else "all passed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
