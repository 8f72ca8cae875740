# The two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What is installed, each with its own stamp: the dev toolchain (tests, lint) for
# everything but the demo, which needs only the package and its demo extra.
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-installed-stamp

.PHONY: demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/hfauth-mw demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy --strict src

format: $(STAMP)
	$(BIN)/ruff format src tests examples bench
	$(BIN)/ruff check --fix src tests examples bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@command -v wrk >/dev/null || echo "wrk not found: the end-to-end part will be skipped (apt-get install wrk)"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
