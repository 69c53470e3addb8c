#!/usr/bin/env python3
"""Writes the GGUF dequantisation fixtures of Tests/AttentionTensorTests (GGUFTests.swift).

For every type the Swift reader dequantises, a few blocks -- random bytes, blocks quantised from
random floats by gguf-py where it can quantise, and hand-built blocks with extreme scales (largest
and smallest normal f16, subnormals, +-0, negative, inf, NaN) over quant bytes of all zeros, all
ones and random -- and their float32 dequantisation by `gguf.quants.dequantize` (Python's `gguf`
package, which computes what ggml's reference dequantize_row_* does):

    Fixtures/gguf/<type>.blocks   the packed blocks
    Fixtures/gguf/<type>.f32      the values, float32 little-endian

With the two real models present (data/models of the main checkout, or paths given with --models),
also Fixtures/gguf/models/<model>.json: tensor count, architecture, a few metadata values, every
tensor's name, type, shape and absolute offset, and for a few tensors (one per type) the dequantised
first and last two rows (<model>.<tensor>.f32) and, for tensors of at most 4M elements, a checksum of
the whole tensor's float32 bits (sum of the bits, and sum of bits * (index + 1), both mod 2^64).

Usage: python3 Tools/make_gguf_fixtures.py [--models DIR]
"""
import argparse, json, os, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "AttentionTensorTests", "Fixtures", "gguf")

# (type, block elements, block bytes, byte offsets of its f16 scale fields, gguf-py quantises it)
TYPES = [
    (T.F32, 1, 4, [], True), (T.F16, 1, 2, [], True), (T.BF16, 1, 2, [], True),
    (T.Q4_0, 32, 18, [0], True), (T.Q4_1, 32, 20, [0, 2], True), (T.Q5_0, 32, 22, [0], True),
    (T.Q5_1, 32, 24, [0, 2], True), (T.Q8_0, 32, 34, [0], True),
    (T.Q2_K, 256, 84, [80, 82], False), (T.Q3_K, 256, 110, [108], False), (T.Q4_K, 256, 144, [0, 2], False),
    (T.Q5_K, 256, 176, [0, 2], False), (T.Q6_K, 256, 210, [208], False),
]

SPECIAL_F16 = [0x7BFF, 0xFBFF, 0x0400, 0x0001, 0x03FF, 0x8001, 0x0000, 0x8000, 0xBC00, 0x3C00, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE12]
SPECIAL_F32 = [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
               0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345, 0x3F800000, 0xBF800000]


def checksum(values: np.ndarray) -> tuple[int, int]:
    bits = values.reshape(-1).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        s1 = int(bits.sum(dtype=np.uint64))
        s2 = int((bits * (np.arange(bits.size, dtype=np.uint64) + np.uint64(1))).sum(dtype=np.uint64))
    return s1, s2


def blocks_for(qtype, elems, size, scales, can_quantize, rng):
    out = []
    # Random bytes.
    for _ in range(4 if elems > 1 else 256):
        out.append(rng.integers(0, 256, size, dtype=np.uint8))
    # Quantised from random floats (realistic scales).
    if can_quantize and qtype not in (T.F32, T.F16, T.BF16):
        x = (rng.standard_normal(elems * 4) * rng.choice([1e-3, 1.0, 300.0])).astype(np.float32)
        out.extend(list(quantize(x, qtype).reshape(4, size)))
    if qtype == T.F32:
        out.append(np.array(SPECIAL_F32, dtype=np.uint32).view(np.uint8).copy())
        return out
    if qtype in (T.F16, T.BF16):
        out.append(np.array(SPECIAL_F16 + [0x0080, 0x8080, 0x007F, 0x7F80, 0xFF81], dtype=np.uint16).view(np.uint8).copy())
        return out
    # Hand-built: each special scale (the second scale field, if any, set to a different special
    # one, so negative mins and mixed specials appear) over three fills of the other bytes.
    fills = [lambda: np.zeros(size, np.uint8), lambda: np.full(size, 0xFF, np.uint8), lambda: rng.integers(0, 256, size, dtype=np.uint8)]
    specials = SPECIAL_F16 if elems == 32 else SPECIAL_F16[:10] + [0x7C00, 0x7E00]
    for i, s in enumerate(specials):
        for f in (fills if elems == 32 or i % 2 == 0 else fills[1:2]):
            b = f()
            for j, off in enumerate(scales):
                v = s if j == 0 else specials[(i * 7 + 3) % len(specials)] ^ 0x8000
                b[off:off + 2] = np.array([v], dtype=np.uint16).view(np.uint8)
            out.append(b)
    return out


def write_synthetic(rng):
    os.makedirs(OUT, exist_ok=True)
    for qtype, elems, size, scales, can_q in TYPES:
        blocks = np.concatenate(blocks_for(qtype, elems, size, scales, can_q, rng)).astype(np.uint8)
        if qtype in (T.F32, T.F16, T.BF16):
            blocks = blocks[: blocks.size // size * size]
        values = dequantize(blocks, qtype).astype(np.float32, copy=False).reshape(-1)
        assert values.size == blocks.size // size * elems
        name = qtype.name.lower().replace("_k", "_K")
        blocks.tofile(os.path.join(OUT, name + ".blocks"))
        values.tofile(os.path.join(OUT, name + ".f32"))
        print(f"{name}: {blocks.size // size} blocks, {values.size} values")


def write_model(path, picks):
    reader = gguf.GGUFReader(path)
    model = os.path.basename(path).removesuffix(".gguf")
    outdir = os.path.join(OUT, "models")
    os.makedirs(outdir, exist_ok=True)
    f = reader.fields
    tokens = f["tokenizer.ggml.tokens"]
    info = {
        "file": os.path.basename(path),
        "version": int(f["GGUF.version"].contents()),
        "tensor_count": len(reader.tensors),
        "kv_count": len(f) - 3,   # gguf-py adds GGUF.version, GGUF.tensor_count, GGUF.kv_count
        "architecture": f["general.architecture"].contents(),
        "token_count": len(tokens.data),
        "first_tokens": [tokens.contents(i) for i in range(8)],
        "last_token": tokens.contents(len(tokens.data) - 1),
        "tensors": [{"name": t.name, "type": int(t.tensor_type), "shape": [int(d) for d in t.shape],
                     "offset": int(t.data_offset), "bytes": int(t.n_bytes)} for t in reader.tensors],
        "checked": [],
    }
    if "tokenizer.ggml.scores" in f:
        s = f["tokenizer.ggml.scores"]
        info["first_scores_bits"] = [int(np.float32(s.contents(i)).view(np.uint32)) for i in range(8)]
    by_name = {t.name: t for t in reader.tensors}
    for name in picks:
        t = by_name[name]
        row_len = int(t.shape[0])
        rows = int(np.prod([int(d) for d in t.shape[1:]])) if len(t.shape) > 1 else 1
        raw = np.asarray(t.data).view(np.uint8).reshape(rows, -1)
        pick = sorted(set([0, 1, rows - 2, rows - 1]) & set(range(rows)))
        values = dequantize(raw[pick], t.tensor_type).astype(np.float32).reshape(len(pick), row_len)
        fname = f"{model}.{name}.f32"
        values.tofile(os.path.join(outdir, fname))
        entry = {"name": name, "type": int(t.tensor_type), "rows": pick, "values": fname}
        if rows * row_len <= 4 << 20:
            entry["checksum"] = [str(c) for c in checksum(dequantize(raw, t.tensor_type).astype(np.float32))]
        info["checked"].append(entry)
        print(f"{model}: {name} ({t.tensor_type.name}) rows {pick}")
    with open(os.path.join(outdir, model + ".json"), "w") as fh:
        json.dump(info, fh, indent=1, ensure_ascii=False)


def main():
    np.seterr(all="ignore")   # inf and NaN scales are meant
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(os.path.dirname(ROOT), "main", "data", "models"))
    args = ap.parse_args()
    write_synthetic(np.random.default_rng(20250601))
    picks = {
        "SmolLM2-135M-Instruct.Q4_1.gguf": ["blk.0.ffn_down.weight", "token_embd.weight", "blk.0.attn_norm.weight", "blk.29.attn_q.weight"],
        "gemma-3-270m-q4_k_m.gguf": ["blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.0.attn_k.weight",
                                     "blk.0.attn_v.weight", "token_embd.weight", "output_norm.weight"],
    }
    for fname, names in picks.items():
        path = os.path.join(args.models, fname)
        if os.path.exists(path):
            write_model(path, names)
        else:
            print(f"skipping {fname}: not in {args.models}", file=sys.stderr)


if __name__ == "__main__":
    main()
