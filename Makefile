# Two commands for a fresh clone: `make train` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= phantom_scdl
ARGS ?=

.PHONY: help setup data train test test-all wheel-check lint format bench gpu-check clean-logs notebooks tables

help:
	@echo "make train      set up, generate the phantom, train + test experiment=$(EXPERIMENT)"
	@echo "make test       set up and run the fast tests"
	@echo "make test-all   all tests, slow ones included"
	@echo "make data       generate + preprocess the phantom data set only"
	@echo "make wheel-check  build + install the wheel outside the checkout, run its commands (CI)"
	@echo "make lint       ruff check + format check"
	@echo "make bench      benchmark suite (< 10 min on CPU; CUDA when present): table + bench/results/*.json"
	@echo "make gpu-check  every framework 30 steps at 96^3 in bf16 / fp16 on a GPU (< 8 min): s/step, memory"
	@echo "make notebooks  execute notebooks/*.ipynb into docs/notebooks/ (Markdown + figures)"
	@echo "make tables     regenerate the tables under results/ from their per-case data"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# launchers and the Optuna sweeper too: their configs are tested (tests/test_sweeps.py)
	$(BIN)/pip install -q -e ".[dev,slurm,joblib,hpo]"
	touch $(STAMP)

setup: $(STAMP)

# the notebooks extra (nbclient, ipykernel): make notebooks and the notebook test of make test-all
NB_STAMP := $(VENV)/.installed-notebooks
$(NB_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[notebooks]"
	touch $(NB_STAMP)

data: setup
	$(BIN)/python src/prepare_data.py data=phantom

train: data
	$(BIN)/python src/train.py experiment=$(EXPERIMENT) $(ARGS)

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "not slow" -q $(ARGS)

test-all: setup $(NB_STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q $(ARGS)

wheel-check: setup
	.ci/wheel_check

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

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

# SCDL_NOTEBOOK_* variables choose the inputs (see each notebook's first cell); NB="01_data" runs one
notebooks: $(NB_STAMP)
	$(BIN)/python notebooks/run_notebooks.py --out docs/notebooks $(NB)
