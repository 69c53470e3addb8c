#!/usr/bin/env python3
"""Checks attention-bench JSON against the benchmark contract of SPEC.md: an array of rows with the
required keys, every number finite, peakFraction and relError numbers or null.

usage: validate_results.py RESULTS.json [--expect-variants sgemm,full,...] [--expect-backward full,...]
                           [--expect-kv-types f32,bf16,f16,int8]
Ends with the line 'N passed, N failed'."""
import json, math, sys

REQUIRED = ["variant", "impl", "B", "H", "Hkv", "N", "M", "d", "causal", "threads", "seconds", "gflops",
            "peakFraction", "workspaceBytes", "relError"]
path = sys.argv[1]
expect = []
if "--expect-variants" in sys.argv:
    expect = sys.argv[sys.argv.index("--expect-variants") + 1].split(",")
passed = failed = 0

def check(ok, what):
    global passed, failed
    passed += bool(ok); failed += not ok
    if not ok:
        print("FAIL " + what)

rows = json.load(open(path))
check(isinstance(rows, list) and len(rows) > 0, "results are a non-empty array")
for i, r in enumerate(rows):
    missing = [k for k in REQUIRED if k not in r]
    check(not missing, f"row {i} ({r.get('variant')}) has every key (missing {missing})")
    for k, v in r.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if isinstance(v, list):   # repeated measurements (e.g. `runs`): every one a finite number
            check(len(v) > 0 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v),
                  f"row {i} ({r.get('variant')} {r.get('impl')}) {k} = {v} is a list of finite numbers")
            continue
        check(isinstance(v, (int, float)) and math.isfinite(v), f"row {i} ({r.get('variant')} {r.get('impl')}) {k} = {v} is finite")
    if r.get("variant") == "tokenizer":
        # SPEC: rows of other kinds carry variant, threads, seconds and their own figures.
        check(r.get("seconds", 0) > 0 and r.get("bytesPerSecond", 0) > 0 and r.get("tokensPerSecond", 0) > 0,
              f"row {i} (tokenizer) has positive time, bytes/s and tokens/s")
    else:
        check(r.get("seconds", 0) > 0 and r.get("gflops", 0) > 0, f"row {i} has positive time and GFLOP/s")
    check(r.get("peakFraction") is None or isinstance(r["peakFraction"], (int, float)), f"row {i} peakFraction is a number or null")
    check(r.get("pass", "forward") in ("forward", "backward"), f"row {i} pass is forward or backward")
    if r.get("pass") == "backward":
        check(isinstance(r.get("backwardForwardRatio"), (int, float)), f"row {i} (backward) has backwardForwardRatio")
    if r.get("variant") == "lora-train":
        check(isinstance(r.get("model"), str) and isinstance(r.get("weights"), str), f"row {i} (lora-train) has model and weights")
        check(isinstance(r.get("peakFraction"), (int, float)) and r["peakFraction"] > 0, f"row {i} (lora-train) has its fraction of the sgemm peak")
    if r.get("variant") in ("lm-train", "lm-generate", "lora-train"):
        check(isinstance(r.get("tokensPerSecond"), (int, float)) and r["tokensPerSecond"] > 0, f"row {i} ({r['variant']}) has tokensPerSecond")
    if r.get("variant") == "lm-real":
        for k in ("model", "weights", "phase") + (() if "peer" in r else ("matmul",)):
            check(isinstance(r.get(k), str), f"row {i} (lm-real) has {k}")
        check(r.get("phase") in ("prefill", "decode", "decode-batch"), f"row {i} (lm-real) phase is prefill, decode or decode-batch")
        if "peer" not in r:   # a peer's rows (llama.cpp) have no matmul mode of ours
            check(r.get("matmul") in ("exact", "fast"), f"row {i} (lm-real) matmul is exact or fast")
        for k in ("promptTokens", "rssBytes", "tokensPerSecond"):
            check(isinstance(r.get(k), (int, float)) and r[k] > 0, f"row {i} (lm-real) has {k}")
    if r.get("variant") == "quant-kernel":
        check(isinstance(r.get("weights"), str) and r.get("bytesPerSecond", 0) > 0, f"row {i} (quant-kernel) has weights and bytesPerSecond")
    if r.get("variant") == "ring":
        for k in ("ranks", "rank", "bytesSent", "waitSeconds", "hiddenFraction"):
            check(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool), f"row {i} (ring) has {k}")
        check(0 <= r.get("hiddenFraction", -1) <= 1, f"row {i} (ring) hiddenFraction is in [0, 1]")
    if r.get("variant") == "decode":
        check(r.get("kvType", "f32") in ("f32", "bf16", "f16", "int8"), f"row {i} (decode) kvType is f32, bf16, f16 or int8")
        if r.get("kvType", "f32") != "f32":
            check(isinstance(r.get("relError"), (int, float)), f"row {i} (decode {r.get('kvType')}) has its error against the f32 cache")
for v in expect:
    check(any(r.get("variant") == v for r in rows), f"variant {v} has rows")
if "--expect-backward" in sys.argv:
    for v in sys.argv[sys.argv.index("--expect-backward") + 1].split(","):
        check(any(r.get("variant") == v and r.get("pass") == "backward" for r in rows), f"variant {v} has backward rows")
if "--expect-kv-types" in sys.argv:
    for t in sys.argv[sys.argv.index("--expect-kv-types") + 1].split(","):
        check(any(r.get("variant") == "decode" and r.get("kvType") == t for r in rows), f"decode rows with a {t} cache")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
