# Two commands on a fresh clone: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install serve test lint bench bench-extra quality clean image-check models model-binarized-mnist model-mushrooms model-diamonds \
	model-health-insurance results tables

# Where `make serve` listens: `make serve HOST=0.0.0.0 PORT=8102` (or MADE_HOST / MADE_PORT).
HOST ?= $(or $(MADE_HOST),127.0.0.1)
PORT ?= $(or $(MADE_PORT),8000)

$(STAMP): pyproject.toml
	@echo "==> [1/3] virtual environment $(VENV) (Python: $(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "==> [2/3] torch 2.13.0, CPU wheel (the largest download)"
	# pinned: any range admitting a newer torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --progress-bar on torch==2.13.0
	@echo "==> [3/3] made with its training, serving (CPU onnxruntime) and test dependencies"
	$(BIN)/python -m pip install --progress-bar on -e '.[train,cpu,dev]'
	touch $(STAMP) $(SERVE_STAMP)
	@echo "==> installed: . $(BIN)/activate, then made --help"

install: $(STAMP)

# `make test` also runs `made score --ray` on a local Ray: the optional ray extra (~25 s and
# ~330 MB on top of install), kept out of what `make serve` needs.
$(TEST_STAMP): $(STAMP)
	@echo "==> the ray extra, for the tests of made score --ray"
	$(BIN)/python -m pip install --progress-bar on -e '.[train,cpu,dev,ray]'
	touch $(TEST_STAMP)

# `make serve` installs what serving needs and nothing more: pyproject's base dependencies and
# the CPU onnxruntime (no torch, no training, dev or test tools; scripts/serve_install.sh measures
# it). A venv that `make install` filled has all of it already.
$(SERVE_STAMP): pyproject.toml
	@echo "==> [1/2] virtual environment $(VENV) (Python: $(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "==> [2/2] made with its serving dependencies only (CPU onnxruntime; no torch)"
	$(BIN)/python -m pip install --progress-bar on -e '.[cpu]'
	touch $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/made serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check made service training tests bench scripts
	$(BIN)/ruff format --check made service training tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports  # the floors of the house: .importlinter

test: lint $(TEST_STAMP)
	$(BIN)/python -m pytest -q

# The serving image (CPU), built on a local Debian base and run with podman as
# docker-compose.cpu.yml runs it, its answers checked against `made serve` (scripts/image_check.sh).
image-check:
	bash scripts/image_check.sh

# `make bench` runs every script in bench/, the comparisons against SDV, sdmetrics,
# scikit-learn and miceforest among them (bench/quality.py, bench/impute_bench.py): it installs
# pyproject's bench extra, which `make test` and `make serve` leave out.
BENCH_STAMP := $(VENV)/.installed-bench
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

$(BENCH_STAMP): $(STAMP)
	@echo "==> the bench extra (SDV, sdmetrics, scikit-learn, miceforest; torch stays 2.13.0)"
	$(BIN)/python -m pip install --progress-bar on -e '.[train,cpu,dev,bench]'
	touch $(BENCH_STAMP)

bench-extra: $(BENCH_STAMP)

# made vs SDV GaussianCopula/CTGAN/TVAE, judged by sdmetrics (docs/quality.md; minutes, bounded).
quality: $(BENCH_STAMP)
	$(BIN)/python bench/quality.py

# The shipped default models, each rebuilt from scratch by one command (needs ../shared/data).
DATA ?= ../shared/data
# binarized-mnist trains on a fresh binarization of its 50,000 training images each epoch
# (--rebinarize mnist.npz); valid and test are the static binarized_mnist.npz sets.
BMNIST_RUN := runs/results/binarized_mnist-2x1000-k8-rebin
BMNIST_ARGS := --hidden 1000,1000 --masks 8 --connectivity-agnostic --direct --rebinarize $(DATA)/mnist.npz --lr-step 60 --lr-gamma 0.3 --max-epochs 240 --patience 40 --seed 0
MUSHROOMS_ARGS := --hidden 500 --masks 1 --weight-decay 1e-4 --max-epochs 300 --patience 30 --seed 0
# The table models: columns inferred from the CSV header and cells, 8 orderings of the columns.
TABLE_ARGS := --hidden 256,256 --masks 8 --order-agnostic --connectivity-agnostic --direct --max-epochs 150 --patience 20 --seed 0 --threads 1

models: model-binarized-mnist model-mushrooms model-diamonds model-health-insurance

model-binarized-mnist: install
	$(BIN)/made train --dataset $(DATA)/binarized_mnist.npz $(BMNIST_ARGS) --out $(BMNIST_RUN)
	$(BIN)/made export $(BMNIST_RUN) --store model_store --name binarized-mnist --weights float16

model-mushrooms: install
	$(BIN)/made train --dataset $(DATA)/mushrooms.npz $(MUSHROOMS_ARGS) --out runs/results/mushrooms-1x500-k1
	$(BIN)/made export runs/results/mushrooms-1x500-k1 --store model_store --name mushrooms

model-diamonds: install
	$(BIN)/made train --dataset $(DATA)/tables/diamonds_train.csv $(TABLE_ARGS) --out runs/results/diamonds-2x256-k8
	$(BIN)/made export runs/results/diamonds-2x256-k8 --store model_store --name diamonds

model-health-insurance: install
	$(BIN)/made train --dataset $(DATA)/tables/health_insurance_train.csv $(TABLE_ARGS) --out runs/results/health_insurance-2x256-k8
	$(BIN)/made export runs/results/health_insurance-2x256-k8 --store model_store --name health-insurance

# Trains every experiment of docs/results.md (hours on 2 cores).
results: install
	$(BIN)/python bench/results.py

# Trains the experiments of docs/tables.md: UCI sets as categories vs bits, the real tables.
tables: install
	$(BIN)/python bench/tables.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
