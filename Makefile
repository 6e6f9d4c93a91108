# Every target creates .venv and installs what it needs by itself. Each stamp records one install into .venv
# and is redone when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
STAMP       := $(VENV)/.installed-dev
DEMO_STAMP  := $(VENV)/.installed-demo
BENCH_STAMP := $(VENV)/.installed-bench
NOX_STAMP   := $(VENV)/.installed-nox
DOCS_STAMP  := $(VENV)/.installed-docs
# The dev tool of `make matrix` (noxfile.py), pinned as ruff and mypy are.
NOX    := nox==2026.10.20

.PHONY: venv test lint typecheck pytest matrix oldest demo bench docs format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# pytest exits 5 when it ran no test; make propagates any non-zero exit, so that fails too.
test: lint typecheck pytest

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(NOX_STAMP): Makefile | $(BIN)/python
	$(PIP) "$(NOX)"
	touch $(NOX_STAMP)

# The version matrix (noxfile.py): each Python on the newest dependencies, the oldest dependencies, the WSGI+
# worker on each gunicorn it claims and below its floor; each session has its own venv under .nox/.
# `make matrix NOX_ARGS="-s tests-3.13 -- tests/tasks"` runs one session on some tests.
matrix: $(NOX_STAMP)
	$(BIN)/nox $(NOX_ARGS)

# The oldest-dependencies session alone: CI runs it after `make test`.
oldest: $(NOX_STAMP)
	$(BIN)/nox --session oldest $(NOX_ARGS)

# What the demo imports: the package, prometheus_client (its /metrics) and waitress; not the dev extra.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e ".[metrics]" "waitress>=3.0"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.demo

# The peers (the bench extra), and the servers and clients of the dev extra.
$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e ".[dev,bench]"
	touch $(BENCH_STAMP) $(STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[docs]"
	touch $(DOCS_STAMP)

# The API reference from the docstrings (and the guides in docs/*.md); any warning fails the build.
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
