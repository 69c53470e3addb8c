#!/usr/bin/env python3
"""One passkey prompt, this engine against llama.cpp, teacher-forced on the answer.

usage: passkey_llama_cpp.py --attn PATH --model M.gguf --prompt passkey-L-DEPTH-KEY.npy [--threads N] [--out DIR]

The prompt is the engine's own (`attn lm passkey ... --prompts-out DIR` writes each prompt's ids), so
both engines read exactly the same token ids. The answer " KEY." is tokenized by llama.cpp and appended;
then for each answer position (the last prompt token's prediction, then each answer token's):
  - llama.cpp (llama-cpp-python, default context settings: f16 KV cache) evaluates the prompt in
    batches of 512 and the answer one token at a time, reading the last row's logits each time;
  - this engine runs `attn lm eval --last K` on the same ids (prefill, then one token at a time, as
    generation computes them) with --matmul fast and with --matmul exact.
It prints, per answer token, the probability each gives the right token and each one's top-3 (greedy
generation follows the top-1), and the largest |log p| difference over llama.cpp's top 20.
A peer check for the README's passkey rows, never a test: llama-cpp-python is not a dependency.
"""
import argparse, os, subprocess, sys, tempfile
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--attn", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--prompt", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default=None, help="keep the logits here (default: a temporary directory)")
a = ap.parse_args()

try:
    import llama_cpp
    from llama_cpp import Llama
except ImportError:
    sys.exit("llama_cpp does not import (pip install llama-cpp-python)")

key = int(os.path.basename(a.prompt).rsplit(".", 1)[0].rsplit("-", 1)[1])
prompt = np.load(a.prompt).astype(np.int64).tolist()
out = a.out or tempfile.mkdtemp(prefix="passkey-peer-")
os.makedirs(out, exist_ok=True)

llm = Llama(model_path=a.model, n_ctx=len(prompt) + 32, n_batch=512, n_threads=a.threads, logits_all=False, verbose=False)
answer = llm.tokenize(f" {key}.".encode(), add_bos=False, special=False)
V = llm.n_vocab()


def last_row():
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(V,)).astype(np.float64)


llm.eval(prompt)
rows = [last_row()]
for t in answer[:-1]:
    llm.eval([t])
    rows.append(last_row())
peer = np.stack(rows)   # [K, V]: row j predicts answer[j]
K = len(answer)

teacher = os.path.join(out, "teacher.npy")
np.save(teacher, np.array(prompt + answer[:-1], dtype=np.int32))
ours = {}
for mode in ("fast", "exact"):
    f = os.path.join(out, f"attn-{mode}.npy")
    subprocess.run([a.attn, "lm", "eval", "--model", a.model, "--matmul", mode, "--tokens", teacher, "--last", str(K),
                    "--logits", f, "--threads", str(a.threads)], check=True)
    ours[mode] = np.load(f).reshape(K, -1).astype(np.float64)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def piece(i):
    return llm.detokenize([int(i)]).decode("utf-8", "replace")


lp = {"llama.cpp": log_softmax(peer), **{f"attn {m}": log_softmax(z) for m, z in ours.items()}}
print(f"{os.path.basename(a.prompt)}: {len(prompt)} prompt tokens, answer {[piece(t) for t in answer]}")
for name, l in lp.items():
    cells = [f"{piece(t)!r} p={np.exp(l[j, t]):.3f} top {[piece(i) for i in np.argsort(-l[j])[:3]]}" for j, t in enumerate(answer)]
    print(f"{name:>10}: " + " | ".join(cells))
for name in ("attn fast", "attn exact"):
    d = [float(np.abs((lp[name] - lp["llama.cpp"])[j][np.argsort(-peer[j])[:20]]).max()) for j in range(K)]
    same = all(int(lp[name][j].argmax()) == int(peer[j].argmax()) for j in range(K))
    print(f"{name} against llama.cpp: top-1 {'the same' if same else 'differs'} at every answer position; "
          f"max |d log p| over llama.cpp's top 20: {', '.join(f'{x:.2f}' for x in d)}")
