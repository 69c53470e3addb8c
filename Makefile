# swift-long-attention: two commands on a fresh machine.
#   make bench   installs OpenBLAS/LAPACKE when missing, builds release, runs the benchmark
#   make test    installs when missing, builds, runs XCTest and the shared reference cases
SHELL := /bin/bash
SWIFT ?= swift
SHARED ?= ../shared
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build release test check bench bench-smoke compare clean

all: build

# OpenBLAS (CBLAS) and LAPACKE from Debian's packages, only when pkg-config or lapacke.h is missing.
deps:
	@if ! pkg-config --exists openblas 2>/dev/null || [ ! -f /usr/include/lapacke.h ]; then \
		echo "Installing libopenblas-dev liblapacke-dev pkg-config (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenblas-dev liblapacke-dev pkg-config; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product attn
	$(SWIFT) build -c release --product attention-bench

# XCTest, then the reference cases (computed by PyTorch, transformers, numpy) for the variants
# that exist, through the release `attn` binary.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(MAKE) --no-print-directory bench-smoke
	$(MAKE) --no-print-directory check

# The benchmark's quick mode, and its JSON checked against the contract (every row finite).
bench-smoke: release
	.build/release/attention-bench --quick --out .build/bench-smoke --json .build/bench-smoke/quick.json > /dev/null
	python3 Benchmarks/validate_results.py .build/bench-smoke/quick.json --expect-variants sgemm,full,bigbird,linear,infini,decode

check: release
	@if [ -f $(SHARED)/reference/check.py ]; then \
		cases=$$(ls -d $(SHARED)/reference/*/ 2>/dev/null); \
		python3 $(SHARED)/reference/check.py --attn .build/release/attn $$cases; \
	else echo "no $(SHARED)/reference: skipping the reference cases"; fi

bench: release
	.build/release/attention-bench $(BENCH_ARGS)

# Our rows and, when importable, PyTorch's SDPA and Hugging Face's BigBird at the same shapes.
compare: release
	.build/release/attention-bench --variants sgemm,full,bigbird --lengths 4096,16384 --out results/compare
	python3 Benchmarks/compare.py results/compare/results.json

clean:
	rm -rf .build
