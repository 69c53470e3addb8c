#!/usr/bin/env python3
"""Expected RoPE inverse frequencies for the context-extension tests, in float64.

The formulas are transformers' `_compute_*_parameters` (src/transformers/modeling_rope_utils.py),
written out here with `math` so the fixture needs neither torch nor transformers: default, linear,
dynamic NTK (the base recomputed from the sequence length, as `dynamic_rope_update` does when the
length exceeds max_position_embeddings), YaRN (beta_fast 32, beta_slow 1, truncate, attention
factor 0.1·ln(factor) + 1) and llama3. Writes Tests/ReferenceData/rope_transformers.json.

usage: python3 Tools/rope_reference.py [--out PATH]
"""
import argparse, json, math, os

def default(dim, base):
    return [1.0 / base ** (i / dim) for i in range(0, dim, 2)]

def linear(dim, base, factor):
    return [f / factor for f in default(dim, base)]

def dynamic(dim, base, factor, max_pos, seq_len):
    seq_len = seq_len if seq_len > max_pos else max_pos
    b = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return default(dim, b)

def yarn(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0, truncate=True):
    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
    attention_factor = get_mscale(factor)
    def correction_dim(rot):
        return (dim * math.log(original / (rot * 2 * math.pi))) / (2 * math.log(base))
    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = [base ** (i / dim) for i in range(0, dim, 2)]
    out = []
    for i, p in enumerate(pos_freqs):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extrapolation_factor = 1 - ramp
        out.append((1 / (factor * p)) * (1 - extrapolation_factor) + (1 / p) * extrapolation_factor)
    return out, attention_factor

def llama3(dim, base, factor, low_freq_factor, high_freq_factor, original):
    low_wavelen, high_wavelen = original / low_freq_factor, original / high_freq_factor
    out = []
    for f in default(dim, base):
        wavelen = 2 * math.pi / f
        if wavelen > low_wavelen:
            out.append(f / factor)
        elif wavelen < high_wavelen:
            out.append(f)
        else:
            smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "ReferenceData",
                                              "rope_transformers.json"))
args = ap.parse_args()
cases = []
# SmolLM2-135M (head_dim 64, rope_theta 100000, 8K) and Gemma 3's full layers (256, 1e6, 32K).
for dim, base, ctx in [(64, 100000.0, 8192), (256, 1000000.0, 32768)]:
    cases.append(dict(name=f"default d{dim}", type="default", dim=dim, base=base, inv_freq=default(dim, base), attention_factor=1.0))
    for f in [2.0, 4.0]:
        cases.append(dict(name=f"linear x{f:g} d{dim}", type="linear", factor=f, dim=dim, base=base,
                          inv_freq=linear(dim, base, f), attention_factor=1.0))
        for L in [ctx // 2, ctx, 2 * ctx, 4 * ctx]:
            cases.append(dict(name=f"dynamic x{f:g} d{dim} L{L}", type="dynamic", factor=f, dim=dim, base=base, max_position_embeddings=ctx,
                              seq_len=L, inv_freq=dynamic(dim, base, f, ctx, L), attention_factor=1.0))
        inv, att = yarn(dim, base, f, ctx)
        cases.append(dict(name=f"yarn x{f:g} d{dim}", type="yarn", factor=f, dim=dim, base=base, original_max_position_embeddings=ctx,
                          inv_freq=inv, attention_factor=att))
    cases.append(dict(name=f"llama3 x8 d{dim}", type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, dim=dim, base=base,
                      original_max_position_embeddings=ctx, inv_freq=llama3(dim, base, 8.0, 1.0, 4.0, ctx), attention_factor=1.0))
os.makedirs(os.path.dirname(args.out), exist_ok=True)
with open(args.out + ".tmp", "w") as f:
    json.dump(dict(source="transformers modeling_rope_utils formulas, float64 (Tools/rope_reference.py)", cases=cases), f, indent=1)
os.replace(args.out + ".tmp", args.out)
print(f"{len(cases)} cases -> {args.out}")
