# Benchmarks (issue 6), included by the Makefile: uses $(BIN) and $(STAMP) from it.
# make bench                  every scenario, bare gRPC baseline and system side by side (~7 min)
# make bench BENCH_ARGS=...   e.g. BENCH_ARGS="--scenarios 1,2 --loops asyncio"
# make bench-quick            short runs that validate the harness (~2 min)
# make bench-profile          py-spy profiles of gate and node during scenarios 1, 2 and 5
BENCH_ARGS ?=
BENCH_UVLOOP_VERSION ?= 0.23.0
BENCH_PY_SPY_VERSION ?= 0.4.3
# uvloop for the services' uvloop runs only: a side directory the harness puts on their
# PYTHONPATH, so that nothing else (tests, make run) starts using uvloop.
BENCH_UVLOOP_DIR := $(BIN)/../bench-uvloop

.PHONY: bench bench-quick bench-profile bench-deps

$(BENCH_UVLOOP_DIR)/uvloop: $(STAMP)
	$(BIN)/pip install --quiet --target $(BENCH_UVLOOP_DIR) uvloop==$(BENCH_UVLOOP_VERSION)

$(BIN)/py-spy: $(STAMP)
	$(BIN)/pip install --quiet py-spy==$(BENCH_PY_SPY_VERSION)

bench-deps: $(BENCH_UVLOOP_DIR)/uvloop $(BIN)/py-spy ## Install uvloop (side directory) and py-spy for the benchmarks

bench: $(STAMP) $(BENCH_UVLOOP_DIR)/uvloop ## Run every benchmark scenario; results in bench/results/
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP) $(BENCH_UVLOOP_DIR)/uvloop ## Short benchmark runs that validate the harness
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

bench-profile: $(STAMP) $(BIN)/py-spy ## Profile gate and node with py-spy during scenarios 1, 2, 5
	$(BIN)/python -m bench --profile --scenarios 1,2,5 --loops asyncio --concurrency 1,64 \
		--push-count 200000 $(BENCH_ARGS)
