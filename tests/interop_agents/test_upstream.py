"""The OpenAI Agents SDK's own session tests, run against TetherSession.

The SDK ships them in its source distribution only; ``make test`` extracts
them into ``.venv-agents/sdk-tests`` (a download, so never done here). They
run in a child pytest, in that tree (their imports say ``from tests...``),
with ``sdk_plugin`` substituting the class under test and deselecting the
tests listed in ``sdk_plugin.DESELECTED``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import SDK_TESTS
from .sdk_plugin import DESELECTED

MODULES = [
    "tests/memory/test_session.py",
    "tests/memory/test_session_limit.py",
    "tests/memory/test_session_context_wrapper.py",
    "tests/test_hitl_session_scenario.py",
]


def test_the_sdk_session_suite_passes_against_tether_session() -> None:
    # Missing tests fail (never skip): `make .venv-agents/.installed` puts them there.
    missing = [m for m in MODULES if not (SDK_TESTS / m).is_file()]
    assert not missing, f"run `make .venv-agents/.installed` first: missing {missing}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "sdk_plugin",
            "-q",
            "-p",
            "no:cacheprovider",
            *MODULES,
        ],
        cwd=SDK_TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    counts = {
        k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", summary)
    }
    # Everything selected passes; nothing is skipped; exactly the listed tests are left out
    # (one of them is parametrized three ways: add, pop, clear).
    assert counts.get("failed", 0) == counts.get("skipped", 0) == counts.get("error", 0) == 0, tail
    assert counts["deselected"] == len(DESELECTED) + 2, tail
    assert counts["passed"] >= 70, tail
    print(summary)
