# One entry point for people and CI: `make serve`, `make test`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast lint format check dist bench clean

# Test processes: the suite waits on real servers and subprocesses more than it computes, so
# more processes than cores still shortens it.
TEST_WORKERS ?= 4
# Tests go to the workers one at a time, longest first (tests/conftest.py): with the default
# chunks, one worker was left alone with the last long end-to-end runs.
XDIST := -n $(TEST_WORKERS) --maxschedchunk 1

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/trigmail serve

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(XDIST)

# What a developer runs between edits: everything but the end-to-end runs marked slow.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint test

# A wheel to install where there is no checkout (no release is published yet).
dist: $(BIN)/.installed
	$(BIN)/python -m pip wheel -q --no-deps -w dist .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist build
