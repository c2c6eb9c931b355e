# Two entry points (see README): `make demo` and `make test`. Both start from nothing and
# install exactly the versions in requirements/lock.txt (hash-checked, no resolver).
#   make lock         add to requirements/lock.txt what pyproject.toml newly needs (other pins kept)
#   make lock-upgrade re-resolve requirements/lock.txt to the newest versions pyproject.toml allows
#   make test-latest  the tests against the newest versions pyproject.toml allows (a separate venv),
#                     so a new release that breaks fabsight fails here before it reaches a user
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
NODEPS := requirements/no-deps.txt
LATEST := .venv-latest

.PHONY: demo test test-latest lint install install-test lock lock-upgrade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock holds every package with its hashes; --no-deps keeps pip from adding anything
# the lock does not name. fabsight itself goes in editable, built with the locked setuptools.
$(VENV)/.installed: $(LOCK) $(NODEPS) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(NODEPS)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed
# the lock already holds the test tools: one environment for the demo and the tests
install-test: install
	touch $(VENV)/.installed-test

demo: install
	$(BIN)/fabsight demo --out demo_out

test: install-test
	$(BIN)/python -m ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q

lock lock-upgrade: | $(BIN)/python
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/python requirements/lock.py $(if $(filter lock-upgrade,$@),--upgrade)

test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[all,test]'
	$(LATEST)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(NODEPS)
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m ruff check src tests benchmarks scripts
	$(LATEST)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(LATEST) demo_out .pytest_cache
