#!/usr/bin/env python3
"""Benchmark rows of a pretrained model across ranks (issue 27, variant "dist-lm"): `attn lm generate`
(1 process x T threads) against `mpirun -np P attn dist generate` (P ranks x 1 thread) on the same prompt
of N tokens: prefill throughput, decode tokens/s, KV cache bytes (single process; the largest rank's).
Rows follow SPEC.md's benchmark contract (model rows: model, weights, phase, promptTokens, tokensPerSecond)
plus ranks, kvCacheBytes and, for the distributed rows, ring/halo/gather figures.

usage: dist_lm_bench.py --attn PATH --model GGUF --tokens N [--ranks 2] [--threads 2] [--max-tokens 400]
                        [--matmul fast] --json OUT.json
Prints the comparison against the issue's targets."""
import argparse, json, os, subprocess, sys, tempfile
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--attn", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--tokens", type=int, required=True, help="prompt length (approximately: whole sentences)")
ap.add_argument("--ranks", type=int, default=2)
ap.add_argument("--threads", type=int, default=2, help="threads of the single process (ranks run 1 thread each)")
ap.add_argument("--max-tokens", type=int, default=400)
ap.add_argument("--matmul", default="fast")
ap.add_argument("--json", required=True)
a = ap.parse_args()
env = dict(os.environ)
if os.getuid() == 0:
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")

words = "the river stone light of morning carried seven quiet ships across a field and every voice remembered why we counted".split()
r = np.random.default_rng(27)
tmp = tempfile.mkdtemp()
prompt = os.path.join(tmp, "prompt.txt")
# About 15 tokens per line under both tokenizers; the exact count is what the rows report.
open(prompt, "w").write(" ".join(f"{' '.join(r.choice(words, 9))}, line {i}." for i in range(max(1, a.tokens // 15))))
common = ["--model", a.model, "--prompt-file", prompt, "--max-tokens", str(a.max_tokens), "--matmul", a.matmul]

def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")

t1, t2, st = (os.path.join(tmp, f) for f in ("single.json", "dist.json", "stats.json"))
run([a.attn, "lm", "generate", *common, "--threads", str(a.threads), "--timings-out", t1])
run(["mpirun", "--quiet", "--oversubscribe", "--bind-to", "none", "-np", str(a.ranks), a.attn, "dist", "generate", *common,
     "--threads", "1", "--timings-out", t2, "--dist-stats", st])
single, dist, stats = json.load(open(t1)), json.load(open(t2)), json.load(open(st))

def flops(t, phase):
    """FLOPs of the phase: 2 per weight per token (the LM head once per phase for prefill) plus attention."""
    D, H, Hkv, hd, F, V, L = t["hiddenSize"], t["heads"], t["kvHeads"], t["headDim"], t["intermediateSize"], t["vocabSize"], t["layers"]
    per_token = 2 * L * (D * H * hd * 2 + 2 * D * Hkv * hd + 3 * D * F)
    N, W, S = t["promptTokens"], t["window"], t["slidingLayers"]
    def pairs(n, window):  # causal (query, key) pairs of n positions, within a window
        return sum(min(i + 1, window) for i in range(n)) if window else n * (n + 1) / 2
    if phase == "prefill":
        att = 4 * H * hd * ((L - S) * pairs(N, 0) + S * (pairs(N, W) if S else 0))
        return N * per_token + 2 * D * V + att
    ctx = N + t["generatedTokens"] / 2
    return per_token + 2 * D * V + 4 * H * hd * ((L - S) * ctx + S * min(ctx, W or ctx))

name = os.path.basename(a.model)
weights = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else name.split("-")[-1].rsplit(".", 1)[0]
rows = []
for impl, t, ranks in (("single", single, 1), ("zigzag+tensor-parallel", dist, a.ranks)):
    for phase in ("prefill", "decode"):
        sec = t["prefillSeconds"] if phase == "prefill" else t["decodeSeconds"] / max(1, t["generatedTokens"] - 1)
        tps = t["prefillTokensPerSecond"] if phase == "prefill" else t["decodeTokensPerSecond"]
        row = {"variant": "dist-lm", "impl": impl, "B": 1, "H": t["heads"], "Hkv": t["kvHeads"], "N": t["promptTokens"] if phase == "prefill" else 1,
               "M": t["promptTokens"], "d": t["headDim"], "causal": True, "threads": t["threads"], "ranks": ranks, "seconds": sec,
               "gflops": flops(t, phase) / sec / 1e9, "peakFraction": None, "workspaceBytes": 0, "relError": None, "pass": "forward",
               "model": name, "weights": weights, "phase": phase, "matmul": a.matmul, "promptTokens": t["promptTokens"],
               "tokensPerSecond": tps, "kvCacheBytes": t["kvCacheBytes"] if ranks == 1 else max(s["kvCacheBytes"] for s in stats)}
        if ranks > 1:
            # The busiest rank's figures (the contract's values are numbers; the per-rank ones are printed below).
            for k in ("localTokens", "ringSeconds", "ringWaitSeconds", "ringBytes", "haloSeconds", "haloBytes", "windowedSeconds",
                      "gatherSeconds", "gatherCalls", "floatsSent"):
                row[k] = max(q[k] for q in stats)
        rows.append(row)
json.dump(rows, open(a.json, "w"), indent=1)
s, d = rows[0], rows[2]
print(f"{name}, {s['promptTokens']} prompt tokens, matmul {a.matmul}: 1 process x {single['threads']} threads vs {a.ranks} ranks x 1 thread")
print(f"  prefill: {s['tokensPerSecond']:.1f} vs {d['tokensPerSecond']:.1f} tokens/s -> {d['tokensPerSecond'] / s['tokensPerSecond']:.1%} of single-process (target >= 85%)")
print(f"  decode:  {rows[1]['tokensPerSecond']:.1f} vs {rows[3]['tokensPerSecond']:.1f} tokens/s -> {rows[3]['tokensPerSecond'] / rows[1]['tokensPerSecond']:.2f}x (target >= 0.8x)")
print(f"  KV cache: {s['kvCacheBytes'] / 2**20:.1f} MiB vs {d['kvCacheBytes'] / 2**20:.1f} MiB on the largest rank -> {d['kvCacheBytes'] / s['kvCacheBytes']:.2f} (target <= 0.55)")
for q in stats:
    print(f"  rank {q['rank']:.0f}: {q['localTokens']:.0f} positions, prefill {q['prefillSeconds']:.2f} s (ring {q['ringSeconds']:.2f} s, its waits {q['ringWaitSeconds'] * 1e3:.0f} ms, "
          f"{q['ringBytes'] / 2**20:.1f} MiB; halo {q['haloSeconds'] * 1e3:.0f} ms, {q['haloBytes'] / 2**20:.1f} MiB), "
          f"decode gathers {q['gatherSeconds'] * 1e3:.0f} ms in {q['gatherCalls']:.0f} calls")
