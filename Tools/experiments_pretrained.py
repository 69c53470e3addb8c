#!/usr/bin/env python3
"""The long-context recipe on the real pretrained models (`make experiments-pretrained`).

Every number comes from the `attn` binary (`attn lm profile`, `attn lm passkey`, `attn lm
pretrained-temp-lora`, `pretrained-sparse`, `pretrained-infini` on the GGUF files of data/models); this script only sequences the commands, each writing its JSON atomically to
results/experiments-pretrained/<part>/<name>.json, then runs Tools/experiments_pretrained_report.py
(results.md and SVG charts).

Parts (each a list of steps; another part is one more builder in STEP_BUILDERS):
  perplexity  SmolLM2-135M (trained to 8K): loss by position at 8K, 16K, 32K on the same tokens of
              Job + Luke + Hebrews, for plain extrapolation, linear, NTK, dynamic NTK, YaRN (factor
              L / 8K, no fine-tune) and StreamingLLM (4 sinks + window, memory bounded);
  gemma       Gemma 3 270M (trained to 32K): 4K windows against one 32K window on the same tokens;
  passkey     SmolLM2 at 1K-16K and Gemma 3 at 4K-32K (Landmark's prompt, greedy, no fine-tune),
              f32 and int8 KV caches for the important cells;
  temp-lora   Temp-LoRA (`attn lm pretrained-temp-lora`) on SmolLM2 over the three books and on
              Gemma 3 over Hebrews (each book's first tokens: see the grid), and the long window
              without it on the same tokens (the paper's trade-off);
  sparse      BigBird and a sliding window fitted into the full-attention layers without training
              (`attn lm pretrained-sparse`): perplexity, seconds per window and passkey, against
              exact attention in the same command;
  infini      Infini-Attention fitted into SmolLM2 (`attn lm pretrained-infini`): a LoRA + gate
              fine-tune bounded in minutes, then perplexity beyond 8K and passkey.

usage: experiments_pretrained.py [--quick] [--resume] [--only PARTS] [--steps NAMES] [--list] [--attn PATH] [--out DIR]
  --quick   contexts <= 4K, a few trials: under 15 minutes on 2 cores.
  --resume  skips every step whose JSON exists (a run interrupted at any point completes later).
  --list    prints the steps with their estimated minutes and exits.
"""
import argparse, datetime, json, os, platform, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--attn", default=".build/release/attn")
ap.add_argument("--out", default=None)
ap.add_argument("--models", default="data/models")
ap.add_argument("--corpus", default="data/kjv.txt")
ap.add_argument("--resume", action="store_true")
ap.add_argument("--only", default="", help="comma-separated parts")
ap.add_argument("--steps", default="", help="comma-separated step names (default: every step of the selected parts)")
ap.add_argument("--list", action="store_true")
ap.add_argument("--threads", type=int, default=None)
args = ap.parse_args()

OUT = args.out or ("results/experiments-pretrained-quick" if args.quick else "results/experiments-pretrained")
LOGS = os.path.join(OUT, "logs")
SMOL = os.path.join(args.models, "SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA = os.path.join(args.models, "gemma-3-270m-q4_k_m.gguf")
T0 = time.time()

# Cost model of one forward over L tokens on 2 cores (seconds ≈ a·L + b·L²), fitted to the QUICK
# run and single steps on a quiet 2-core AMD EPYC (Zen 3) on 2026-12-07 (SmolLM2 profile: 4,096 tokens
# in 18 s, 16,384 in 160 s; passkey prompts of 1K / 4K / 8K in 2.5 / 15 / 45 s; Gemma 3 profile 4K
# in 25 s, 32K in 295 s; Gemma passkey 2K / 4K in 4.7 / 9.9 s). "profile" computes the LM head on
# every position (Gemma's 262K-token head dominates); "prefill" (passkey) on the last one only. A
# machine shared with other jobs takes up to twice as long.
COST = {"smol": (2.6e-3, 4.4e-7), "smol-prefill": (1.9e-3, 4.3e-7), "gemma": (6.0e-3, 0.9e-7), "gemma-prefill": (2.3e-3, 0.7e-7)}


def forward_seconds(model, L, window=None):
    a, b = COST[model]
    # A banded layer (StreamingLLM's window W) costs L·W instead of L²/2.
    quad = b * L * L if window is None else b * 2 * L * min(window, L)
    return a * L + quad


if args.quick:
    # Contexts <= 4K (inside both models' training): the instruments run end to end; scaling at
    # factor 2 inside the context shows what interpolation costs there.
    P = dict(smol_lengths=[1024, 4096], smol_span=4096, smol_spans=1,
             smol_methods_at={1024: ["none"], 4096: ["none", "yarn:2", "streaming"]},
             streaming=(4, 1020), gemma_windows=(1024, 4096), gemma_span=4096, gemma_spans=1,
             passkey_smol=dict(lengths=[1024, 2048], depths=[0.0, 0.5, 1.0], trials=2),
             passkey_smol_int8=dict(lengths=[2048], depths=[0.5], trials=2),
             passkey_gemma=dict(lengths=[2048, 4096], depths=[0.5], trials=2),
             passkey_gemma_int8=None, passkey_long=[],
             # (name, model, books, max tokens per book, window, epochs, lr)
             temp_lora=[("smol-heb", "smol", "Heb", 2048, 1024, 2, 5e-4), ("smol-heb-base-w2048", "smol", "Heb", 2048, 2048, 0, 5e-4)],
             # (name, model, attention, ctx, score-last, passkey lengths, passkey depths, trials)
             sparse=[("smol-exact-4096", "smol", "exact", 4096, 0, [2048], [0.5], 2),
                     ("smol-bigbird-4096", "smol", "bigbird", 4096, 0, [2048], [0.5], 2)],
             # (name, steps, minutes, eval ctx, passkey lengths, depths, trials)
             infini=[("smol-infini", 2, 3.0, [4096], [2048], [0.5], 2)])
else:
    # One span of 32K tokens (the first 32,768 of Job + Luke + Hebrews) read by every row; factors L / 8K.
    P = dict(smol_lengths=[8192, 16384, 32768], smol_span=32768, smol_spans=1,
             # Every method at 16K (factor 2, a 16K window costs 2.7 min); at 32K (9 min a method) the
             # plain model, YaRN and StreamingLLM.
             smol_methods_at={8192: ["none", "streaming"], 16384: ["none", "linear", "ntk", "dynamic", "yarn", "streaming"],
                              32768: ["none", "yarn", "streaming"]},
             streaming=(4, 2044), gemma_windows=(4096, 32768), gemma_span=32768, gemma_spans=1,
             passkey_smol=dict(lengths=[1024, 2048, 4096, 8192], depths=[0.0, 0.5, 1.0], trials=5),
             passkey_smol_int8=dict(lengths=[8192], depths=[0.5], trials=5),
             passkey_gemma=dict(lengths=[4096, 32768], depths=[0.5], trials=5),
             passkey_gemma_int8=None,
             # (model, length, methods, depths, trials): beyond SmolLM2's trained context, NTK x2,
             # the method whose loss stays flat past 8K in the 16K profile (19.8 against 39.3 plain;
             # dynamic NTK, 0/5 here on 2026-12-07, scales the base by 3^(d/(d-2)) at 16K, not 2^).
             passkey_long=[("smol", 16384, ["ntk"], [0.5], 5)],
             # Temp-LoRA: the paper's recipe (chunks of 1,024, 2 epochs, rank 64 on every projection,
             # lr 5e-5) on Gemma 3; on SmolLM2 lr 5e-4 (at 5e-5 its adapter moved the perplexity by
             # 2.6% over Hebrews' first chunks: docs/pretrained/recipe-temp-lora-sparse.md; Gemma at
             # 5e-4 got 59% worse on the second of two chunks, at 5e-5 4.4% better), and each book's
             # first 8,192 tokens (8 chunks; Hebrews has ~8.7K; the whole of Job + Luke, ~57K
             # tokens, would cost 35 minutes more). The long window without Temp-LoRA reads the same tokens.
             temp_lora=[("smol-long", "smol", "long", 8192, 1024, 2, 5e-4), ("smol-long-base-w2048", "smol", "long", 8192, 2048, 0, 5e-4),
                        ("gemma-heb", "gemma", "Heb", 8192, 1024, 2, 5e-5), ("gemma-heb-base-w2048", "gemma", "Heb", 8192, 2048, 0, 5e-5)],
             # Sparse: SmolLM2 at 16K (beyond its training, every layer full), Gemma 3 at 32K (its
             # three full layers; the last 1,024 positions scored: its 262K-row LM head over every
             # position would cost more than the attention).
             sparse=[("smol-exact-16384", "smol", "exact", 16384, 0, [4096], [0.0, 0.5, 1.0], 5),
                     ("smol-bigbird-16384", "smol", "bigbird", 16384, 0, [4096], [0.0, 0.5, 1.0], 5),
                     ("smol-sliding-16384", "smol", "sliding", 16384, 0, [], [], 5),
                     ("gemma-exact-32768", "gemma", "exact", 32768, 1024, [], [], 5),
                     ("gemma-bigbird-32768", "gemma", "bigbird", 32768, 1024, [], [], 5)],
             # Infini: the fine-tune stops at 12 minutes (about 40 steps of 2,048 tokens here).
             infini=[("smol-infini", 200, 12.0, [16384, 32768], [4096], [0.0, 0.5, 1.0], 5)])
TRAINED = {"smol": 8192, "gemma": 32768}
PATHS = {"smol": SMOL, "gemma": GEMMA}


def method_args(method, L, trained):
    """--rope-scaling etc. for a method at length L (factor L / trained context, at least 1)."""
    name, _, given = method.partition(":")
    f = float(given) if given else max(1.0, L / trained)
    if method == "none":
        return []
    if method == "streaming":
        s, w = P["streaming"]
        return ["--sinks", str(s), "--attention-window", str(w)]
    return ["--rope-scaling", name, "--rope-factor", f"{f:g}"]


# ---- Steps: {part, name, argv (after `attn`), out, minutes (estimate)} ----

def step(part, name, argv, minutes):
    out = os.path.join(OUT, part, name + ".json")
    return dict(part=part, name=name, argv=argv + ["--json", out], out=out, minutes=minutes)


def profile_step(part, model, name, window, span, spans, extra, window_cost=None):
    windows = spans * span // window
    minutes = windows * forward_seconds(model, window, window_cost) / 60
    return step(part, name, ["lm", "profile", "--model", PATHS[model], "--books", "long", "--corpus", args.corpus,
                             "--window", str(window), "--span", str(span), "--max-windows", str(spans), "--batch", "1",
                             "--buckets", "16"] + extra, minutes)


def perplexity_steps():
    steps = []
    for L in P["smol_lengths"]:
        for m in P["smol_methods_at"].get(L, ["none"]):
            extra = method_args(m, L, TRAINED["smol"])
            wc = P["streaming"][1] + P["streaming"][0] if m == "streaming" else None
            steps.append(profile_step("perplexity", "smol", f"smol-{m.replace(':', 'x')}-{L}", L, P["smol_span"], P["smol_spans"], extra, wc))
    return steps


def gemma_steps():
    # Gemma's cost is mostly linear (15 of 18 layers have a 512 window; a 262K-token LM head on every position).
    return [profile_step("gemma", "gemma", f"gemma-window-{w}", w, P["gemma_span"], P["gemma_spans"], []) for w in P["gemma_windows"]]


def passkey_step(model, name, lengths, depths, trials, extra):
    prompts = sum(trials * len(depths) * forward_seconds(model + "-prefill", L) for L in lengths)
    return step("passkey", name, ["lm", "passkey", "--model", PATHS[model], "--lengths", ",".join(map(str, lengths)),
                                  "--depths", ",".join(f"{d:g}" for d in depths), "--trials", str(trials)] + extra,
                prompts / 60)


def passkey_steps():
    steps = []
    g = P["passkey_smol"]
    steps.append(passkey_step("smol", "smol-f32", g["lengths"], g["depths"], g["trials"], []))
    if P["passkey_smol_int8"]:
        g = P["passkey_smol_int8"]
        steps.append(passkey_step("smol", "smol-int8", g["lengths"], g["depths"], g["trials"], ["--kv-type", "int8"]))
    g = P["passkey_gemma"]
    steps.append(passkey_step("gemma", "gemma-f32", g["lengths"], g["depths"], g["trials"], []))
    if P["passkey_gemma_int8"]:
        g = P["passkey_gemma_int8"]
        steps.append(passkey_step("gemma", "gemma-int8", g["lengths"], g["depths"], g["trials"], ["--kv-type", "int8"]))
    for model, L, methods, depths, trials in P["passkey_long"]:
        for m in methods:
            steps.append(passkey_step(model, f"{model}-passkey-{m}-{L}", [L], depths, trials, method_args(m, L, TRAINED[model])))
    return steps


# Seconds per 1,024-token chunk of Temp-LoRA (2 epochs of forward + backward over window + chunk,
# the scoring forward included) and per teacher-forced passkey prompt of L tokens, on 2 cores.
TEMP_LORA_CHUNK = {"smol": 35.0, "gemma": 70.0}
INFINI_STEP = 18.0  # seconds per Infini fine-tune step of 2,048 tokens (SmolLM2, LoRA rank 8 + gates)


def temp_lora_steps():
    steps = []
    for name, model, books, max_tokens, window, epochs, lr in P["temp_lora"]:
        chunks = (3 if books == "long" else 1) * max_tokens // 1024
        per = TEMP_LORA_CHUNK[model] * epochs / 2 if epochs else forward_seconds(model + "-prefill", window + 1024)
        steps.append(step("temp-lora", name, ["lm", "pretrained-temp-lora", "--model", PATHS[model], "--books", books,
                                              "--corpus", args.corpus, "--max-tokens", str(max_tokens), "--window", str(window),
                                              "--epochs", str(epochs), "--lr", f"{lr:g}", "--quiet"],
                          chunks * per / 60))
    return steps


def recipe_eval_args(ctx, score_last, lengths, depths, trials):
    argv = ["--ctx", ",".join(map(str, ctx)), "--max-windows", "1", "--score-last", str(score_last)]
    if lengths:
        argv += ["--passkey-lengths", ",".join(map(str, lengths)), "--passkey-depths", ",".join(f"{d:g}" for d in depths),
                 "--trials", str(trials)]
    return argv


def recipe_eval_minutes(model, ctx, attention, lengths, depths, trials):
    # Sparse and Infini layers cost about a window of 1,024 per token instead of L / 2.
    w = None if attention == "exact" else 1024
    return (sum(forward_seconds(model + "-prefill", L, w) for L in ctx)
            + trials * len(depths) * sum(forward_seconds(model + "-prefill", L, w) for L in lengths)) / 60


def sparse_steps():
    return [step("sparse", name, ["lm", "pretrained-sparse", "--model", PATHS[model], "--attention", attention, "--books", "long",
                                  "--corpus", args.corpus] + recipe_eval_args([ctx], score_last, lengths, depths, trials),
                 recipe_eval_minutes(model, [ctx], attention, lengths, depths, trials))
            for name, model, attention, ctx, score_last, lengths, depths, trials in P["sparse"]]


def infini_steps():
    return [step("infini", name, ["lm", "pretrained-infini", "--model", SMOL, "--steps", str(steps_), "--minutes", f"{minutes:g}",
                                  "--books", "long", "--corpus", args.corpus] + recipe_eval_args(ctx, 0, lengths, depths, trials),
                 min(minutes, steps_ * INFINI_STEP / 60) + recipe_eval_minutes("smol", ctx, "infini", lengths, depths, trials))
            for name, steps_, minutes, ctx, lengths, depths, trials in P["infini"]]


# Each builder returns a list of steps (see `step`); the report reads every part's JSON.
STEP_BUILDERS = [("perplexity", perplexity_steps), ("gemma", gemma_steps), ("passkey", passkey_steps),
                 ("temp-lora", temp_lora_steps), ("sparse", sparse_steps), ("infini", infini_steps)]

ONLY = set(p for p in args.only.split(",") if p)
STEPS = [s for part, build in STEP_BUILDERS if not ONLY or part in ONLY for s in build()]
dupes = sorted(n for n in set(s["name"] for s in STEPS) if sum(t["name"] == n for t in STEPS) > 1)
assert not dupes, f"step names must be unique (--steps and --resume go by name): {dupes}"
NAMES = set(n for n in args.steps.split(",") if n)
if NAMES - set(s["name"] for s in STEPS):
    sys.exit(f"no step named {', '.join(sorted(NAMES - set(s['name'] for s in STEPS)))} (--list shows them)")
RUN_STEPS = [s for s in STEPS if not NAMES or s["name"] in NAMES]

if args.list:
    for s in STEPS:
        print(f"{s['minutes']:6.1f} min  {s['part']:<11} {s['name']}")
    print(f"{sum(s['minutes'] for s in STEPS):6.1f} min in all (estimate), longest {max(s['minutes'] for s in STEPS):.1f}")
    sys.exit(0)

for path in (SMOL, GEMMA, args.corpus):
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: `make models` and `make corpus` write it")
os.makedirs(LOGS, exist_ok=True)


def log(msg):
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)


TIMINGS_PATH = os.path.join(OUT, "timings.json")
TIMINGS = json.load(open(TIMINGS_PATH)) if os.path.exists(TIMINGS_PATH) else {}


def save_timings():
    tmp = TIMINGS_PATH + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(TIMINGS, f, indent=1)
    os.replace(tmp, TIMINGS_PATH)


threads = ["--threads", str(args.threads)] if args.threads else []
for s in RUN_STEPS:
    if args.resume and os.path.exists(s["out"]):
        log(f"{s['name']}: kept from an earlier run")
        continue
    os.makedirs(os.path.dirname(s["out"]), exist_ok=True)
    log(f"{s['name']} (estimate {s['minutes']:.1f} min): attn {' '.join(s['argv'])}")
    t = time.time()
    with open(os.path.join(LOGS, s["name"] + ".log"), "w") as f:
        r = subprocess.run([args.attn] + s["argv"] + threads, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"{s['name']} failed (exit {r.returncode}); see {LOGS}/{s['name']}.log")
    TIMINGS[s["name"]] = dict(seconds=time.time() - t, estimateMinutes=s["minutes"])
    save_timings()
    log(f"{s['name']}: done in {TIMINGS[s['name']]['seconds']:.0f} s")

cpu = "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
run = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit, cpu=cpu,
           cores=os.cpu_count(), machine=platform.machine(), quick=args.quick, parameters={k: v for k, v in P.items()},
           steps=[dict(part=s["part"], name=s["name"], out=os.path.relpath(s["out"], OUT),
                       command="attn " + " ".join(s["argv"])) for s in STEPS])
with open(os.path.join(OUT, "run.json.tmp"), "w") as f:
    json.dump(run, f, indent=1)
os.replace(os.path.join(OUT, "run.json.tmp"), os.path.join(OUT, "run.json"))
subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments_pretrained_report.py"), OUT],
               check=True)
log(f"done in {(time.time() - T0) / 60:.1f} minutes")
