"""Shared fixtures: stores on every backend, child processes, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tether.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "tether.db")


@pytest.fixture
def store(db_path: str) -> Iterator[Store]:
    s = tether.open_store(db_path, load_plugins=False)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def clock() -> tether.ManualClock:
    return tether.ManualClock()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TETHER_DB", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# Children start with the dispositions an interactive program has, whatever
# the test runner inherited (a background job ignores SIGINT, nohup ignores SIGHUP).
CHILD_PRELUDE = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
import tether
"""


def spawn(code: str, *args: str, **env: str) -> subprocess.Popen[str]:
    """Start a Python child running ``code`` (dedented, after the prelude)."""
    script = CHILD_PRELUDE + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(**env),
    )


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float = 20.0) -> str:
    """Read the child's stdout until a line equal to ``expected`` arrives."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.strip() == expected:
            return line
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"child never said {expected!r}; stdout={seen!r} stderr={err}")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``tether`` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        env=child_env(**(env or {})),
        timeout=timeout,
    )
