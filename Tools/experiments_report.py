#!/usr/bin/env python3
"""The report of `make experiments`: Markdown tables and SVG charts (no plotting library needed)
from experiments.json.

usage: experiments_report.py experiments.json OUTDIR"""
import json, math, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svg_charts  # noqa: E402

R = json.load(open(sys.argv[1]))
OUT = sys.argv[2]
os.makedirs(OUT, exist_ok=True)
P = R["parameters"]
W0 = P["W0"]
COLOURS = svg_charts.COLOURS


def write(name, text):
    tmp = os.path.join(OUT, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(OUT, name))


binned, line_chart, colour = svg_charts.binned, svg_charts.line_chart, svg_charts.colour


def heatmaps(pk):
    """One heatmap per model, in the style of `attn needle`: length across, depth down."""
    first = pk[list(pk)[0]]
    return svg_charts.heatmaps(pk, "Passkey retrieval: accuracy of the first generated number, by prompt length (bytes) and depth",
                               f"each model after the same {P['passkey_steps']}-step fine-tune on prompts of {P['passkey_lengths']} bytes; "
                               f"{first['trials']} keys per cell; chance 2e-5")


md = []
run = R["run"]
md.append(f"Run {run['date']}, commit {run['commit']}, {run['cpu']} ({run['cores']} cores), "
          f"{'QUICK' if R['quick'] else 'full'} mode, {R['seconds'] / 60:.1f} minutes (the sum of its steps). W0 = {W0} bytes.\n")

if "extension" in R:
    E = R["extension"]
    base = E["base@W0"]["mean"]
    md.append(f"### Context extension: pretrained at W0 = {W0}, evaluated at 4·W0 = {4 * W0}\n")
    md.append(f"Bits per byte on the held-out validation books, every model on the same bytes (spans of {4 * W0}; at W0 each "
              f"span is read as 4 independent windows). Fine-tunes: {P['ext_steps']} steps of {P['ext_batch']} × {4 * W0} bytes "
              f"({100 * P['ext_steps'] / P['pretrain_steps']:.1f}% of the pretraining steps, the same bytes per step) at the "
              f"peak learning rate after the @.\n")
    md.append("| model | window | bits/byte | vs RoPE base at W0 | last quarter of the window |")
    md.append("|---|---|---|---|---|")
    for k, v in E.items():
        c = v["curve"]
        q = len(c) // 4
        md.append(f"| {k} | {v['window']} | {v['mean']:.4f} | {v['mean'] - base:+.4f} | {sum(c[-q:]) / q:.4f} |")
    md.append("")
    # Each method without a fine-tune and with its best fine-tune, the base and ALiBi.
    keys = ["base@W0", "alibi@W0", "alibi@4W0"]
    for m in ["extrapolation", "linear x4", "ntk x4"]:
        keys.append(m)
        tuned = [k for k in E if k.startswith(m + " + fine-tune")]
        if tuned:
            keys.append(min(tuned, key=lambda k: E[k]["mean"]))
    series = [(k, binned(E[k]["curve"], max(8, W0 // 8))) for k in keys if k in E]
    top = min(2.6, max(y for _, p in series for _, y in p))
    write("context-extension.svg", line_chart(f"Bits per byte against position: pretrained at {W0}, read at {4 * W0} "
                                              f"(clipped at {top:.1f})", series, "position in the window (bytes)",
                                              "bits per byte", vlines=[(W0, "W0")], ymax=top))
    md.append("![context extension](context-extension.svg)\n")

if "infini" in R:
    I = R["infini"]
    md.append(f"### Infini-Attention fine-tuning over 8 segments of W0 = {W0}\n")
    md.append(f"Each from the RoPE base, {P['infini_steps']} steps of 1 × {8 * W0} bytes at the peak learning rate after the @. "
              "Every row reads the same bytes (spans of 8·W0). BigBird: blocks of "
              f"{P['bigbird_block']}, 3 window blocks, 2 random, 1 global; BigBird and exact with NTK-aware RoPE ×8; Infini's gates β at 100× the learning rate. "
              "One segment: the same model on windows of W0 (its memory empty).\n")
    md.append("| model | window | bits/byte |")
    md.append("|---|---|---|")
    for k, v in I.items():
        md.append(f"| {k} | {v['window']} | {v['mean']:.4f} |")
    md.append("")
    series = [(k, binned(v["curve"], max(16, W0 // 4))) for k, v in I.items() if v["window"] > W0]
    write("infini.svg", line_chart(f"Bits per byte against position over 8 segments of {W0}", series,
                                   "position (bytes)", "bits per byte", vlines=[(W0 * i, "") for i in range(1, 8)]))
    md.append("![infini](infini.svg)\n")

if "passkey" in R:
    K = R["passkey"]
    first = next(iter(K.values()))
    md.append("### Passkey retrieval\n")
    md.append(f"Accuracy of the first generated number, after {P['passkey_steps']} fine-tune steps on prompts of "
              f"{P['passkey_lengths']} bytes; {first['trials']} keys per (length, depth), depths {P['passkey_depths']}.\n")
    md.append("| model | " + " | ".join(f"{L} bytes" for L in first["lengths"]) + " | mean |")
    md.append("|---|" + "---|" * (len(first["lengths"]) + 1))
    for k, v in K.items():
        rows = [sum(r) / len(r) for r in v["accuracy"]]
        md.append(f"| {k} | " + " | ".join(f"{a:.2f}" for a in rows) + f" | {v['mean']:.2f} |")
    md.append("")
    write("passkey.svg", heatmaps(K))
    md.append("![passkey](passkey.svg)\n")

if "templora" in R:
    T = R["templora"]
    md.append("### Temp-LoRA on the held-out long books\n")
    md.append(f"Chunks of {P['temp_chunk']} bytes, {P['temp_epochs']} epochs per chunk, r = {P['temp_rank']}, "
              f"α = {2 * P['temp_rank']} on every linear layer, learning rate {P['temp_lr']} constant. "
              "Perplexity reduction = 1 − 2^(bits/byte with − without).\n")
    md.append("| run | text | context window | bits/byte with Temp-LoRA | without | perplexity lower (all) | second half: with | without | lower |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for k, v in T.items():
        for t in v["texts"] + [dict(name="all", all=v["all"], secondHalf=v["secondHalf"])]:
            a, s = t["all"], t["secondHalf"]
            md.append(f"| {k} | {t['name']} | {v['window']} | {a['adaptedBitsPerByte']:.4f} | {a['baseBitsPerByte']:.4f} | "
                      f"{100 * a['perplexityReduction']:.1f}% | {s['adaptedBitsPerByte']:.4f} | {s['baseBitsPerByte']:.4f} | "
                      f"{100 * s['perplexityReduction']:.1f}% |")
    md.append("")
    md.append("| run | training added | scoring | ratio |")
    md.append("|---|---|---|---|")
    for k, v in T.items():
        ratio = v["trainingSeconds"] / v["scoringSeconds"] if v["scoringSeconds"] > 0 else float("nan")
        md.append(f"| {k} | {v['trainingSeconds']:.0f} s | {v['scoringSeconds']:.0f} s | {ratio:.1f}× |")
    md.append("")
    main, short = T.get("temp-lora"), T.get("temp-lora-short")
    if main and short:
        # The paper's cheaper setting, on the books the short run read: its second halves with
        # Temp-LoRA against the main run's (longer window) second halves without.
        names = [t["name"] for t in short["texts"]]
        longer = [t for t in main["texts"] if t["name"] in names]
        def mean(texts, key):
            n = sum(t["secondHalf"]["tokens"] for t in texts)
            return sum(t["secondHalf"][key] * t["secondHalf"]["tokens"] for t in texts) / n
        a, b = mean(short["texts"], "adaptedBitsPerByte"), mean(longer, "baseBitsPerByte")
        md.append(f"The cheaper setting ({', '.join(names)}, second half): a {short['window']}-byte window with Temp-LoRA reads at "
                  f"{a:.4f} bits/byte, a {main['window']}-byte window without it at {b:.4f} (perplexity "
                  f"{100 * (1 - 2 ** (a - b)):.1f}% lower with the short window and Temp-LoRA).\n")
    if main:
        series = []
        for t in main["texts"]:
            g = [b - a for a, b in zip(t["adapted"], t["base"])]
            w = max(1, len(g) // 40)
            series.append((t["name"], [(i + w / 2, sum(g[i:i + w]) / len(g[i:i + w])) for i in range(0, len(g), w)]))
        write("temp-lora.svg", line_chart("Temp-LoRA: bits per byte saved per chunk (moving mean)", series,
                                          "chunk", "bits/byte without − with"))
        md.append("![temp-lora](temp-lora.svg)\n")

write("results.md", "\n".join(md) + "\n")
print(f"wrote {OUT}/results.md and its charts")
