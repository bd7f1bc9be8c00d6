# The two quickstart commands: `make run` (embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# Workflow rules run `python -m hiedit ...`: the virtual environment must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test lint report clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,report]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES)

report: install
	$(BIN)/snakemake --cores $(CORES) --report report.zip

# The linters first: a formatting slip fails in seconds, not after the test suite.
test: lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check hiedit lowrank_kernels tests benchmarks study
	$(BIN)/ruff format --check hiedit lowrank_kernels tests benchmarks study
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
