# One command for each job; every job sets itself up first, so a fresh clone
# needs nothing else. `setup` is idempotent: it reinstalls only when
# pyproject.toml or constraints.txt change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS := storage/models

.PHONY: setup test demo bench lint models clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

models: setup
	$(BIN)/hsmr models synth --out $(MODELS)

demo: models
	$(BIN)/hsmr demo --models $(MODELS) --out storage/demo

bench: models
	$(BIN)/python bench/bench_body_models.py --models $(MODELS) --out storage/bench/body_models.json
	$(BIN)/python bench/bench_synth.py --models $(MODELS) --out storage/bench/synth.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) storage/models storage/bench storage/demo
