# One command for each job; every job sets itself up first, so a fresh clone
# needs nothing else. `setup` is idempotent: it reinstalls only when
# pyproject.toml or constraints.txt change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The data root: the one spelling of storage/ here; hsmr_data/layout.py (DataRoot) names everything under it.
ROOT := storage
MODELS := $(ROOT)/models
# `make convert DATASET_DIR=... TABLE=...` converts another dataset, `make refine-round RUN_DIR=...` refines
# from another run; left unset, the flows take the demo's paths from hsmr_data/layout.py (storage/...).
SYNTH_N ?= 256
DATASET_DIR ?=
TABLE ?=
RUN_DIR ?=
# The options each is passed as, only when set.
DATA_OPTIONS = $(if $(DATASET_DIR),--dataset-dir $(DATASET_DIR)) $(if $(TABLE),--table $(TABLE))
PREFECT_PORT ?= 4200

# Prefect on this machine (see flows/settings.py): its database and results under storage/, no
# analytics (no network), and time for the temporary API server that runs without `make server`.
# `?=`: a value from the environment wins.
export PREFECT_HOME ?= $(CURDIR)/$(ROOT)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: setup test demo bodies bench lint models convert dashboard refine-round server serve deploy worker clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dask]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

models: setup
	$(BIN)/hsmr models synth --out $(MODELS)
	$(BIN)/hsmr models keypoints --joints $(MODELS)/hsmr/J_regressor_SKEL_mix_MALE.pkl \
		--extra $(MODELS)/hsmr/SMPL_to_J19.pkl --out $(MODELS)/smpl

# The whole pipeline on the synthetic default (flows/pipeline.py): bodies rendered, the dataset made
# once (kept while its manifest exists), then convert, export, train with in-loop SKELify, a
# refine round, the evaluation report and the label dashboard, on the temporary local Prefect API
# (no server to start). It prints where the dashboard and the report are.
demo: bodies
	$(BIN)/python -m flows.pipeline --root $(ROOT) --count $(SYNTH_N)

bodies: models
	$(BIN)/hsmr demo --models $(MODELS) --out $(ROOT)/demo

convert: setup
	$(BIN)/python -m flows.convert $(DATA_OPTIONS) --models $(MODELS)

# The label-quality page of the demo's table (storage/reports/label_dashboard.html, open it in a browser)
# and its Prefect artifacts; the flow's defaults are the demo's paths, so it takes no argument.
dashboard: setup
	$(BIN)/python -m flows.dashboard

# One SKELify refinement round (the refine-round flow, the default refiner chosen by `hsmr study refine`) of the
# demo's table on the predictions the training run (RUN_DIR, default the demo's) wrote at its latest checkpoint;
# the round's statistics go next to the table ({table}-rounds/). A rerun on the same predictions is recognised as done.
refine-round: setup
	$(BIN)/python -m flows.refine $(if $(RUN_DIR),--predictions $(RUN_DIR)/predictions.parquet) $(DATA_OPTIONS) \
		--models $(MODELS)

# A Prefect server with its UI at http://127.0.0.1:$(PREFECT_PORT) (SQLite under PREFECT_HOME), and
# in another shell the deployments of every flow, served by one process against it.
server: setup
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

serve: setup
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/python -m flows.serve

# Beyond `serve`: every flow deployed to a `process` work pool, and a worker that runs what it queues
# (PREFECT_API_URL defaults to `make server`'s; each worker machine runs `make worker`).
POOL ?= hsmr
deploy: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api} $(BIN)/python -m flows.deploy --pool $(POOL)

worker: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api} $(BIN)/prefect worker start --pool $(POOL)

bench: models
	$(BIN)/python bench/bench_body_models.py --models $(MODELS) --out $(ROOT)/bench/body_models.json
	$(BIN)/python bench/bench_synth.py --models $(MODELS) --out $(ROOT)/bench/synth.json
	$(BIN)/python bench/bench_convert.py --models $(MODELS) --out $(ROOT)/bench/convert.json
	$(BIN)/python bench/bench_skelify.py --models $(MODELS) --out $(ROOT)/bench/skelify.json --threads 1
	$(BIN)/python bench/bench_scaleout.py --models $(MODELS) --out $(ROOT)/bench/scaleout.json
	$(BIN)/python bench/bench_sequences.py --models $(MODELS) --out $(ROOT)/bench/sequences.json
	$(BIN)/python bench/bench_predict.py --models $(MODELS) --out $(ROOT)/bench/predict.json
	$(BIN)/python bench/bench_train.py --models $(MODELS) --out $(ROOT)/bench/train.json --threads 1 --sizes tiny,small --steps 30
	$(BIN)/python bench/study_refine.py --models $(MODELS) --out $(ROOT)/bench/study_refine.json
	$(BIN)/python bench/study_table5.py --models $(MODELS) --out $(ROOT)/bench/study_table5.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(addprefix $(ROOT)/,models bench demo datasets/synth labels/synth prefect reports)
