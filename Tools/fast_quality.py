#!/usr/bin/env python3
"""The fast path's quality on the real GGUF models (make compare-llama-cpp): `--matmul fast` against
`--matmul exact`, both of this engine, and llama.cpp's own against exact when llama-cpp-python imports.

  - perplexity on 4,096-token chunks of the book of Job (held out: data/kjv.txt, verses without their
    references), `attn lm ppl --ctx 4096`: fast steps each chunk through the KV cache 16 tokens at a time,
    so every product takes the integer kernels; --chunks limits the chunks (default 2);
  - top-1 agreement with exact over the positions of the reference logits cases
    (SHARED/reference-pretrained/logits_*: `attn lm eval --logits` under both modes), and over all their positions.
Writes --json. Neither peer is a dependency of the library or its tests.
"""
import argparse, json, os, re, subprocess, sys, tempfile
import numpy as np

CASES = [("SmolLM2-135M-Instruct.Q4_1.gguf", "logits_smollm2"), ("gemma-3-270m-q4_k_m.gguf", "logits_gemma3")]


def ppl(attn, model, text, ctx, matmul, tmp):
    out = os.path.join(tmp, "ppl.json")
    subprocess.run([attn, "lm", "ppl", "--model", model, "--text-file", text, "--ctx", str(ctx), "--matmul", matmul, "--json", out],
                   check=True, capture_output=True, text=True)
    return json.load(open(out))["perplexity"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--models", default="data/models")
    ap.add_argument("--corpus", default="data/kjv.txt")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--json", default="results/lm-real/fast-quality.json")
    a = ap.parse_args()
    job = "\n".join(l.split(" ", 1)[1].strip() for l in open(a.corpus, encoding="utf-8") if re.match(r"^Job\d+:\d+ ", l)) + "\n"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for file, case in CASES:
            model = os.path.join(a.models, file)
            if not os.path.exists(model):
                print(f"{file}: missing (make models)"); continue
            # The first --chunks chunks of Job: enough text for them (about 4 bytes per token), cut at a verse.
            text = os.path.join(tmp, "job.txt")
            budget = a.ctx * a.chunks * 5
            open(text, "w", encoding="utf-8").write(job[:job.rfind("\n", 0, budget) + 1] if len(job) > budget else job)
            exact, fast = ppl(a.attn, model, text, a.ctx, "exact", tmp), ppl(a.attn, model, text, a.ctx, "fast", tmp)
            row = {"model": file.rsplit(".", 1)[0], "ctx": a.ctx, "text": "Job", "pplExact": exact, "pplFast": fast,
                   "pplChange": fast / exact - 1}
            d = os.path.join(a.shared, "reference-pretrained", case)
            if os.path.isdir(d):
                toks, pos = os.path.join(d, "tokens.npy"), np.load(os.path.join(d, "positions.npy"))
                z = {}
                for m in ("exact", "fast"):
                    out = os.path.join(tmp, f"{m}.npy")
                    subprocess.run([a.attn, "lm", "eval", "--model", model, "--tokens", toks, "--logits", out, "--matmul", m],
                                   check=True, capture_output=True, text=True)
                    z[m] = np.load(out)[0].argmax(-1)
                row.update(top1Positions=len(pos), top1AtPositions=float((z["exact"][pos] == z["fast"][pos]).mean()),
                           top1AllPositions=float((z["exact"] == z["fast"]).mean()), top1AllCount=int(len(z["exact"])))
                try:
                    from llama_cpp import Llama
                    ids = np.load(toks)[0]
                    llm = Llama(model_path=model, n_ctx=len(ids) + 8, logits_all=True, verbose=False, n_threads=os.cpu_count() or 1)
                    llm.eval([int(t) for t in ids])
                    l = np.array(llm.scores[:len(ids)]).argmax(-1)
                    row.update(llamaCppTop1AtPositions=float((z["exact"][pos] == l[pos]).mean()),
                               llamaCppTop1AllPositions=float((z["exact"] == l).mean()))
                except ImportError:
                    pass
            print(json.dumps(row), flush=True)
            rows.append(row)
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    json.dump(rows, open(a.json + ".tmp", "w"), indent=1)
    os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
