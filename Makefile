# Two commands on a fresh clone: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench clean models model-binarized-mnist model-mushrooms results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU wheel of torch, pinned: any range admitting a newer one pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[train,cpu,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/made serve --host 127.0.0.1 --port 8000

lint: install
	$(BIN)/ruff check made service training tests bench scripts
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run_all.py

# The shipped default models, each rebuilt from scratch by one command (needs ../shared/data).
DATA ?= ../shared/data
# binarized-mnist trains on a fresh binarization of its 50,000 training images each epoch
# (--rebinarize mnist.npz); valid and test are the static binarized_mnist.npz sets.
BMNIST_RUN := runs/results/binarized_mnist-2x1000-k8-rebin
BMNIST_ARGS := --hidden 1000,1000 --masks 8 --connectivity-agnostic --direct --rebinarize $(DATA)/mnist.npz --lr-step 60 --lr-gamma 0.3 --max-epochs 240 --patience 40 --seed 0
MUSHROOMS_ARGS := --hidden 500 --masks 1 --weight-decay 1e-4 --max-epochs 300 --patience 30 --seed 0

models: model-binarized-mnist model-mushrooms

model-binarized-mnist: install
	$(BIN)/made train --dataset $(DATA)/binarized_mnist.npz $(BMNIST_ARGS) --out $(BMNIST_RUN)
	$(BIN)/made export $(BMNIST_RUN) --store model_store --name binarized-mnist --weights float16

model-mushrooms: install
	$(BIN)/made train --dataset $(DATA)/mushrooms.npz $(MUSHROOMS_ARGS) --out runs/results/mushrooms-1x500-k1
	$(BIN)/made export runs/results/mushrooms-1x500-k1 --store model_store --name mushrooms

# Trains every experiment of docs/results.md (hours on 2 cores).
results: install
	$(BIN)/python bench/results.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
