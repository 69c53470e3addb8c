#!/usr/bin/env python3
"""make compare-pretrained, second half: the Hugging Face folder path on the same two models.

transformers dequantises each GGUF in data/models and the weights are saved as a bf16 Hugging Face folder
(config.json in transformers' own style — Gemma3ForCausalLM's `gemma3_text`, per-layer-type rope_parameters —,
model.safetensors, tokenizer.json, tokenizer_config.json with the chat template). Then, through the folder:
  - `attn lm eval` logits of the reference-pretrained tokens against float64 transformers on the same folder;
  - `attn lm tokenize` (tokenizer.json) on the 20 reference texts against the expected ids;
  - `attn lm generate --chat` (the template from tokenizer_config.json) greedy, printed.
Needs torch, transformers, accelerate, safetensors (never a dependency of the library or its tests).
"""
import argparse, json, os, subprocess, sys, tempfile
import numpy as np

CASES = [("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"), ("gemma-3-270m-q4_k_m.gguf", "gemma3")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--models", default="data/models")
    ap.add_argument("--shared", default="../shared")
    a = ap.parse_args()
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        print(f"Hugging Face folder check skipped: {e.name} not importable")
        return 0
    ref = os.path.join(a.shared, "reference-pretrained")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for file, short in CASES:
            path = os.path.join(a.models, file)
            if not os.path.exists(path):
                print(f"{file}: missing (make models)"); continue
            out = os.path.join(tmp, short)
            os.makedirs(out)
            tok = AutoTokenizer.from_pretrained(a.models, gguf_file=file)
            model = AutoModelForCausalLM.from_pretrained(a.models, gguf_file=file, dtype=torch.float32)
            sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
            if model.config.tie_word_embeddings:
                sd.pop("lm_head.weight", None)
            save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            config["dtype"] = "bfloat16"
            json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
            tok.save_pretrained(out)
            del model
            case = os.path.join(ref, f"logits_{short}")
            tokens = os.path.join(case, "tokens.npy")
            logits = os.path.join(tmp, "logits.npy")
            r = subprocess.run([a.attn, "lm", "eval", "--model", out, "--tokens", tokens, "--logits", logits], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{short} folder: attn lm eval failed: {r.stderr.strip()[-300:]}"); bad += 1; continue
            ours = np.load(logits).astype(np.float64)
            ref64 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
            with torch.no_grad():
                expected = ref64(torch.tensor(np.load(tokens).astype(np.int64))).logits.numpy()
            del ref64
            err = float(np.abs(ours - expected).max() / max(1.0, np.abs(expected).max()))
            top1 = float((ours.argmax(-1) == expected.argmax(-1)).mean())
            ok = err <= 1e-3
            bad += not ok
            print(f"{'PASS' if ok else 'FAIL'} {short} folder ({config['model_type']}, bf16): logits within {err:.2e} of float64 transformers, top-1 {top1:.0%}")
            same = total = 0
            for c in sorted(d for d in os.listdir(ref) if d.startswith(f"tok_{short}_")):
                ids = os.path.join(tmp, "ids.npy")
                r = subprocess.run([a.attn, "lm", "tokenize", "--model", out, "--text-file", os.path.join(ref, c, "text.txt"), "-o", ids],
                                   capture_output=True, text=True)
                exp = np.load(os.path.join(ref, c, "expected_ids.npy"))
                total += 1
                same += r.returncode == 0 and np.array_equal(np.load(ids).reshape(-1), exp.reshape(-1))
            bad += same != total
            print(f"{'PASS' if same == total else 'FAIL'} {short} folder: tokenizer.json gives the reference ids on {same} of {total} texts")
            if short == "smollm2":
                r = subprocess.run([a.attn, "lm", "generate", "--model", out, "--chat", "--prompt", "What is the capital of France?",
                                    "--max-tokens", "32"], capture_output=True, text=True)
                print(f"{short} folder, --chat (template from chat_template.jinja or tokenizer_config.json): {r.stdout.strip()!r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
