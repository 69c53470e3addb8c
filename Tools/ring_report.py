#!/usr/bin/env python3
"""Merges `attn dist bench --baseline` rows and ring rows into one results file and prints the
comparison of the issue's targets (ring throughput against single-process, decode time ratio).

usage: ring_report.py SINGLE.json RING.json OUT.json"""
import json, sys
single, ring = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
json.dump(single + ring, open(sys.argv[3], "w"), indent=1)
def find(rows, **kw): return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
for p in ("forward", "backward"):
    base = find(single, variant="full", **{"pass": p}); rr = [r for r in find(ring, variant="ring", **{"pass": p}) if r["impl"] != "decode"]
    if not base or not rr: continue
    b = base[0]; job = max(r["jobSeconds"] for r in rr)
    print(f"{p}: N={b['N']} causal={b['causal']} H={b['H']} d={b['d']}: single process {b['threads']} threads {b['seconds']:.2f} s, "
          f"ring {rr[0]['ranks']} ranks x {rr[0]['threads']} thread {job:.2f} s -> {b['seconds'] / job:.1%} of single-process throughput")
    for r in sorted(rr, key=lambda r: r["rank"]):
        print(f"  rank {r['rank']}: {r['seconds']:.2f} s, compute {r['computeSeconds']:.2f} s, wait {r['waitSeconds'] * 1e3:.1f} ms, polls {r['progressSeconds'] * 1e3:.1f} ms, "
              f"sent {r['bytesSent'] / 2**20:.0f} MiB, communication alone {r['commSecondsAlone'] * 1e3:.1f} ms, hidden {r['hiddenFraction']:.1%}, "
              f"work share {r['rankWorkFraction']:.3f}, K/V shard {r['kvShardBytes'] / r['kvWholeBytes']:.2f} of the whole")
bd = find(single, variant="decode"); rd = find(ring, variant="ring", impl="decode")
if bd and rd:
    t = max(r["seconds"] for r in rd)
    print(f"decode at a {bd[0]['M']} cache (H={bd[0]['H']}, Hkv={bd[0]['Hkv']}, d={bd[0]['d']}): single {bd[0]['seconds'] * 1e3:.2f} ms, "
          f"{rd[0]['ranks']} ranks {t * 1e3:.2f} ms -> {t / bd[0]['seconds']:.2f}x (collectives {max(r['waitSeconds'] for r in rd) * 1e3:.3f} ms)")
