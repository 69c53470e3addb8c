#!/usr/bin/env python3
"""Runs peers at the shapes of an attention-bench JSON and prints them side by side.

usage: compare.py RESULTS.json [--threads T]

Peers, when importable: PyTorch's CPU scaled_dot_product_attention (exact attention rows) and
Hugging Face transformers' BigBird block-sparse attention layer (bigbird rows; its time includes the
layer's q/k/v projections). Their rows are added to RESULTS.json with impl "torch-sdpa" and
"hf-block-sparse" and the same keys. Without them it says what to install and stops cleanly."""
import json, os, sys, time

path = sys.argv[1]
threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else os.cpu_count()
rows = json.load(open(path))
peak = max((r["gflops"] for r in rows if r["variant"] == "sgemm" and r["impl"] == "cblas" and r["threads"] == threads), default=None)

try:
    import torch
except ImportError:
    print("PyTorch is not importable here: nothing to compare against.")
    print("To compare, install the peers into this Python and run `make compare` again:")
    print("    python3 -m pip install torch transformers")
    sys.exit(0)

torch.set_num_threads(threads)
torch.manual_seed(0)

def median_time(fn, runs=3):
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]

peers = []
shapes = sorted({(r["N"], r["H"], r["Hkv"], r["d"], r["causal"]) for r in rows
                 if r["variant"] == "full" and r["impl"] == "tiled" and r.get("pass", "forward") == "forward"})
for (n, h, hkv, d, causal) in shapes:
    q = torch.randn(1, h, n, d); k = torch.randn(1, hkv, n, d); v = torch.randn(1, hkv, n, d)
    if hkv != h:   # SDPA takes repeated K/V (enable_gqa exists only in recent versions)
        k = k.repeat_interleave(h // hkv, dim=1); v = v.repeat_interleave(h // hkv, dim=1)
    with torch.no_grad():
        t = median_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))
    g = 4 * h * n * n * d * (0.5 if causal else 1) / t * 1e-9
    peers.append(dict(variant="full", impl="torch-sdpa", B=1, H=h, Hkv=hkv, N=n, M=n, d=d, causal=causal, threads=threads,
                      seconds=t, gflops=g, peakFraction=(g / peak if peak else None), workspaceBytes=0, relError=None,
                      note=f"PyTorch {torch.__version__}"))
    print(f"torch SDPA N={n} Hkv={hkv} causal={causal}: {t*1e3:.1f} ms, {g:.1f} GFLOP/s", file=sys.stderr)

# Backward: SDPA's autograd backward at the shapes of our backward rows (its forward not timed).
for (n, h, hkv, d, causal) in sorted({(r["N"], r["H"], r["Hkv"], r["d"], r["causal"]) for r in rows
                                      if r["variant"] == "full" and r.get("pass") == "backward"}):
    q = torch.randn(1, h, n, d, requires_grad=True); k = torch.randn(1, h, n, d, requires_grad=True)
    v = torch.randn(1, h, n, d, requires_grad=True); dout = torch.randn(1, h, n, d)
    fwd = median_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).detach())
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    t = median_time(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    g = 2.5 * 4 * h * n * n * d * (0.5 if causal else 1) / t * 1e-9
    peers.append(dict(variant="full", impl="torch-sdpa", B=1, H=h, Hkv=hkv, N=n, M=n, d=d, causal=causal, threads=threads,
                      seconds=t, gflops=g, peakFraction=(g / peak if peak else None), workspaceBytes=0, relError=None,
                      note=f"PyTorch {torch.__version__} autograd backward", backwardForwardRatio=t / fwd, **{"pass": "backward"}))
    print(f"torch SDPA backward N={n} causal={causal}: {t*1e3:.1f} ms ({t / fwd:.2f}× its forward), {g:.1f} GFLOP/s", file=sys.stderr)

try:
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel
    bb = sorted({(r["N"], r["H"], r["d"]) for r in rows if r["variant"] == "bigbird" and not r["causal"]})
    for (n, h, d) in bb:
        cfg = BigBirdConfig(hidden_size=h * d, num_attention_heads=h, block_size=64, num_random_blocks=3,
                            attention_type="block_sparse", max_position_embeddings=max(n, 4096))
        layer = BigBirdBlockSparseAttention(cfg, seed=0).eval()
        x = torch.randn(1, n, h * d)
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(1, n), 64)
        try:
            with torch.no_grad():
                t = median_time(lambda: layer(x, band_mask=band, from_mask=from_mask, to_mask=to_mask,
                                              from_blocked_mask=blocked, to_blocked_mask=blocked), runs=1)
        except Exception as e:   # signatures move between versions; say so instead of failing
            print(f"HF BigBird at N={n} failed: {e}", file=sys.stderr); continue
        mine = next(r for r in rows if r["variant"] == "bigbird" and r["N"] == n and not r["causal"])
        g = mine["gflops"] * mine["seconds"] / t   # the same block FLOPs
        peers.append(dict(variant="bigbird", impl="hf-block-sparse", B=1, H=h, Hkv=h, N=n, M=n, d=d, causal=False,
                          threads=threads, seconds=t, gflops=g, peakFraction=(g / peak if peak else None),
                          workspaceBytes=0, relError=None, note="includes q/k/v projections"))
        print(f"HF BigBird N={n}: {t:.3f} s", file=sys.stderr)
except ImportError:
    print("transformers is not importable: BigBird peer skipped (python3 -m pip install transformers)", file=sys.stderr)

json.dump(rows + peers, open(path, "w"), indent=2)
print("| variant | pass | impl | N | Hkv | causal | time | GFLOP/s | % peak | backward / forward |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in sorted((r for r in rows + peers if r["variant"] in ("full", "bigbird") and r["impl"] != "materialized"),
                key=lambda r: (r["variant"], r.get("pass", "forward"), r["N"], r["Hkv"], r["causal"], r["impl"])):
    pf = f"{100 * r['peakFraction']:.0f}%" if r.get("peakFraction") else "–"
    ratio = f"{r['backwardForwardRatio']:.2f}×" if r.get("backwardForwardRatio") else "–"
    print(f"| {r['variant']} | {r.get('pass', 'forward')} | {r['impl']} | {r['N']} | {r['Hkv']} | {'yes' if r['causal'] else 'no'} | "
          f"{r['seconds'] * 1e3:.1f} ms | {r['gflops']:.1f} | {pf} | {ratio} |")
