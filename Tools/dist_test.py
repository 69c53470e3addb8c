#!/usr/bin/env python3
"""The distributed tests of `make test` (issue 19): for each P, `attn dist run|grad` under mpirun must
equal the single-process `attn run|grad` on the same .npy inputs (max|a - b| <= 1e-5 * max(1, max|b|)),
and failures must end every rank with a clear error within a bounded time.

usage: dist_test.py --attn PATH [--ranks 2,3,4]
Ends with the line 'N passed, N failed'."""
import argparse, os, subprocess, sys, tempfile, time
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--attn", required=True)
ap.add_argument("--ranks", default="2,3,4")
a = ap.parse_args()
attn = os.path.abspath(a.attn)
env = dict(os.environ)
if os.getuid() == 0:
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
passed = failed = 0

def report(ok, what):
    global passed, failed
    passed += ok; failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {what}", flush=True)

def mpirun(P, args, timeout=300):
    return subprocess.run(["mpirun", "--quiet", "--oversubscribe", "--bind-to", "none", "-np", str(P), attn, "dist", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)

def single(args):
    return subprocess.run([attn, *args], capture_output=True, text=True, timeout=300, env=env)

def rel(x, y):
    return float(np.max(np.abs(x.astype(np.float64) - y))) / max(1.0, float(np.max(np.abs(y)))) if y.size else 0.0

rng = np.random.default_rng(19)
f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
# (name, B, H, Hkv, N, M, d, dv, flags)
shapes = [("mha", 2, 4, 4, 37, 37, 16, 16, []), ("causal", 1, 4, 4, 33, 33, 16, 16, ["--causal"]),
          ("gqa causal N=129", 1, 8, 2, 129, 129, 16, 16, ["--causal"]), ("mqa cross", 1, 4, 1, 20, 45, 16, 16, []),
          ("causal cross N=5 M=40", 1, 4, 2, 5, 40, 16, 16, ["--causal"]),
          ("causal contiguous", 1, 2, 2, 50, 50, 8, 8, ["--causal", "--layout", "contiguous"])]
with tempfile.TemporaryDirectory() as tmp:
    cases = []
    for i, (name, B, H, Hkv, N, M, d, dv, flags) in enumerate(shapes):
        c = os.path.join(tmp, f"c{i}"); os.makedirs(c)
        for n, arr in dict(q=f32(B, H, N, d), k=f32(B, Hkv, M, d), v=f32(B, Hkv, M, dv), dout=f32(B, H, N, dv)).items():
            np.save(os.path.join(c, n + ".npy"), arr)
        io = ["--q", f"{c}/q.npy", "--k", f"{c}/k.npy", "--v", f"{c}/v.npy"]
        single_flags = [f for f in flags if f not in ("--layout", "contiguous")]
        r1 = single(["run", "full", *io, *single_flags, "-o", f"{c}/full.npy"])
        r2 = single(["grad", "full", *io, *single_flags, "--dout", f"{c}/dout.npy", "--dq", f"{c}/dq.npy", "--dk", f"{c}/dk.npy", "--dv", f"{c}/dv.npy"])
        lin = ["--causal"] if "--causal" in flags else []
        r3 = single(["run", "linear", *io, *lin, "--feature-map", "relu" if i % 2 else "elu", "-o", f"{c}/linear.npy"])
        if r1.returncode or r2.returncode or r3.returncode:
            report(False, f"single-process reference for {name}: {r1.stderr}{r2.stderr}{r3.stderr}"); continue
        cases.append((name, c, io, flags, lin, i))
    for P in [int(p) for p in a.ranks.split(",")]:
        for name, c, io, flags, lin, i in cases:
            r = mpirun(P, ["run", "full", *io, *flags, "--threads", "1", "-o", f"{c}/dist{P}.npy"])
            ok = r.returncode == 0 and os.path.exists(f"{c}/dist{P}.npy")
            err = rel(np.load(f"{c}/dist{P}.npy"), np.load(f"{c}/full.npy")) if ok else float("inf")
            report(ok and err <= 1e-5, f"P={P} attn dist run full {name}: {err:.2e} {r.stderr.strip()[-200:]}")
            r = mpirun(P, ["grad", "full", *io, *flags, "--threads", "1", "--dout", f"{c}/dout.npy",
                           "--dq", f"{c}/ddq{P}.npy", "--dk", f"{c}/ddk{P}.npy", "--dv", f"{c}/ddv{P}.npy"])
            errs = [rel(np.load(f"{c}/dd{g}{P}.npy"), np.load(f"{c}/d{g}.npy")) for g in ("q", "k", "v")] if r.returncode == 0 else [float("inf")]
            report(max(errs) <= 1e-5, f"P={P} attn dist grad full {name}: dq/dk/dv {' '.join(f'{e:.2e}' for e in errs)} {r.stderr.strip()[-200:]}")
            r = mpirun(P, ["run", "linear", *io, *lin, "--feature-map", "relu" if i % 2 else "elu", "--threads", "1", "-o", f"{c}/dlin{P}.npy"])
            err = rel(np.load(f"{c}/dlin{P}.npy"), np.load(f"{c}/linear.npy")) if r.returncode == 0 else float("inf")
            report(err <= 1e-5, f"P={P} attn dist run linear {name}: {err:.2e} {r.stderr.strip()[-200:]}")
        # One rank's bad input: a NaN in the keys of the last rank's shard (zigzag: chunk P of 2P).
        name, c, io, flags, lin, i = cases[1]
        k = np.load(f"{c}/k.npy"); M = k.shape[2]; k[0, 0, (P * M) // (2 * P), 0] = np.nan
        np.save(f"{c}/kbad.npy", k)
        bad = ["--q", f"{c}/q.npy", "--k", f"{c}/kbad.npy", "--v", f"{c}/v.npy"]
        t = time.time(); r = mpirun(P, ["run", "full", *bad, "--causal", "-o", f"{c}/bad{P}.npy"], timeout=120); t = time.time() - t
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        report(r.returncode != 0 and len(lines) == 1 and "rank" in lines[0] and "non-finite" in lines[0]
               and not os.path.exists(f"{c}/bad{P}.npy"),
               f"P={P} one rank's NaN keys end every rank in {t:.1f} s: exit {r.returncode}, stderr {lines}")
        # A rank killed in the middle: mpirun ends the others; nothing hangs.
        t = time.time(); r = mpirun(P, ["run", "full", *io, "--causal", "--timeout", "30", "--debug-kill-rank", str(P - 1),
                                        "-o", f"{c}/killed{P}.npy"], timeout=120); t = time.time() - t
        report(r.returncode != 0 and not os.path.exists(f"{c}/killed{P}.npy") and t < 60,
               f"P={P} a killed rank ends the job in {t:.1f} s (exit {r.returncode})")
        # A rank that stops answering: the others' bounded waits give up after --timeout and abort the job.
        t = time.time(); r = mpirun(P, ["run", "full", *io, "--causal", "--timeout", "3", "--debug-hang-rank", "0",
                                        "-o", f"{c}/hung{P}.npy"], timeout=120); t = time.time() - t
        report(r.returncode != 0 and not os.path.exists(f"{c}/hung{P}.npy") and "no progress for" in r.stderr and t < 30,
               f"P={P} a hung rank ends the job in {t:.1f} s (exit {r.returncode}): {[l for l in r.stderr.splitlines() if 'no progress' in l][:1]}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
