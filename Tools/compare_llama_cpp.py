#!/usr/bin/env python3
"""make compare-llama-cpp: this engine against llama.cpp on the same GGUF files, same prompts, same threads.

For each model in data/models and each setting (prompt length, threads, KV cache type), runs
  - `attn lm generate --matmul fast` (prefill of the prompt, then --steps greedy tokens), its timings JSON and
    its peak resident memory (getrusage of the child);
  - llama.cpp through llama-cpp-python, in a child process of its own: the same prompt tokens evaluated in
    batches of 512, then --steps single-token evaluations; peak resident memory of that child minus the
    interpreter's own after `import llama_cpp` (stated in each row as `rssBaselineBytes`).
The prompts are real text (the held-out book of Job, data/kjv.txt) cut to the prompt length in llama.cpp's
tokens; both engines tokenize the same text (the counts are in each row). The two run in turn --repeats times per
setting (default 3): each side's medians are reported (`runs` lists every run's tokens/s), and the ratios are the
medians of the pairs (`prefillRatioToPeer`, `decodeRatioToPeer` on this engine's rows): these machines drift by
10-30% within minutes, so a single run of each compares moments more than engines. KV types pair as f16 ↔ f16 (llama.cpp's
default) and int8 ↔ q8_0 (llama.cpp needs flash attention for a quantised V cache, so that row turns it on).

Each decode row also carries the memory bandwidth it reached: (bytes of weight matrices read per token + bytes of
KV cache read at that context) × tokens/s, against a copy bandwidth measured in this run (numpy, one thread, 256 MiB).

Rows follow SPEC's benchmark contract (variant lm-real; model, weights, phase, promptTokens, tokensPerSecond,
rssBytes; `peer: "llama.cpp"` on llama.cpp's rows) and are written to --json; a table with the ratios is printed and
written beside it (results.md). llama-cpp-python is a peer for comparison only, never a dependency.
"""
import argparse, json, os, re, resource, statistics, subprocess, sys, tempfile, time

MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]

# The child that runs llama.cpp: argv = model, prompt file, steps, threads, kv type, out json.
LLAMA_CHILD = r'''
import json, sys, time
import llama_cpp
from llama_cpp import Llama
model, prompt_file, steps, threads, kv, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1]) * 1024
base = rss()
text = open(prompt_file, encoding="utf-8").read()
kw = {}
if kv == "q8_0":
    kw = dict(type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0, flash_attn=True)
probe = Llama(model_path=model, n_ctx=64, vocab_only=True, verbose=False)
bos = probe.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
ids = probe.tokenize(text.encode("utf-8"), add_bos=bos, special=False)
del probe
llm = Llama(model_path=model, n_ctx=len(ids) + steps + 16, n_threads=threads, n_threads_batch=threads, n_batch=512,
            verbose=False, **kw)
import numpy as np
V = llm.n_vocab()
def greedy():   # the last evaluated token's logits (llama.cpp computes only those), argmax
    return int(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,)).argmax())
t0 = time.perf_counter(); llm.eval(ids); tok = greedy(); prefill = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(steps):
    llm.eval([tok])
    tok = greedy()
decode = time.perf_counter() - t0
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))   # this image's peak
json.dump({"promptTokens": len(ids), "prefillSeconds": prefill, "decodeSeconds": decode, "generatedTokens": steps,
           "peakRss": peak, "baselineRss": base, "version": llama_cpp.__version__}, open(out, "w"))
'''


def weight_bytes(path):
    """Bytes of the 2-D tensors (the matrices a decoding step reads; a tied LM head is the embedding, read once)."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    mats = [t for t in r.tensors if len(t.shape) == 2]
    types = sorted({t.tensor_type.name for t in mats})
    total = sum(int(t.n_bytes) for t in mats if t.name != "token_embd.weight")
    params = sum(int(t.n_elements) for t in mats if t.name != "token_embd.weight")
    emb = [t for t in r.tensors if t.name == "token_embd.weight"]
    tied = not any(t.name == "output.weight" for t in r.tensors)
    if tied and emb:
        total += int(emb[0].n_bytes)
        params += int(emb[0].n_elements)
    return total, params, ",".join(types)


def copy_bandwidth():
    """Bytes read + written per second by a 256 MiB numpy copy, one thread, best of 5 (in a child, so that its
    arrays never count in this process's peak memory, which forked children inherit)."""
    code = ("import numpy as np, time; a = np.ones(64 << 20, dtype=np.float32); b = np.empty_like(a); best = 1e9\n"
            "for _ in range(5):\n t0 = time.perf_counter(); np.copyto(b, a); best = min(best, time.perf_counter() - t0)\n"
            "print(2 * a.nbytes / best)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def kv_bytes_per_token(timings, context, kv):
    """Bytes of keys and values a decoding step reads at `context` (sliding layers: their window)."""
    L, S, W = timings["layers"], timings.get("slidingLayers", 0), timings.get("window", 0) or context
    per = {"f32": 4, "f16": 2, "bf16": 2, "int8": 34 / 32, "q8_0": 34 / 32}[kv]
    positions = (L - S) * context + S * min(W, context)
    return 2 * positions * timings["kvHeads"] * timings["headDim"] * per


def prompt_text(job, model, tokens, tmp):
    """Job's verses cut to `tokens` tokens of llama.cpp's tokenizer (BOS included where the model adds it)."""
    from llama_cpp import Llama
    llm = Llama(model_path=model, n_ctx=64, vocab_only=True, verbose=False)
    bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    text = job
    while len(llm.tokenize(text.encode(), add_bos=bos)) < tokens:
        text = text + "\n" + job
    ids = llm.tokenize(text.encode(), add_bos=bos)[: tokens]
    body = llm.detokenize(ids[1:] if bos else ids).decode("utf-8", errors="ignore")
    path = os.path.join(tmp, f"prompt-{os.path.basename(model)}-{tokens}.txt")
    open(path, "w", encoding="utf-8").write(body)
    return path


def run_ours(attn, model, prompt, steps, threads, kv, tmp):
    out = os.path.join(tmp, "timings.json")
    cmd = ["/usr/bin/env", attn, "lm", "generate", "--model", model, "--prompt-file", prompt, "--max-tokens", str(steps),
           "--temperature", "0", "--matmul", "fast", "--kv-type", kv, "--threads", str(threads), "--timings-out", out]
    # A fresh child per run, so that its peak RSS is this run's: wrap in a tiny Python that reports it (the
    # child's peak includes the small wrapper's before exec: a few MiB against this engine).
    wrap = [sys.executable, "-c", "import resource,subprocess,sys; r=subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.PIPE, text=True); sys.stderr.write(r.stderr[-400:]) if r.returncode else None; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024); sys.exit(r.returncode)"] + cmd
    r = subprocess.run(wrap, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"attn lm generate failed: {r.stderr.strip()[-300:]}")
    t = json.load(open(out))
    t["peakRss"] = int(r.stdout.strip().splitlines()[-1])
    return t


def run_llama(model, prompt, steps, threads, kv, tmp):
    out = os.path.join(tmp, "llama.json")
    r = subprocess.run([sys.executable, "-c", LLAMA_CHILD, model, prompt, str(steps), str(threads), kv, out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp child failed: {r.stderr.strip()[-300:]}")
    return json.load(open(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--models", default="data/models")
    ap.add_argument("--corpus", default="data/kjv.txt")
    ap.add_argument("--steps", type=int, default=64, help="decoding steps per run")
    ap.add_argument("--quick", action="store_true", help="prompts of 128 and 512 only, 2 threads")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each engine per setting, in turn (medians reported)")
    ap.add_argument("--json", default="results/lm-real/llama-cpp.json")
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python not importable (pip install llama-cpp-python): skipping the llama.cpp comparison")
        return
    job = "\n".join(l.split(" ", 1)[1].strip() for l in open(a.corpus, encoding="utf-8") if re.match(r"^Job\d+:\d+ ", l))
    bandwidth = copy_bandwidth()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
    print(f"{cpu}; copy bandwidth {bandwidth / 1e9:.1f} GB/s (numpy, one thread); llama.cpp {llama_cpp.__version__}", flush=True)
    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = os.path.join(a.models, name)
            if not os.path.exists(path):
                print(f"{name}: missing (make models)")
                continue
            wbytes, params, types = weight_bytes(path)
            settings = [(128, 2, "f16"), (512, 2, "f16")] if a.quick else \
                [(128, 1, "f16"), (128, 2, "f16"), (512, 1, "f16"), (512, 2, "f16"), (4096, 2, "f16"), (4096, 2, "int8")]
            if not a.quick and name.startswith("gemma"):
                settings.append((16384, 2, "f16"))
            for tokens, threads, kv in settings:
                prompt = prompt_text(job, path, tokens, tmp)
                peer_kv = "q8_0" if kv == "int8" else kv
                # The two engines in turn, `repeats` times: these machines drift by 10-30% within
                # minutes, so one run each compares the moments more than the engines. Each side
                # reports the run of median decode speed; the ratios are medians of the pairs.
                runs = {"attn": [], "llama.cpp": []}
                for _ in range(a.repeats):
                    runs["attn"].append(run_ours(a.attn, path, prompt, a.steps, threads, kv, tmp))
                    runs["llama.cpp"].append(run_llama(path, prompt, a.steps, threads, peer_kv, tmp))
                def speeds(t):
                    return (t["promptTokens"] / t["prefillSeconds"],
                            t["generatedTokens"] / t["decodeSeconds"] if t["generatedTokens"] > 0 else 0.0)
                pairs = [(speeds(o), speeds(l)) for o, l in zip(runs["attn"], runs["llama.cpp"])]
                prefill_ratio = statistics.median(o[0] / l[0] for o, l in pairs)
                decode_ratio = statistics.median(o[1] / l[1] for o, l in pairs) if all(l[1] > 0 for _, l in pairs) else None
                ours = runs["attn"][0]
                pair = {}
                for who, kvname in (("attn", kv), ("llama.cpp", peer_kv)):
                    prefills = [speeds(t)[0] for t in runs[who]]
                    decodes = [speeds(t)[1] for t in runs[who]]
                    t = sorted(runs[who], key=lambda t: speeds(t)[1])[len(runs[who]) // 2]
                    base = t["baselineRss"] if who == "llama.cpp" else 0
                    rss = statistics.median(r["peakRss"] - (r["baselineRss"] if who == "llama.cpp" else 0) for r in runs[who])
                    P = t["promptTokens"]
                    prefill = statistics.median(prefills)
                    decode = statistics.median(decodes) if t["generatedTokens"] > 0 else None
                    ctx = P + a.steps // 2
                    # The benchmark contract's shape keys: B sequences, H/Hkv heads, N tokens, M context, d head
                    # dimension; gflops counts the weight products only (2 · matrix elements per token).
                    common = {"variant": "lm-real", "model": name.rsplit(".", 1)[0], "weights": types, "threads": threads,
                              "kvType": kvname, "rssBytes": rss, "cpu": cpu, "B": 1, "H": ours["heads"], "Hkv": ours["kvHeads"],
                              "d": ours["headDim"], "causal": True, "peakFraction": None, "workspaceBytes": 0, "relError": None}
                    if who == "llama.cpp":
                        common.update(peer="llama.cpp", peerVersion=t["version"], rssBaselineBytes=base)
                    else:
                        common.update(matmul="fast", prefillRatioToPeer=prefill_ratio, decodeRatioToPeer=decode_ratio)
                    common.update(repeats=a.repeats)
                    rows.append(dict(common, impl=f"{common['model']}-{who}", phase="prefill", promptTokens=P, seconds=P / prefill,
                                     tokensPerSecond=prefill, runs=prefills, N=P, M=P, gflops=2 * params * prefill * 1e-9))
                    if decode:
                        traffic = wbytes + kv_bytes_per_token(ours, ctx, kv)
                        rows.append(dict(common, impl=f"{common['model']}-{who}", phase="decode", promptTokens=P,
                                         N=t["generatedTokens"], M=ctx, gflops=2 * params * decode * 1e-9,
                                         seconds=t["generatedTokens"] / decode, tokensPerSecond=decode, runs=decodes, bytesPerToken=traffic,
                                         bytesPerSecond=traffic * decode, bandwidthFraction=traffic * decode / bandwidth))
                    pair[who] = (P, prefill, decode, rss)
                (pa, fa, da, ra), (pl, fl, dl, rl) = pair["attn"], pair["llama.cpp"]
                line = (f"{name.rsplit('.', 1)[0]:28s} prompt {pa:5d}/{pl:5d} {threads}t kv {kv:4s}: prefill {fa:7.1f} vs {fl:7.1f} "
                        f"({prefill_ratio:4.2f}x)  decode {da or 0:6.1f} vs {dl or 0:6.1f} ({decode_ratio or 0:4.2f}x)  "
                        f"RSS {ra / 2**20:6.1f} vs {rl / 2**20:6.1f} MiB ({ra / rl:4.2f}x)  [medians of {a.repeats}]")
                print(line, flush=True)
                table.append((name.rsplit(".", 1)[0], pa, threads, kv, fa, fl, prefill_ratio, da, dl, decode_ratio, ra, rl))
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    json.dump(rows, open(a.json + ".tmp", "w"), indent=1)
    os.replace(a.json + ".tmp", a.json)
    md = os.path.join(os.path.dirname(a.json) or ".", "llama-cpp.md")
    with open(md + ".tmp", "w") as f:
        f.write(f"Measured on {cpu} ({os.cpu_count()} cores), copy bandwidth {bandwidth / 1e9:.1f} GB/s, llama.cpp "
                f"{llama_cpp.__version__}, {a.steps} decoding steps; each engine run {a.repeats} times in turn: medians, "
                f"and ratios the medians of the {a.repeats} pairs; `python3 Tools/compare_llama_cpp.py` (make compare-llama-cpp).\n\n")
        f.write("| model | prompt | threads | KV | prefill tok/s (attn / llama.cpp) | decode tok/s (attn / llama.cpp) | RSS MiB (attn / llama.cpp) |\n")
        f.write("|---|---:|---:|---|---|---|---|\n")
        for m, p, t, kv, fa, fl, fr, da, dl, dr, ra, rl in table:
            f.write(f"| {m} | {p} | {t} | {kv} | {fa:.0f} / {fl:.0f} ({fr:.2f}×) | {da or 0:.1f} / {dl or 0:.1f} "
                    f"({dr or 0:.2f}×) | {ra / 2**20:.0f} / {rl / 2**20:.0f} ({ra / rl:.2f}×) |\n")
    os.replace(md + ".tmp", md)


if __name__ == "__main__":
    main()
