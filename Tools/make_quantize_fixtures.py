#!/usr/bin/env python3
"""Writes the quantisation fixtures of Tests/AttentionTensorTests (GGUFTests.swift): floats and the
blocks Python's `gguf` package quantises them into (gguf.quants.quantize, which follows ggml's
reference quantize_row_*_ref), for the types GGMLType.quantize writes (q8_0, q4_0):

    Fixtures/gguf/quantize-<type>.f32      the input floats, float32 little-endian
    Fixtures/gguf/quantize-<type>.blocks   the packed blocks

The floats: normal, uniform and heavy-tailed random blocks, and hand-built ones (all zeros, one
non-zero value, ties for the largest magnitude of both signs, values on the rounding boundaries,
tiny values whose scale is an f16 subnormal or rounds to zero, and large ones).

Usage: python3 Tools/make_quantize_fixtures.py
"""
import os
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "AttentionTensorTests", "Fixtures", "gguf")


def blocks():
    rng = np.random.default_rng(20261204)
    b = [rng.normal(0, 1, 32 * 24), rng.uniform(-3, 3, 32 * 16), rng.standard_t(2, 32 * 16) * 0.05]
    special = []
    special.append(np.zeros(32))
    one = np.zeros(32); one[7] = -0.3; special.append(one)
    tie = np.linspace(-1, 1, 32); tie[0], tie[31] = -2.0, 2.0; special.append(tie)          # first of equal magnitudes wins
    tie2 = np.linspace(-1, 1, 32); tie2[3], tie2[9] = 2.0, -2.0; special.append(tie2)
    half = (np.arange(32) - 16) / 16.0 * 8 + 0.5; special.append(half / 8)                  # q4_0 values on .5 boundaries
    special.append(np.full(32, 1e-6) * np.arange(32))                                       # scales that are f16 subnormals
    special.append(np.full(32, 1e-9))                                                       # a scale that rounds to 0 in f16
    special.append(np.linspace(-60000, 60000, 32))                                          # large values
    return np.concatenate(b + special).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    x = blocks()
    for t, name in [(T.Q8_0, "q8_0"), (T.Q4_0, "q4_0")]:
        q = quantize(x.reshape(-1, 32), t)
        x.tofile(os.path.join(OUT, f"quantize-{name}.f32"))
        np.asarray(q, dtype=np.uint8).tofile(os.path.join(OUT, f"quantize-{name}.blocks"))
        print(f"quantize-{name}: {x.size // 32} blocks")


if __name__ == "__main__":
    main()
