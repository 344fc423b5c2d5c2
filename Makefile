# The two Quickstart commands: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The real hermes-agent for the interop tests, in its own environment: it pins exact
# versions (openai==2.24.0, ...) that tether's environment must not carry.
HERMES_VENV    := .venv-hermes
HERMES_VERSION := 0.19.0

.PHONY: run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	@touch $@ $(VENV)/.installed

$(HERMES_VENV)/.installed:
	$(PYTHON) -m venv $(HERMES_VENV)
	$(HERMES_VENV)/bin/python -m pip install --quiet 'hermes-agent==$(HERMES_VERSION)'
	@touch $@

run: $(VENV)/.installed
	@echo "tether is installed in $(BIN); in another terminal, '. $(BIN)/activate' puts it on PATH"
	$(BIN)/tether serve

test: $(VENV)/.installed-test $(HERMES_VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy  # src/tether, configured in pyproject.toml [tool.mypy]
	./scripts/ensure-postgres
	$(BIN)/python -m pytest
	# The gateway and chat tests again, three times over on two workers: races show up here.
	$(BIN)/python -m pytest -q -n 2 --count 3 tests/gateway

bench: $(VENV)/.installed-test
	./scripts/ensure-postgres
	$(BIN)/python -m bench store

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(HERMES_VENV) build src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
