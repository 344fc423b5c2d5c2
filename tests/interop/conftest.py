"""The real Hermes: its own environment (``make test`` builds it) and stores it wrote."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import ROOT, skip_or_fail

# $TETHER_TEST_HERMES_PYTHON points elsewhere (the tests of this rule use a missing one).
HERMES_PYTHON = Path(
    os.environ.get("TETHER_TEST_HERMES_PYTHON") or ROOT / ".venv-hermes" / "bin" / "python"
)
FIXTURE = Path(__file__).resolve().parent / "hermes_fixture.py"
BUILD_IT = "build it with `make .venv-hermes/.installed` (`make test` does)"
# Every older release's own modules (`make .venv-hermes/releases/.installed` extracts them).
RELEASES = HERMES_PYTHON.parent.parent / "releases"
# Every schema generation a user may have on disk: each PyPI release (its schema version),
# and the git-main layouts derived from a release's store (hermes_fixture.py ``derive``).
RELEASE_SCHEMAS = {
    "0.13.0": 11,
    "0.14.0": 11,
    "0.15.0": 13,
    "0.15.1": 13,
    "0.15.2": 13,
    "0.16.0": 14,
    "0.17.0": 16,
    "0.18.0": 17,
    "0.18.1": 19,
    "0.18.2": 19,
    "0.19.0": 22,  # the environment's own hermes-agent
}
DERIVED = {"git-v2": ("0.13.0", "v2", 2), "git-v30": ("0.19.0", "v30", 30)}
GENERATIONS = {**RELEASE_SCHEMAS, **{name: d[2] for name, d in DERIVED.items()}}


def _hermes_env(release: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # tether's path must not leak into Hermes' environment
    if release is not None:  # an older release's modules first, 0.19.0's dependencies after
        env["PYTHONPATH"] = str(RELEASES / release)
    return env


def _fixture_command(path: Path, seed: int, conversations: int) -> list[str]:
    return [
        str(FIXTURE),
        "generate",
        str(path),
        "--seed",
        str(seed),
        "--conversations",
        str(conversations),
    ]


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
    skip_or_fail(reason)


def generate(
    python: Path, path: Path, seed: int, conversations: int = 60, release: str | None = None
) -> Path:
    """A state.db written by the real SessionDB (see hermes_fixture.py), of ``release``
    (an older release extracted under RELEASES) or of the environment's own Hermes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(python), *_fixture_command(path, seed, conversations)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=_hermes_env(release),
    )
    return path


@pytest.fixture(scope="session")
def hermes_generations(
    hermes_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One store per generation (GENERATIONS), seed 11: every release writes its own at
    once (they mostly wait on the disk), then the git-main layouts are derived."""
    missing = [v for v in RELEASE_SCHEMAS if v != "0.19.0" and not (RELEASES / v).is_dir()]
    if missing:
        reason = (
            f"no Hermes {', '.join(missing)} under {RELEASES}: build them with "
            "`make .venv-hermes/releases/.installed` (`make test` does)"
        )
        skip_or_fail(reason)
    base = tmp_path_factory.mktemp("generations")
    stores = {v: base / v / "state.db" for v in RELEASE_SCHEMAS}
    procs = []
    for version, path in stores.items():
        path.parent.mkdir()
        release = None if version == "0.19.0" else version
        procs.append(
            subprocess.Popen(
                [str(hermes_python), *_fixture_command(path, 11, 30)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_hermes_env(release),
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    for name, (source, generation, _) in DERIVED.items():
        path = base / name / "state.db"
        path.parent.mkdir()
        subprocess.run(
            [str(hermes_python), str(FIXTURE), "derive", str(stores[source]), str(path),
             "--generation", generation],
            check=True, capture_output=True, text=True, timeout=60, env=_hermes_env(),
        )  # fmt: skip
        stores[name] = path
    return stores


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
