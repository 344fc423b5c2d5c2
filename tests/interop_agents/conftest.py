"""The OpenAI Agents SDK tests run only in the agents environment (.venv-agents).

openai-agents needs openai>=3, which conflicts with hermes-agent's pin, so it
never enters tether's own .venv: there these files are not collected at all
(not skipped). ``make test`` runs them with ``.venv-agents/bin/python``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where `make .venv-agents/.installed` extracts the SDK's own tests (from its sdist).
SDK_TESTS = ROOT / ".venv-agents" / "sdk-tests"

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("agents") is None:
    collect_ignore_glob = ["*.py"]
