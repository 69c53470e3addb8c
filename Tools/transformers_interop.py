#!/usr/bin/env python3
"""Checkpoints both ways between this project and Hugging Face transformers (needs torch and
transformers; not part of `make test`: `make compare` runs it when they are importable).

1. A checkpoint this project wrote (argument 1) loads with AutoModelForCausalLM.from_pretrained and
   gives the logits `attn lm eval` gives, to float32 rounding.
2. transformers writes a checkpoint of its own (random LlamaForCausalLM and MixtralForCausalLM),
   `attn lm eval` loads it and gives transformers' logits.

usage: transformers_interop.py ATTN_BINARY CHECKPOINT_DIR [CHECKPOINT_DIR ...]"""
import json, os, subprocess, sys, tempfile
import numpy as np
import torch
import transformers

attn, checkpoints = sys.argv[1], sys.argv[2:]
failed = passed = 0

def attn_logits(model_dir, tokens, tmp):
    np.save(os.path.join(tmp, "tokens.npy"), tokens.astype(np.int32))
    out = os.path.join(tmp, "logits.npy")
    subprocess.run([attn, "lm", "eval", "--model", model_dir, "--tokens", os.path.join(tmp, "tokens.npy"), "--logits", out], check=True)
    return np.load(out)

def report(name, ours_logits, theirs):
    global failed
    err = float(np.max(np.abs(ours_logits - theirs))) / max(1.0, float(np.max(np.abs(theirs))))
    global passed
    ok = err < 1e-4
    failed += not ok
    passed += ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: relative max error {err:.2e}")

with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(0)
    for ours in checkpoints:
        cfg = json.load(open(os.path.join(ours, "config.json")))
        tokens = rng.integers(0, cfg["vocab_size"], size=(2, 64))
        m = transformers.AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = m(torch.tensor(tokens)).logits.numpy()
        report(f"our checkpoint {os.path.basename(ours.rstrip('/'))} ({cfg['model_type']}) in transformers", attn_logits(ours, tokens, tmp), theirs)

    for name, conf in [
        ("transformers LlamaForCausalLM", transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80,
            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False)),
        ("transformers MixtralForCausalLM", transformers.MixtralConfig(vocab_size=97, hidden_size=48, intermediate_size=40,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)),
    ]:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(conf, dtype=torch.float32).eval()
        d = os.path.join(tmp, name.split()[1])
        model.save_pretrained(d)
        tokens = rng.integers(0, 97, size=(2, 33))
        with torch.no_grad():
            theirs = model(torch.tensor(tokens)).logits.numpy()
        report(name + " in attn", attn_logits(d, tokens, tmp), theirs)
    # 3. An adapter this project writes loads in PEFT on the same base and gives our logits.
    try:
        import peft
    except ImportError:
        peft = None
    if peft is not None and checkpoints:
        base = checkpoints[0]
        adir = os.path.join(tmp, "adapter")
        subprocess.run([attn, "lm", "lora-init", "--model", base, "--out", adir, "--rank", "4", "--alpha", "8",
                        "--targets", "q_proj,v_proj,down_proj", "--random-b", "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
        cfg = json.load(open(os.path.join(base, "config.json")))
        tokens = rng.integers(0, cfg["vocab_size"], size=(2, 40))
        m = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        m = peft.PeftModel.from_pretrained(m, adir).eval()
        with torch.no_grad():
            theirs = m(torch.tensor(tokens)).logits.numpy()
        np.save(os.path.join(tmp, "tokens.npy"), tokens.astype(np.int32))
        out = os.path.join(tmp, "logits.npy")
        subprocess.run([attn, "lm", "eval", "--model", base, "--adapter", adir, "--tokens", os.path.join(tmp, "tokens.npy"),
                        "--logits", out], check=True)
        report("our LoRA adapter in PEFT", np.load(out), theirs)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
