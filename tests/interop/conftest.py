"""The real Hermes: its own environment (``make test`` builds it) and stores it wrote."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import ROOT

# $TETHER_TEST_HERMES_PYTHON points elsewhere (the tests of this rule use a missing one).
HERMES_PYTHON = Path(
    os.environ.get("TETHER_TEST_HERMES_PYTHON") or ROOT / ".venv-hermes" / "bin" / "python"
)
FIXTURE = Path(__file__).resolve().parent / "hermes_fixture.py"
BUILD_IT = "build it with `make .venv-hermes/.installed` (`make test` does)"


def _hermes_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # tether's path must not leak into Hermes' environment
    return env


@pytest.fixture(scope="session")
def hermes_python() -> Path:
    """The Hermes environment's interpreter; a failure under CI=true, a skip elsewhere."""
    if not HERMES_PYTHON.exists():
        reason = f"no Hermes environment at {HERMES_PYTHON}: {BUILD_IT}"
    else:
        probe = subprocess.run(
            [str(HERMES_PYTHON), "-c", "import hermes_state; print(hermes_state.SCHEMA_VERSION)"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_hermes_env(),
        )
        if probe.returncode == 0:
            return HERMES_PYTHON
        reason = f"hermes-agent does not import in {HERMES_PYTHON}: {BUILD_IT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def generate(python: Path, path: Path, seed: int, conversations: int = 60) -> Path:
    """A state.db written by the real SessionDB (see hermes_fixture.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(python),
            str(FIXTURE),
            "generate",
            str(path),
            "--seed",
            str(seed),
            "--conversations",
            str(conversations),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=_hermes_env(),
    )
    return path


def start_writer(
    python: Path, path: Path, seconds: float, rate: float = 100
) -> subprocess.Popen[str]:
    """A live Hermes appending through SessionDB; returns once it has written its first row."""
    proc = subprocess.Popen(
        [
            str(python),
            str(FIXTURE),
            "write",
            str(path),
            "--seconds",
            str(seconds),
            "--rate",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_hermes_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the writer is ready (or has died)
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def writer_report(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def hermes_store(hermes_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated store (seed 7), shared: tests that change a store copy it first."""
    return generate(hermes_python, tmp_path_factory.mktemp("hermes") / "state.db", seed=7)
