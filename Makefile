# The two Quickstart commands: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The real hermes-agent for the interop tests, in its own environment: it pins exact
# versions (openai==2.24.0, ...) that tether's environment must not carry.
HERMES_VENV    := .venv-hermes
HERMES_VERSION := 0.19.0

.PHONY: run test bench bench-peers bench-agents lint clean

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

# Every older release on PyPI (one Hermes schema generation or more each: 0.13 is schema 11,
# 0.19 schema 22), for the fixtures of every generation a user may have on disk: each
# release's own hermes_state.py (and the modules of its wheel it imports) run beside the
# newest release's dependencies, through PYTHONPATH=$(HERMES_RELEASES)/<version>. Downloaded
# once, without dependencies; the tests read them offline.
HERMES_RELEASES    := $(HERMES_VENV)/releases
# A wheel's Python modules, without its metadata (no unzip needed on a fresh machine).
export HERMES_EXTRACT := import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	z.extractall(sys.argv[2], [n for n in z.namelist() if n.endswith('.py') and '.dist-info/' not in n])
HERMES_OLD_VERSIONS := 0.13.0 0.14.0 0.15.0 0.15.1 0.15.2 0.16.0 0.17.0 0.18.0 0.18.1 0.18.2

$(HERMES_RELEASES)/.installed: | $(HERMES_VENV)/.installed
	rm -rf $(HERMES_RELEASES) && mkdir -p $(HERMES_RELEASES)/wheels
	for v in $(HERMES_OLD_VERSIONS); do \
		$(HERMES_VENV)/bin/python -m pip download --quiet --no-deps \
			--dest $(HERMES_RELEASES)/wheels "hermes-agent==$$v" && \
		mkdir -p $(HERMES_RELEASES)/$$v && \
		$(HERMES_VENV)/bin/python -c "$$HERMES_EXTRACT" \
			$(HERMES_RELEASES)/wheels/hermes_agent-$$v-py3-none-any.whl \
			$(HERMES_RELEASES)/$$v || exit 1; \
	done
	rm -rf $(HERMES_RELEASES)/wheels
	@touch $@

run: $(VENV)/.installed
	@echo "tether is installed in $(BIN); in another terminal, '. $(BIN)/activate' puts it on PATH"
	$(BIN)/tether serve

# The OpenAI Agents SDK needs openai>=3, which conflicts with hermes-agent's pin: it gets an
# environment of its own, with tether installed into it, and the SDK's own session tests (they
# ship only in its sdist) extracted under it, so that no test downloads anything.
AGENTS_VENV := .venv-agents
AGENTS_SDK  := openai-agents==0.24.0
# What bench/sdk_sessions.py compares TetherSession with on PostgreSQL: the SDK's SQLAlchemySession.
AGENTS_BENCH := 'sqlalchemy[asyncio]>=2.0' 'asyncpg>=0.29'

$(AGENTS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AGENTS_VENV)
	$(AGENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AGENTS_VENV)/bin/python -m pip install --quiet -e '.[test,postgres]' '$(AGENTS_SDK)' pytest-asyncio \
		$(AGENTS_BENCH)
	rm -rf $(AGENTS_VENV)/sdk-tests $(AGENTS_VENV)/sdist && mkdir -p $(AGENTS_VENV)/sdk-tests
	$(AGENTS_VENV)/bin/python -m pip download --quiet --no-binary :all: --no-deps \
		--dest $(AGENTS_VENV)/sdist '$(AGENTS_SDK)'
	tar -xzf $(AGENTS_VENV)/sdist/openai_agents-*.tar.gz -C $(AGENTS_VENV)/sdk-tests \
		--strip-components=1 --wildcards '*/tests' '*/pyproject.toml'
	@touch $@

# The live view's browser tests drive Debian's chromium through Playwright (never a
# browser download: no `playwright install`). As root (CI) it is installed when missing.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "the browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; \
	fi

test: $(VENV)/.installed-test $(HERMES_VENV)/.installed $(HERMES_RELEASES)/.installed \
		$(AGENTS_VENV)/.installed $(CHROMIUM)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy  # src/tether, configured in pyproject.toml [tool.mypy]
	$(BIN)/lint-imports  # the layers contract, pyproject.toml [tool.importlinter]
	./scripts/ensure-postgres
	$(BIN)/python -m pytest
	# The gateway and chat tests again, three times over on two workers: races show up here.
	$(BIN)/python -m pytest -q -n 2 --count 3 tests/gateway
	# The OpenAI Agents SDK adapter, in its own environment (with the SDK's own session tests).
	$(AGENTS_VENV)/bin/python -m pytest -q -o asyncio_default_fixture_loop_scope=function tests/interop_agents

bench: $(VENV)/.installed-test
	./scripts/ensure-postgres
	$(BIN)/python -m bench store

# LangGraph's SqliteSaver, for `python -m bench peers` only (never needed by `make test`):
# an environment of its own, like the other peers, so that no pin reaches tether's.
LANGGRAPH_VENV := .venv-langgraph
LANGGRAPH_PKG  := langgraph-checkpoint-sqlite==3.1.2

$(LANGGRAPH_VENV)/.installed:
	$(PYTHON) -m venv $(LANGGRAPH_VENV)
	$(LANGGRAPH_VENV)/bin/python -m pip install --quiet '$(LANGGRAPH_PKG)'
	@touch $@

# Tether beside Hermes' SessionDB, the Agents SDK's sessions and LangGraph's saver, in one run.
bench-peers: $(VENV)/.installed-test $(HERMES_VENV)/.installed $(AGENTS_VENV)/.installed \
		$(LANGGRAPH_VENV)/.installed
	./scripts/ensure-postgres
	$(BIN)/python -m bench peers
# TetherSession against the SDK's SQLiteSession and SQLAlchemySession (PostgreSQL).
bench-agents: $(AGENTS_VENV)/.installed
	./scripts/ensure-postgres
	$(AGENTS_VENV)/bin/python -m bench sdk_sessions

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(HERMES_VENV) $(AGENTS_VENV) $(LANGGRAPH_VENV) build src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
