#!/usr/bin/env python3
"""make compare-pretrained: perplexity of the real GGUF models here, in transformers and in llama.cpp.

For each model in data/models, on the first BYTES bytes of a text (default: 12 KB of data/kjv.txt) at a
context of CTX, prints the perplexity of
  - `attn lm ppl` (the exact path: dequantised weights, float32 products);
  - transformers on the same GGUF dequantised (float32; --float64 for float64), with llama.cpp's chunking
    (tokenize once with BOS when the model adds it; chunks of CTX; first token of each chunk -> BOS; score
    positions CTX/2+1 .. CTX-1), when torch and transformers import;
  - llama.cpp through llama-cpp-python (its own perplexity rule, quantised activations), when it imports.
Neither peer is a dependency of the library or its tests. Writes --json with every figure measured.
"""
import argparse, json, math, os, subprocess, sys, tempfile, time

MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]


def chunked_nll(logits_fn, tokens, ctx, bos):
    import numpy as np
    total, count = 0.0, 0
    for i in range(len(tokens) // ctx):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        if bos is not None:
            chunk[0] = bos
        z = logits_fn(chunk).astype(np.float64)   # [ctx, V]
        first = ctx // 2
        for j in range(first, ctx - 1):
            row = z[j]
            m = row.max()
            total += m + math.log(np.exp(row - m).sum()) - row[chunk[j + 1]]
            count += 1
    return math.exp(total / count), count


def transformers_ppl(path, text, ctx, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=dtype).eval()
    ids = tok(text, add_special_tokens=True)["input_ids"]
    adds_bos = tok.bos_token_id is not None and len(ids) > 0 and ids[0] == tok.bos_token_id
    torch.set_num_threads(os.cpu_count() or 1)

    def logits(chunk):
        with torch.no_grad():
            return model(torch.tensor([chunk])).logits[0].to(torch.float64).numpy()
    t0 = time.time()
    ppl, n = chunked_nll(logits, ids, ctx, tok.bos_token_id if adds_bos else None)
    return {"perplexity": ppl, "scored": n, "seconds": time.time() - t0, "tokens": len(ids)}


def llama_cpp_ppl(path, text, ctx):
    import numpy as np
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=ctx, logits_all=True, verbose=False, n_threads=os.cpu_count() or 1)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true",
                       special=True)
    bos = llm.token_bos() if llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true" else None

    def logits(chunk):
        llm.reset()
        llm.eval(chunk)
        return np.array(llm.scores[:len(chunk)], dtype=np.float64)
    t0 = time.time()
    ppl, n = chunked_nll(logits, ids, ctx, bos)
    return {"perplexity": ppl, "scored": n, "seconds": time.time() - t0, "tokens": len(ids)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--models", default="data/models")
    ap.add_argument("--text", default="data/kjv.txt")
    ap.add_argument("--bytes", type=int, default=12 * 1024)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--json", default="results/compare/pretrained.json")
    a = ap.parse_args()
    raw = open(a.text, "rb").read()[:a.bytes]
    text = raw.decode("utf-8", errors="ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sample = os.path.join(tmp, "text.txt")
        open(sample, "w", encoding="utf-8").write(text)
        for name in MODELS:
            path = os.path.join(a.models, name)
            if not os.path.exists(path):
                print(f"{name}: missing (make models)")
                continue
            out = os.path.join(tmp, "ppl.json")
            t0 = time.time()
            r = subprocess.run([a.attn, "lm", "ppl", "--model", path, "--text-file", sample, "--ctx", str(a.ctx), "--json", out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: attn lm ppl failed: {r.stderr.strip()[-300:]}")
                continue
            ours = json.load(open(out))
            row = {"model": name, "ctx": a.ctx, "bytes": a.bytes, "attn": ours["perplexity"], "attnSeconds": time.time() - t0}
            line = f"{name}: attn {ours['perplexity']:.4f}"
            try:
                import torch
                t = transformers_ppl(path, text, a.ctx, torch.float64 if a.float64 else torch.float32)
                row["transformers"] = t["perplexity"]
                row["transformersSeconds"] = t["seconds"]
                line += f", transformers {t['perplexity']:.4f} ({(ours['perplexity'] / t['perplexity'] - 1) * 100:+.2f}%)"
            except ImportError:
                line += ", transformers not importable"
            try:
                l = llama_cpp_ppl(path, text, a.ctx)
                row["llama.cpp"] = l["perplexity"]
                row["llamaCppSeconds"] = l["seconds"]
                line += f", llama.cpp {l['perplexity']:.4f}"
            except ImportError:
                line += ", llama-cpp-python not importable"
            print(line, flush=True)
            rows.append(row)
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        json.dump(rows, open(a.json + ".tmp", "w"), indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
