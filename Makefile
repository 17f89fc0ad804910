# muco-pipeline: the two commands are `make run` (reproduce the pipeline) and `make test`.
# Everything is installed into project-local environments:
#   .venv      the project (torch, transformers, Dagster, test tools)
#   .venv-dvc  DVC alone: its antlr4 pin would break Dagster's asset-selection parser.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
DVC_VENV ?= .venv-dvc
PY := $(VENV)/bin/python
DVC := $(CURDIR)/$(DVC_VENV)/bin/dvc
# CPU machines get the CPU build of torch pinned; where nvidia-smi exists the user's torch is
# kept (install it into .venv first, or build the venv with VENV_FLAGS=--system-site-packages).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_CONSTRAINTS ?= $(if $(HAS_GPU),,constraints/cpu.txt)
EXTRAS ?= orchestration,train,teacher,dev
VENV_FLAGS ?=
PIP_CONSTRAINTS := $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS))
PYTEST_ARGS ?=
export MUCO_DVC := $(DVC)
export DAGSTER_HOME := $(CURDIR)/.dagster

.PHONY: help install run test test-all test-browser ui materialize lint format clean

help:
	@echo "make run       install, reproduce the pipeline with dvc repro, print a summary"
	@echo "make test      install dev dependencies and run the test suite (without slow tests)"
	@echo "make test-all  the whole suite, slow end-to-end tests included"
	@echo "make test-browser  the Dagster UI in headless Chromium (screenshots in reports/browser/)"
	@echo "make ui        start the Dagster UI on http://127.0.0.1:3000 (UI_PORT=...)"
	@echo "make materialize  materialise every Dagster asset from the command line"
	@echo "make lint      ruff check and format check"

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# DeepSpeed ships as a source distribution whose build imports torch: built in an isolated
# environment it would download a CUDA torch there. So torch and the build tools come first and
# the project installs without build isolation; DS_BUILD_OPS=0 compiles no op ahead of time.
$(VENV)/.installed: pyproject.toml Makefile $(TORCH_CONSTRAINTS) | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) torch "setuptools>=77" wheel
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation $(PIP_CONSTRAINTS) \
		-e ".[$(EXTRAS)]"
	touch $@

$(DVC): constraints/dvc.txt
	$(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install --quiet -r constraints/dvc.txt
	touch $@

install: $(VENV)/.installed $(DVC)

$(DAGSTER_HOME)/dagster.yaml: orchestration/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp $< $@

run: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(DVC) repro
	$(VENV)/bin/muco summary

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The browser suite (also part of test-all): Playwright drives the system's Chromium
# ($$MUCO_CHROMIUM or chromium on PATH; skipped without one) through the Dagster UI.
test-browser: install
	$(PY) -m pytest -m browser tests/browser $(PYTEST_ARGS)

# The launcher runs `dagster dev` in its own process group and stops all of it on Ctrl-C,
# SIGTERM or SIGHUP (dagster dev alone ignores SIGTERM when started in the background).
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
ui: install $(DAGSTER_HOME)/dagster.yaml
	exec $(PY) -m orchestration.ui --host $(UI_HOST) --port $(UI_PORT)

materialize: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster asset materialize --select '*' -m orchestration.definitions

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(DVC_VENV) .pytest_cache .ruff_cache
