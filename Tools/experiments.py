#!/usr/bin/env python3
"""The long-context recipe on the byte-level KJV model, measured (`make experiments`).

Every number comes from the `attn` binary; this script only sequences its commands, collects their
JSON and writes the report: results/experiments/{experiments.json, results.md, *.svg, logs/}.

  1. Context extension: the RoPE base pretrained at W0, evaluated at 4·W0 as is (extrapolation),
     with linear interpolation ×4 and NTK ×4, each without and with a short fine-tune at 4·W0; an
     ALiBi model pretrained at W0 the same way, evaluated at 4·W0.
  2. Infini fine-tuning: the base switched to Infini-Attention (segment W0, β learned; linear and
     delta updates) and fine-tuned on 8·W0 sequences, against the same model limited to one segment,
     and BigBird and exact attention (RoPE interpolation ×8) given the same fine-tune.
  3. Passkey retrieval: each model above after the same short fine-tune on the task at lengths <= W0.
  4. Temp-LoRA on the held-out long books (Job, Luke, Hebrews): per-chunk bits per byte with and
     without, the time it adds, and the cheaper setting (a short window with Temp-LoRA against a
     longer window without).

usage: experiments.py [--quick] [--attn PATH] [--out DIR] [--base DIR] [--alibi DIR] [--resume]
  --quick   a smaller version in under 10 minutes: a small model pretrained here, W0 = 128.
  full      reuses `make train`'s checkpoints (models/kjv-base, models/kjv-alibi).
  --resume  skips steps whose JSON is already in --out (for an interrupted run).
"""
import argparse, datetime, json, math, os, platform, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--attn", default=".build/release/attn")
ap.add_argument("--out", default="results/experiments")
ap.add_argument("--base", default="models/kjv-base")
ap.add_argument("--alibi", default="models/kjv-alibi")
ap.add_argument("--resume", action="store_true")
ap.add_argument("--only", default="", help="comma-separated parts: extension,infini,passkey,templora")
args = ap.parse_args()

OUT = args.out
LOGS = os.path.join(OUT, "logs")
MODELS = os.path.join(OUT, "models")
os.makedirs(LOGS, exist_ok=True)
os.makedirs(MODELS, exist_ok=True)
ONLY = set(p for p in args.only.split(",") if p)
T0 = time.time()

PASSKEY_MODELS = ["base", "alibi", "infini linear", "exact"]
if args.quick:
    # A small model trained here: 2 layers, D 128, 4 heads over 2 KV heads, W0 = 128.
    P = dict(W0=128, shape="--layers 2 --hidden 128 --heads 4 --kv-heads 2 --intermediate 344",
             pretrain_steps=300, pretrain_batch=8, pretrain_lr=3e-3, ft_lrs=[1e-3], passkey_models=PASSKEY_MODELS,
             ext_steps=20, ext_batch=2, infini_steps=30, bigbird_block=32,
             profile_windows=48, passkey_steps=40, passkey_lengths="112,128", passkey_scored=[128, 256, 512, 1024],
             passkey_depths="0,0.5,1", passkey_trials=2, temp_books="Luke", temp_short_books="Luke", temp_max=8192, temp_chunk=64,
             temp_windows=(16, 64), temp_rank=8, temp_lr=1e-3, temp_epochs=2)
else:
    P = dict(W0=256, pretrain_steps=2000, ft_lrs=[3e-4, 1e-3], passkey_models=PASSKEY_MODELS,
             ext_steps=150, ext_batch=2, infini_steps=150, bigbird_block=64,
             profile_windows=0, passkey_steps=60, passkey_lengths="128,192,256", passkey_scored=[256, 512, 1024, 2048],
             passkey_depths="0,0.25,0.5,0.75,1", passkey_trials=3, temp_books="Job,Luke,Heb", temp_short_books="Heb", temp_max=0, temp_chunk=128,
             temp_windows=(32, 128), temp_rank=8, temp_lr=5e-4, temp_epochs=2)
W0 = P["W0"]
L4, L8 = 4 * W0, 8 * W0

def log(msg):
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)

TIMINGS_PATH = os.path.join(OUT, "timings.json")
TIMINGS = json.load(open(TIMINGS_PATH)) if args.resume and os.path.exists(TIMINGS_PATH) else {}

def run(name, argv, outputs=()):
    """Runs `attn argv…` with its output in logs/name.log; skipped under --resume when every
    output already exists. Each step's wall time goes to timings.json (kept across resumed runs)."""
    if args.resume and outputs and all(os.path.exists(o) for o in outputs):
        log(f"{name}: kept from an earlier run")
        return
    log(f"{name}: {' '.join(argv)}")
    t = time.time()
    with open(os.path.join(LOGS, name + ".log"), "w") as f:
        r = subprocess.run([args.attn] + argv, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"{name} failed (exit {r.returncode}); see {LOGS}/{name}.log")
    TIMINGS[name] = time.time() - t
    # Merged with the file: runs of different parts (--only) may share one output directory.
    if os.path.exists(TIMINGS_PATH):
        TIMINGS.update({k: v for k, v in json.load(open(TIMINGS_PATH)).items() if k not in TIMINGS})
    with open(TIMINGS_PATH + f".tmp{os.getpid()}", "w") as f:
        json.dump(TIMINGS, f, indent=1)
    os.replace(TIMINGS_PATH + f".tmp{os.getpid()}", TIMINGS_PATH)
    log(f"{name}: done in {TIMINGS[name]:.0f} s")

def load(path):
    with open(path) as f:
        return json.load(f)

def want(part):
    return not ONLY or part in ONLY

def train(name, argv, steps):
    d = os.path.join(MODELS, name)
    run("train-" + name, ["lm", "train", "--out", d, "--steps", str(steps), "--eval-every", "0",
                          "--checkpoint-every", str(steps)] + argv, [os.path.join(d, "model.safetensors")])
    return d

def profile(name, model, window, extra=(), span=None):
    """Bits per byte by position on the validation books; with `span`, the same text as a profile
    at window `span`, read in independent windows of `window`."""
    path = os.path.join(OUT, "profiles", name + ".json")
    spans = ["--span", str(span)] if span else []
    run("profile-" + name, ["lm", "profile", "--model", model, "--window", str(window), "--books", "validation",
                            "--max-windows", str(P["profile_windows"]), "--json", path] + spans + list(extra), [path])
    return load(path)

results = dict(quick=args.quick, parameters=P)

# ---- Base models: pretrained here (quick) or make train's checkpoints (full) ----
if args.quick:
    common = P["shape"].split() + ["--batch", str(P["pretrain_batch"]), "--length", str(W0), "--lr", str(P["pretrain_lr"]),
                                   "--warmup", "30"]
    base = train("base", common, P["pretrain_steps"])
    alibi = train("alibi", common + ["--positions", "alibi"], P["pretrain_steps"])
else:
    base, alibi = args.base, args.alibi
    for d in (base, alibi):
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            sys.exit(f"{d} is missing: `make train` and `make train-alibi` write it")

def finetune(name, frm, length, batch, steps, extra, lr):
    return train(name, ["--from", frm, "--length", str(length), "--batch", str(batch), "--lr", str(lr), "--warmup", "10"]
                 + extra, steps)

# Fine-tunes run at each peak learning rate of P["ft_lrs"]: 3e-4 is where pretraining ended (the
# gentlest), 1e-3 moves further (positions the model never saw need it). The first is the one the
# passkey part uses. Names of the others carry their rate.
LRS = P["ft_lrs"]
def suffix(lr):
    return "" if lr == LRS[0] else f"-lr{lr:g}"

# ---- 4 (run first: it needs only the base). Temp-LoRA on the long books ----
if want("templora"):
    tl = {}
    short, main = P["temp_windows"]
    C = P["temp_chunk"]
    common = ["--model", base, "--book", P["temp_books"], "--chunk", str(C), "--quiet",
              "--max-tokens", str(P["temp_max"]), "--rank", str(P["temp_rank"]), "--alpha", str(2 * P["temp_rank"]),
              "--lr", str(P["temp_lr"]), "--epochs", str(P["temp_epochs"])]
    # The main comparison at the longest window the base reads well (window + chunk = W0), and the
    # paper's cheaper setting: a short window with Temp-LoRA against that longer window without.
    # (The short-window run reads only P["temp_short_books"], to keep the full run under 2 hours.)
    for name, window, books in [("temp-lora", main, P["temp_books"]), ("temp-lora-short", short, P["temp_short_books"])]:
        path = os.path.join(OUT, "templora", name + ".json")
        argv = common + ["--window", str(window), "--json", path]
        argv[argv.index("--book") + 1] = books
        run(name, ["lm", "temp-lora"] + argv, [path])
        tl[name] = load(path)
    results["templora"] = {k: dict(window=v["window"], epochs=v["epochs"], all=v["all"], secondHalf=v["secondHalf"],
                                   trainingSeconds=v["trainingSeconds"], scoringSeconds=v["scoringSeconds"],
                                   texts=[dict(name=t["name"], all=t["all"], secondHalf=t["secondHalf"],
                                               adapted=[c["adaptedLoss"] / math.log(2) for c in t["chunks"]],
                                               base=[c["baseLoss"] / math.log(2) for c in t["chunks"]]) for t in v["texts"]])
                           for k, v in tl.items()}

# ---- 1. Context extension ----
models = {}   # name -> (checkpoint, variant options) for the passkey part
if want("extension") or want("passkey"):
    ext = {}
    # Every model of this part reads the same bytes: spans of 4·W0 (at W0, four windows each).
    ext["base@W0"] = profile("base-W0-span4", base, W0, span=L4)
    ext["alibi@W0"] = profile("alibi-W0-span4", alibi, W0, span=L4)
    variants = [("extrapolation", "none"), ("linear x4", "linear:4"), ("ntk x4", "ntk:4")]
    for label, scaling in variants:
        key = scaling.split(":")[0]
        ext[label] = profile(f"{key}-4W0", base, L4, ["--rope-scaling", scaling])
        for lr in LRS:
            d = finetune(f"{key}-ft" + suffix(lr), base, L4, P["ext_batch"], P["ext_steps"], ["--rope-scaling", scaling], lr)
            ext[f"{label} + fine-tune @{lr:g}"] = profile(f"{key}-ft-4W0" + suffix(lr), d, L4)
            if lr == LRS[0]:
                models[label + " + fine-tune"] = d
    ext["alibi@4W0"] = profile("alibi-4W0", alibi, L4)
    models["base (exact, W0)"] = base
    models["alibi"] = alibi
    results["extension"] = {k: dict(mean=v["meanBitsPerByte"], window=v["window"], windows=v["windows"], curve=v["bitsPerByte"])
                            for k, v in ext.items()}

# ---- 2. Infini fine-tuning over 8 segments, against one segment, BigBird and exact ----
if want("infini") or want("passkey"):
    inf = {}
    # Infini's gates learn at 100× the rate (a gate must move by units; Adam moves it by about lr
    # per step). BigBird and exact read 8·W0 positions with NTK-aware RoPE ×8.
    gates = ["--gate-lr-multiplier", "100"]
    # BigBird and exact must learn 8·W0 positions: only the larger rate (the full run's budget).
    long_models = [("infini linear", ["--attention", "infini", "--segment", str(W0)] + gates, LRS),
                   ("infini delta", ["--attention", "infini-delta", "--segment", str(W0)] + gates, LRS),
                   ("bigbird", ["--attention", "bigbird", "--segment", str(P["bigbird_block"]), "--rope-scaling", "ntk:8"], LRS[-1:]),
                   ("exact", ["--rope-scaling", "ntk:8"], LRS[-1:])]
    for label, opts, lrs in long_models:
        key = label.replace(" ", "-")
        for lr in lrs:
            d = finetune(f"{key}-8W0" + suffix(lr), base, L8, 1, P["infini_steps"], opts, lr)
            inf[f"{label} @8W0, fine-tune @{lr:g}"] = profile(f"{key}-8W0" + suffix(lr), d, L8)
            if lr == lrs[0]:
                models[label + " (8·W0 fine-tune)"] = d
            if label.startswith("infini"):
                inf[f"{label} one segment, fine-tune @{lr:g}"] = profile(f"{key}-one-segment-span8" + suffix(lr), d, W0, span=L8)
    inf["base one segment"] = profile("base-W0-span8", base, W0, span=L8)
    results["infini"] = {k: dict(mean=v["meanBitsPerByte"], window=v["window"], windows=v["windows"], curve=v["bitsPerByte"])
                         for k, v in inf.items()}

# ---- 3. Passkey retrieval after the same short fine-tune ----
if want("passkey"):
    pk = {}
    # (Four models: the full run's time budget.)
    for label, d in models.items():
        if label.split(" (")[0] not in P["passkey_models"]:
            continue
        key = label.split(" (")[0].replace(" + fine-tune", "-ft").replace(" ", "-")
        path = os.path.join(OUT, "passkey", key + ".json")
        run("passkey-" + key, ["lm", "passkey", "--model", d, "--tune-steps", str(P["passkey_steps"]),
                               "--tune-lengths", P["passkey_lengths"], "--lengths", ",".join(map(str, P["passkey_scored"])),
                               "--depths", P["passkey_depths"], "--trials", str(P["passkey_trials"]), "--json", path], [path])
        pk[label] = load(path)
    results["passkey"] = {k: dict(lengths=v["results"]["lengths"], depths=v["results"]["depths"], trials=v["results"]["trials"],
                                  accuracy=v["results"]["accuracy"], mean=v["meanAccuracy"], tuneSeconds=v["tuneSeconds"],
                                  finalTuneLoss=v["tuneLoss"][-1] if v["tuneLoss"] else None)
                          for k, v in pk.items()}

results["seconds"] = sum(TIMINGS.values())
results["stepSeconds"] = TIMINGS
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "?"
cpu = "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
results["run"] = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit,
                      cpu=cpu, cores=os.cpu_count(), machine=platform.machine())
with open(os.path.join(OUT, "experiments.json.tmp"), "w") as f:
    json.dump(results, f, indent=1)
os.replace(os.path.join(OUT, "experiments.json.tmp"), os.path.join(OUT, "experiments.json"))
log(f"wrote {OUT}/experiments.json")
subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments_report.py"),
                os.path.join(OUT, "experiments.json"), OUT], check=True)
log(f"done in {(time.time() - T0) / 60:.1f} minutes")
