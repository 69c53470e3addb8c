#!/usr/bin/env python3
"""The report of `make experiments-pretrained`: results.md and SVG charts from the steps' JSON.

usage: experiments_pretrained_report.py OUTDIR   (OUTDIR holds run.json and <part>/<step>.json)"""
import glob, json, math, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svg_charts  # noqa: E402

OUT = sys.argv[1]
RUN = json.load(open(os.path.join(OUT, "run.json")))
TIMINGS = json.load(open(os.path.join(OUT, "timings.json"))) if os.path.exists(os.path.join(OUT, "timings.json")) else {}
COMMANDS = {s["name"]: s["command"] for s in RUN["steps"]}


def write(name, text):
    tmp = os.path.join(OUT, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(OUT, name))


def load_part(part):
    out = {}
    for s in RUN["steps"]:
        path = os.path.join(OUT, s["out"])
        if s["part"] == part and os.path.exists(path):
            out[s["name"]] = json.load(open(path))
    return out


def mib(b):
    return f"{b / 2**20:.1f} MiB"


def seconds(name):
    t = TIMINGS.get(name)
    return f"{t['seconds']:.0f}" if t else "?"


md = [f"Run {RUN['date']}, commit {RUN['commit']}, {RUN['cpu']} ({RUN['cores']} cores, shared with other jobs: timings are noisy), "
      f"{'QUICK' if RUN['quick'] else 'full'} mode, {sum(TIMINGS[s['name']]['seconds'] for s in RUN['steps'] if s['name'] in TIMINGS) / 60:.1f} "
      f"minutes of the grid's steps.\n",
      "Every figure below is from the command listed in the step table at the end (`attn` is `.build/release/attn`).\n"]
targets = []

# ---- Perplexity by position, SmolLM2 ----
pp = load_part("perplexity")
if pp:
    md.append("### SmolLM2-135M: perplexity by position (trained to 8K), Job + Luke + Hebrews\n")
    md.append("Loss in nats per token over every scored position (perplexity = exp), all rows on the same tokens "
              f"(spans of {RUN['parameters']['smol_span']} tokens read as windows of the given length). RoPE factors are length / 8K, "
              "no fine-tune; StreamingLLM keeps 4 sinks + a window (positions by slot in the cache).\n")
    md.append("| method | window | windows | loss | perplexity | last 1/16 of the window | KV cache (f32) | tokens/s | seconds |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for name, r in pp.items():
        md.append(f"| {r['contextExtension']} | {r['window']} | {r['windows']} | {r['meanLoss']:.4f} | {r['perplexity']:.3f} | "
                  f"{r['buckets'][-1]['perplexity']:.3f} | {mib(r['kvCacheBytes'])} | {r['tokensPerSecond']:.0f} | {seconds(name)} |")
    md.append("")
    for L in sorted(set(r["window"] for r in pp.values())):
        series = [(r["contextExtension"], [((i + 0.5) * r["curveBin"], math.exp(y)) for i, y in enumerate(r["curve"])])
                  for r in pp.values() if r["window"] == L]
        # Perplexity of bins of positions, clipped so an exploding method does not flatten the rest.
        finite = [y for _, pts in series for _, y in pts if math.isfinite(y)]
        ymax = min(max(finite), 4 * sorted(finite)[len(finite) // 2]) if finite else None
        bin_positions = max(1, L // 64)
        smooth = []
        for label, pts in series:
            k = max(1, bin_positions // max(1, int(pts[0][0] * 2)))
            smooth.append((label, [(sum(x for x, _ in pts[i:i + k]) / len(pts[i:i + k]), sum(y for _, y in pts[i:i + k]) / len(pts[i:i + k]))
                                   for i in range(0, len(pts), k)]))
        write(f"smol-perplexity-{L}.svg", svg_charts.line_chart(f"SmolLM2-135M: perplexity by position, windows of {L} tokens",
                                                                 smooth, "position in the window (tokens)", "perplexity",
                                                                 vlines=[(8192, "trained context")] if L > 8192 else [], ymax=ymax))
        md.append(f"![perplexity by position at {L}](smol-perplexity-{L}.svg)\n")
    s8, s32 = pp.get("smol-streaming-8192"), pp.get("smol-streaming-32768")
    if s8 and s32:
        change = s32["perplexity"] / s8["perplexity"] - 1
        bounded = s32["kvCacheBytes"] == s8["kvCacheBytes"]
        targets.append(("StreamingLLM perplexity at 32K within 5% of 8K, bounded memory", abs(change) <= 0.05 and bounded,
                        f"{s8['perplexity']:.3f} at 8K, {s32['perplexity']:.3f} at 32K ({100 * change:+.1f}%); KV cache "
                        f"{mib(s8['kvCacheBytes'])} at both" if bounded else "memory not bounded"))
    else:
        targets.append(("StreamingLLM perplexity at 32K within 5% of 8K, bounded memory", None, "not measured in this run"))

# ---- Gemma 3: 4K windows against a 32K window ----
gm = load_part("gemma")
if gm:
    md.append("### Gemma 3 270M: short windows against one long window on the same tokens\n")
    md.append("| window | windows | loss | perplexity | first 1/16 | last 1/16 | KV cache (f32) | tokens/s | seconds |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for name, r in gm.items():
        md.append(f"| {r['window']} | {r['windows']} | {r['meanLoss']:.4f} | {r['perplexity']:.3f} | {r['buckets'][0]['perplexity']:.3f} | "
                  f"{r['buckets'][-1]['perplexity']:.3f} | {mib(r['kvCacheBytes'])} | {r['tokensPerSecond']:.0f} | {seconds(name)} |")
    md.append("")
    rs = sorted(gm.values(), key=lambda r: r["window"])
    if len(rs) >= 2:
        short, long = rs[0], rs[-1]
        targets.append((f"Gemma 3: the {long['window']} window no worse than {short['window']} windows", long["perplexity"] <= short["perplexity"],
                        f"perplexity {long['perplexity']:.3f} against {short['perplexity']:.3f}"))
        write("gemma-perplexity.svg", svg_charts.line_chart(
            "Gemma 3 270M: perplexity by position", [(f"window {r['window']}", [((i + 0.5) * r["curveBin"], math.exp(y)) for i, y in enumerate(r["curve"])])
                                                   for r in rs], "position in the window (tokens)", "perplexity"))
        md.append("![Gemma 3 perplexity by position](gemma-perplexity.svg)\n")

# ---- Passkey ----
pk = load_part("passkey")
if pk:
    md.append("### Passkey retrieval (Landmark's prompt, greedy, no fine-tune)\n")
    md.append("Accuracy of the first number of 8 greedy tokens; prompt lengths in tokens (the longest prompt of at most that many); "
              "keys uniform in 1...50000.\n")
    md.append("| step | method | KV | length | " + "depths | accuracy | s/trial | KV cache |")
    md.append("|---|---|---|---|---|---|---|---|")
    for name, r in pk.items():
        res = r["results"]
        for i, L in enumerate(res["lengths"]):
            acc = " / ".join(f"{a:.2f}" for a in res["accuracy"][i])
            md.append(f"| {name} | {r['contextExtension']} | {r['kvType']} | {L} | {', '.join(f'{d:g}' for d in res['depths'])} | {acc} | "
                      f"{r['secondsPerTrial'][i]:.1f} | {mib(r['kvCacheBytes'][i])} |")
    md.append("")
    grid = {f"{n} ({r['contextExtension']}, {r['kvType']})": dict(lengths=r["results"]["lengths"], depths=r["results"]["depths"],
                                                                  accuracy=r["results"]["accuracy"], mean=r["meanAccuracy"],
                                                                  trials=r["results"]["trials"]) for n, r in pk.items()}
    write("passkey.svg", svg_charts.heatmaps(grid, "Passkey retrieval on the pretrained models, by prompt length (tokens) and depth",
                                             "no fine-tune; greedy; chance 2e-5"))
    md.append("![passkey heatmaps](passkey.svg)\n")
    smol = pk.get("smol-f32")
    if smol:
        res = smol["results"]
        rows = [i for i, L in enumerate(res["lengths"]) if L <= 8192]
        acc = sum(sum(res["accuracy"][i]) / len(res["depths"]) for i in rows) / max(1, len(rows))
        upto = max(res["lengths"][i] for i in rows)
        targets.append((f"SmolLM2 passkey >= 90% within 8K", acc >= 0.9 if upto == 8192 else None,
                        f"{100 * acc:.0f}% over lengths {', '.join(str(res['lengths'][i]) for i in rows)} "
                        f"({res['trials']} trials per cell)" + ("" if upto == 8192 else "; 8K not in this run")))
    at16 = {n: r for n, r in pk.items() if n.startswith("smol-") and 16384 in r["results"]["lengths"]}
    if at16:
        best = max(at16.items(), key=lambda kv: kv[1]["meanAccuracy"])
        targets.append(("SmolLM2 passkey at 16K: some method >= 50%", best[1]["meanAccuracy"] >= 0.5,
                        "; ".join(f"{r['contextExtension']}: {100 * r['meanAccuracy']:.0f}%" for r in at16.values())))
    else:
        targets.append(("SmolLM2 passkey at 16K: some method >= 50%", None, "not measured in this run"))

# ---- Temp-LoRA ----
tl = load_part("temp-lora")
if tl:
    md.append("### Temp-LoRA (Wang et al. 2024) on the quantised models\n")
    md.append("Each chunk of 1,024 tokens is scored with the current adapter (read with the window of preceding tokens), then "
              "trained on for the given epochs; a fresh adapter per book, the base never changes. Perplexity of the books' "
              "second halves (of the tokens read), with and without the adapter.\n")
    md.append("| step | books (tokens) | window | epochs | lr | base | Temp-LoRA | change | all chunks: base / Temp-LoRA | training tokens/s | seconds |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in tl.items():
        books = ", ".join(f"{b['name']} ({b['tokens']})" for b in r["books"])
        h, a_ = r["secondHalf"], r["all"]
        tps = sum(b["trainingTokensPerSecond"] for b in r["books"]) / len(r["books"]) if r["epochs"] else 0
        md.append(f"| {name} | {books} | {r['window']} | {r['epochs']} | {r['learningRate']:g} | {h['basePerplexity']:.3f} | "
                  f"{h['adaptedPerplexity']:.3f} | {-100 * h['perplexityReduction']:+.1f}% | {a_['basePerplexity']:.3f} / "
                  f"{a_['adaptedPerplexity']:.3f} | {tps:.0f} | {r['totalSeconds']:.0f} |")
        if r["epochs"] and len(r["books"]) > 1:
            for b in r["books"]:
                md.append(f"| {name}: {b['name']} | {b['tokens']} | | | | {b['secondHalf']['basePerplexity']:.3f} | "
                          f"{b['secondHalf']['adaptedPerplexity']:.3f} | {-100 * b['secondHalf']['perplexityReduction']:+.1f}% | | | |")
    md.append("")
    trained = {n: r for n, r in tl.items() if r["epochs"]}
    if trained:
        worst = min(trained.items(), key=lambda kv: kv[1]["secondHalf"]["perplexityReduction"])
        targets.append(("Temp-LoRA: >= 10% lower perplexity on the second halves", all(r["secondHalf"]["perplexityReduction"] >= 0.10 for r in trained.values()),
                        "; ".join(f"{n}: {100 * r['secondHalf']['perplexityReduction']:.1f}% lower" for n, r in trained.items())))
    for n, r in trained.items():
        base = tl.get(n + "-base-w2048")
        if base:
            md.append(f"Trade-off ({n}): window {r['window']} + Temp-LoRA {r['secondHalf']['adaptedPerplexity']:.3f} in {r['totalSeconds']:.0f} s, "
                      f"window {base['window']} without it {base['secondHalf']['basePerplexity']:.3f} in {base['totalSeconds']:.0f} s "
                      "(second halves).\n")
else:
    targets.append(("Temp-LoRA: >= 10% lower perplexity on the second halves", None, "not measured in this run"))


def recipe_rows(rows, title, extra_cols):
    md.append(title)
    md.append("| step | attention | " + "".join(c + " | " for c, _ in extra_cols) + "ctx | scored from | perplexity | second half | s/window | tokens/s | passkey |")
    md.append("|---|---|" + "---|" * len(extra_cols) + "---|---|---|---|---|---|---|")
    for name, r in rows.items():
        pkc = r.get("passkey") or []
        pks = ", ".join(f"{c['length']}@{c['depth']:g}: {c['correct']}/{c['trials']}" for c in pkc) or "—"
        for L in r["lengths"]:
            md.append(f"| {name} | {r.get('attention', 'infini')} | " + "".join(f"{f(r)} | " for _, f in extra_cols)
                      + f"{L['ctx']} | {L['scoredFrom']} | {L['perplexity']:.3f} | {L['secondHalfPerplexity']:.3f} | "
                      f"{L['secondsPerWindow']:.0f} | {L['tokensPerSecond']:.0f} | {pks} |")
    md.append("")


# ---- Sparse attention fitted without training ----
sp = load_part("sparse")
if sp:
    recipe_rows(sp, "### Sparse attention fitted into the pretrained models without training\n\n"
                "Each full-attention layer replaced (Gemma 3's own sliding layers stay); the same first window of Job + Luke + "
                "Hebrews for every row of a model; passkey by teacher-forced greedy decoding (length@depth: right/trials).\n",
                [("model", lambda r: os.path.basename(r["model"]).split(".")[0].split("-q")[0])])

# ---- Infini-Attention fitted into SmolLM2 ----
inf = load_part("infini")
if inf:
    recipe_rows(inf, "### Infini-Attention fitted into SmolLM2 (LoRA + gates fine-tune)\n",
                [("segment", lambda r: r["segment"]), ("steps (tokens, minutes)", lambda r: f"{r['steps']} ({r['trainTokens']}, {r['trainMinutes']:.1f})"),
                 ("memory share", lambda r: f"{sum(r['memoryShare']) / len(r['memoryShare']):.3f}")])
    ref = pp.get("smol-none-8192") if pp else None
    if ref:
        for name, r in inf.items():
            md.append(f"Against exact attention at 8K on the first {ref['window'] * ref['windows']} tokens (`smol-none-8192`): "
                      f"{ref['perplexity']:.3f}; {name}: " + ", ".join(f"{L['perplexity']:.3f} at {L['ctx']}" for L in r["lengths"]) + ".\n")

# ---- Parts without a table of their own: their JSON files with their headline figures ----
known = {"perplexity", "gemma", "passkey", "temp-lora", "sparse", "infini"}
for part in sorted(set(s["part"] for s in RUN["steps"]) - known):
    rows = load_part(part)
    if not rows:
        continue
    md.append(f"### {part}\n")
    md.append("| step | figures |")
    md.append("|---|---|")
    for name, r in rows.items():
        figs = ", ".join(f"{k} {r[k]:.4g}" for k in ("meanLoss", "perplexity", "meanAccuracy") if isinstance(r.get(k), (int, float)))
        md.append(f"| {name} | {figs} |")
    md.append("")

head = ["## Targets\n", "| target | met | measured |", "|---|---|---|"]
for t, ok, fig in targets:
    head.append(f"| {t} | {'—' if ok is None else ('met' if ok else 'not met')} | {fig} |")
head.append("")
md = md[:2] + head + md[2:]
md.append("### Steps\n")
md.append("| step | seconds | estimate (min) | command |")
md.append("|---|---|---|---|")
for s in RUN["steps"]:
    t = TIMINGS.get(s["name"])
    md.append(f"| {s['name']} | {t['seconds']:.0f} | {t['estimateMinutes']:.1f} | `{s['command']}` |" if t else
              f"| {s['name']} | — | — | `{s['command']}` |")
write("results.md", "# The long-context recipe on pretrained models, measured\n\n" + "\n".join(md) + "\n")
print(f"wrote {OUT}/results.md")
