# The two Quickstart commands: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

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

run: $(VENV)/.installed
	@echo "tether is installed in $(BIN); in another terminal, '. $(BIN)/activate' puts it on PATH"
	$(BIN)/tether serve

test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy  # src/tether, configured in pyproject.toml [tool.mypy]
	$(BIN)/lint-imports  # the layers contract, pyproject.toml [tool.importlinter]
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
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
