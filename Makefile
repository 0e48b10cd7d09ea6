# Two commands for a fresh clone: `make train` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= phantom_scdl
ARGS ?=

.PHONY: help setup lock data train test test-all wheel-check lint format bench gpu-check clean-logs notebooks tables

help:
	@echo "make train      set up, generate the phantom, train + test experiment=$(EXPERIMENT)"
	@echo "make test       set up and run the fast tests"
	@echo "make test-all   all tests, slow ones included"
	@echo "make data       generate + preprocess the phantom data set only"
	@echo "make lock       rewrite requirements/lock.txt from the venv (after upgrading it)"
	@echo "make wheel-check  build + install the wheel outside the checkout, run its commands (CI)"
	@echo "make lint       ruff check + format check + mypy (src/scdl)"
	@echo "make bench      benchmark suite (< 10 min on CPU; CUDA when present): table + bench/results/*.json"
	@echo "make gpu-check  every framework 30 steps at 96^3 in bf16 / fp16 on a GPU (< 8 min): s/step, memory"
	@echo "make notebooks  execute notebooks/*.ipynb into docs/notebooks/ (Markdown + figures)"
	@echo "make tables     regenerate the tables under results/ from their per-case data"

LOCK := requirements/lock.txt
# The index decides torch's build (CPU or CUDA), not the version: PyPI's Linux torch is the
# multi-GB CUDA build. Without an NVIDIA driver (no nvidia-smi) the PyTorch CPU index is added:
# torch==2.13.0 also matches 2.13.0+cpu, which pip ranks above PyPI's 2.13.0. Set
# TORCH_INDEX=<a CUDA index> for another build, or TORCH_INDEX= for the configured index alone.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,$(TORCH_CPU_INDEX))
# pinned here as in the lock: an unpinned torch would resolve to the newest (multi-GB CUDA) release
TORCH_VERSION := 2.13.0

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the exact versions of the lock (pyproject.toml states ranges); torch first, TORCH_INDEX beside the index
	$(BIN)/pip install -q -c $(LOCK) torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	# launchers and the Optuna sweeper too: their configs are tested (tests/test_sweeps.py)
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,slurm,joblib,hpo]"
	touch $(STAMP)

setup: $(STAMP)

# the notebooks and export extras (papermill, nbconvert, ipykernel; onnx): make notebooks, make test-all
NB_STAMP := $(VENV)/.installed-notebooks
$(NB_STAMP): $(STAMP)
	$(BIN)/pip install -q -c $(LOCK) -e ".[notebooks,export]"
	touch $(NB_STAMP)

data: setup
	$(BIN)/python src/prepare_data.py data=phantom

train: data
	$(BIN)/python src/train.py experiment=$(EXPERIMENT) $(ARGS)

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "not slow" -q $(ARGS)

test-all: setup $(NB_STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q $(ARGS)

# the lock from the venv as it is (after a deliberate upgrade there); the notebooks extra included
lock: $(NB_STAMP)
	{ echo "# The exact versions of the reproducible venv (make setup: pip install -c $(LOCK) ...);"; \
	  echo "# pyproject.toml states the ranges. Written by make lock: $$($(BIN)/python -V), $$(uname -m), $$(date -u +%F)"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E '^uv==' | sed -E 's/\+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

wheel-check: setup
	.ci/wheel_check

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: data
	# every figure with its target and verdict (docs/performance.md); JSON in bench/results/
	$(BIN)/python bench/suite.py $(ARGS)

# every table of results/<study>/ from the study's .run.json files (docs/results.md)
tables: setup
	$(BIN)/python -m scdl.reporting.archive tables results $(ARGS)

# on a GPU machine: s/step, patches/s, peak memory, scaler-skipped steps (bench/gpu_check.py)
gpu-check: setup
	$(BIN)/python bench/gpu_check.py $(ARGS)

# papermill parameters choose the inputs (each notebook's parameters cell), e.g.
# NB_PARAMS="-p LOGS logs/notebook_demo -p FIGURES docs"; NB="01_data" runs one
notebooks: $(NB_STAMP)
	$(BIN)/python notebooks/run_notebooks.py --out docs/notebooks $(NB_PARAMS) $(NB)
