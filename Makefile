# perft-exp: every target installs what it needs into .venv on first use (python3 -m venv + pip).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The install is redone when what it installs changes: the dependencies, or the start-up hook (setup.py).
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml setup.py _perft_exp.pth | cksum | cut -d' ' -f1)
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format bench bench-eval bench-quick sweep-toy results clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py _perft_exp.pth
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install the project with its pinned dependencies

demo: $(STAMP) ## the embedded default: tiny OLMoE-architecture model, PERFT-R, synthetic task, CPU
	$(BIN)/python train.py

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file to a process, the longest files first
# (tests/conftest.py; xdist's own reordering would put the most numerous first): most of a test's time is
# one core's (starting Python and torch, Hydra, tiny models). OpenMP threads that wait for a core sleep
# instead of spinning, so a 2-thread run beside another test is not stalled by it.
TEST_WORKERS ?= 2
PYTEST := OMP_WAIT_POLICY=passive $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP) ## the whole test suite (CPU; includes the end-to-end runs through train.py)
	$(PYTEST)

test-fast: $(STAMP) ## the unit tests only (skips the `slow` end-to-end runs)
	$(PYTEST) -m "not slow"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP) ## ruff autofix and format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(STAMP) ## CPU benchmark: a training step per variant vs the frozen model, eval throughput (docs/benchmarks.md)
	$(BIN)/python scripts/bench.py --eval --json outputs/bench/cpu_olmoe_mini.json

bench-eval: $(STAMP) ## evaluation throughput at batch size 1 vs 16 on the tiny model (greedy)
	$(BIN)/python scripts/bench_eval.py --tiny tiny_olmoe --threads 1

bench-quick: $(STAMP) ## a short benchmark smoke run
	$(BIN)/python scripts/bench.py --quick

sweep-toy: $(STAMP) ## the toy sweep: the paper's comparison in miniature on the embedded default (CPU)
	$(BIN)/python scripts/sweep.py run toy --jobs 2
	$(BIN)/python scripts/collect_results.py outputs/runs/synthetic_commonsense/tiny_olmoe --runs 'toy-*' --out outputs/report/toy

results: $(STAMP) ## tables and figures from every results.json under outputs/runs
	$(BIN)/python scripts/collect_results.py outputs/runs --out outputs/report

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf outputs/runs outputs/report outputs/base_eval outputs/bench multirun .pytest_cache .ruff_cache
