# lmforge: `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev,serve,eval,tensorboard,wandb,data,zh]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmforge prepare --input builtin:python-docs --out data/demo --vocab-size 4096 --overwrite
	$(BIN)/lmforge pretrain --config configs/gpt-nano-cpu.yaml --data data/demo --out runs/demo --overwrite
	@echo "--- samples (temperature 0.8, top-k 50) ---"
	$(BIN)/lmforge -q generate runs/demo --prompt "The list type" --max-new-tokens 80 \
		--temperature 0.8 --top-k 50 --seed 1 --num-samples 2
	$(BIN)/lmforge -q generate runs/demo --prompt "Return a new" --max-new-tokens 60 --temperature 0
	$(BIN)/lmforge evaluate runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/train_shakespeare_char.py --data ../shared/data/tinyshakespeare.txt

clean:
	rm -rf $(VENV) data/demo runs/demo
