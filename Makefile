# Two entry points the README names: `make demo` (main job) and `make test` (test suite).
# Both create .venv on first use. TORCH pins what this project's CI machine has on disk; the package's own
# dependency ranges (pyproject.toml) stay wide, so override TORCH elsewhere, e.g. `make demo TORCH=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/racnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[lite,export,app,mat,dev]"
	touch $(BIN)/racnn

setup: $(BIN)/racnn

demo: setup
	$(BIN)/racnn demo

test: setup
	$(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
