# deepmmsearch — every target installs what it needs into .venv first.
#   make test    the whole test suite (unit + integration against real servers on loopback)
#   make lint    ruff
#   make bench   every benchmark in bench/ (JSON to stdout and bench-results/)
#   make gpu-wheels                    wheels/ for the lent GPU machine (no network there; <= 60 MB)
#   make gpu-check [DEVICE=cuda|cpu]   the prepared GPU check (bench/gpu_check.py); CI runs DEVICE=cpu
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DMMS := $(VENV)/bin/dmms
STAMP := $(VENV)/.installed

.PHONY: install test lint bench browser gpu-wheels gpu-check

install: $(STAMP)

# torch first and pinned (docs/facts.md: the 2.14.1 CUDA build runs on CPU and matches torchvision),
# then the package with its dev extra under the constraints file (the resolved, tested versions).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Headless Chromium renders the HTML report in the screenshot tests; installed from Debian's
# packages when we are root and it is missing (otherwise those tests skip and say why).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed; the report screenshot tests will skip" >&2

test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check components pipelines tests bench

# Each bench/<name>.py prints one JSON report (docs/design.md §7) and writes bench-results/<name>.json.
bench: $(STAMP)
	@set -e; for f in bench/*.py; do \
	  name=$$(basename $$f .py); \
	  case $$name in __init__|report|served|expert_data|gpu_wheels) continue;; esac; \
	  echo "== bench $$name" >&2; $(PY) -m bench.$$name; \
	done

# ---- the prepared GPU check (bench/gpu_check.py, bench/gpu_wheels.py) -------------------------
# On the GPU machine only its own Python (torch, transformers, ...) and this folder exist: wheels go to
# a target whose path holds "site-packages" (dill, under datasets' fingerprints, pickles modules from
# anywhere else by value, and fails); torchvision only when the machine has none.
DEVICE ?= cuda
GPU_PYTHON ?= python3
GPU_WHEELS ?= wheels
GPU_SITE ?= .gpu/site-packages

gpu-wheels: $(STAMP)
	$(PY) -m bench.gpu_wheels --out $(GPU_WHEELS)

ifeq ($(DEVICE),cpu)
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check --device cpu
else
gpu-check:
	@test -f $(GPU_WHEELS)/manifest.json || { echo "no $(GPU_WHEELS)/: run 'make gpu-wheels' where there is a network"; exit 1; }
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --target $(GPU_SITE) $(GPU_WHEELS)/*.whl
	$(GPU_PYTHON) -c 'import torchvision' 2>/dev/null || \
	  $(GPU_PYTHON) -m pip install -q --no-index --no-deps --target $(GPU_SITE) $(GPU_WHEELS)/optional/torchvision-*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PYTHON) -m bench.gpu_check --device $(DEVICE)
endif

# ---- pipelines (pipelines/, components/kfp/) --------------------------------------------------
#   make run                                   smoke pipeline end to end, KFP local runner, this machine
#   make compile                               YAML of every pipeline into build/pipelines/
#   make submit PIPELINE=full [RUN_NAME=...] ARGS="--param seed_vqa_uri=s3://… --param extra_benchmarks=…"
#                                              one run on KFP_HOST (ARGS="--allow-synthetic": the offline world)
#   make schedule PIPELINE=retrain CRON="0 3 * * 0"   a recurring run on KFP_HOST
#   make promote EVAL_RUN=<id> [CHECKPOINT=<uri>]     gated promotion in the MLflow registry
#   make deploy OVERLAY=dev                    kubectl apply -k manifests/overlays/$(OVERLAY)
#   make images REGISTRY=ghcr.io/you/deepmmsearch    build and push the images
.PHONY: run compile submit schedule promote deploy images
PIPELINE ?= smoke
OVERLAY ?= dev
REGISTRY ?= $(DMMS_PIPELINES__IMAGE_REGISTRY)

run: $(STAMP)
	$(DMMS) run --pipeline $(PIPELINE)

compile: $(STAMP)
	$(DMMS) compile --out build/pipelines

submit: $(STAMP)
	$(DMMS) submit --pipeline $(PIPELINE) $(if $(RUN_NAME),--run-name $(RUN_NAME)) $(ARGS)

schedule: $(STAMP)
	@[ -n "$(CRON)" ] || { echo 'error: set CRON, e.g. make schedule PIPELINE=retrain CRON="0 3 * * 0"' >&2; exit 2; }
	$(DMMS) schedule --pipeline $(PIPELINE) --cron "$(CRON)" $(ARGS)

promote: $(STAMP)
	$(DMMS) promote $(if $(EVAL_RUN),--eval-run $(EVAL_RUN)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(ROLLBACK),--rollback)

deploy:
	@command -v kubectl >/dev/null 2>&1 || { echo "error: kubectl is not installed" >&2; exit 2; }
	@kubectl config current-context >/dev/null 2>&1 || { echo "error: kubectl has no current context: point it at your cluster (kubectl config use-context NAME)" >&2; exit 2; }
	@[ -d manifests/overlays/$(OVERLAY) ] || { echo "error: no overlay manifests/overlays/$(OVERLAY) (local, dev, prod)" >&2; exit 2; }
	kubectl apply -k manifests/overlays/$(OVERLAY)

images:
	REGISTRY="$(REGISTRY)" images/build.sh
