"""Shared fixtures: stores on every backend, child processes, the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

import tether
from tether.compose import Store

ROOT = Path(__file__).resolve().parent.parent


# --- the PostgreSQL test server ------------------------------------------------------

PG_URL = os.environ.get("TETHER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
START_PG = (
    "start it with `scripts/ensure-postgres` (or: pg_ctlcluster --skip-systemctl-redirect "
    "$(ls /etc/postgresql) main start), or point $TETHER_TEST_PG at a server; see DEVELOPERS.md"
)


def skip_or_fail(reason: str) -> NoReturn:
    """A missing component: a failure under CI (it must be there), a skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def pg_admin() -> Any:
    """An autocommit connection to the test database, for setting up and cleaning up."""
    import psycopg

    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added."""
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def drop_schemas(*schemas: str) -> None:
    if not schemas:
        return
    with pg_admin() as conn:
        conn.execute("SET lock_timeout = '20s'")
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_connect(url: str) -> Any:
    """A direct autocommit connection to a test URL (its ``?schema=`` included)."""
    import psycopg

    from tether.store.postgres.url import parse

    target = parse(url)
    return psycopg.connect(target.conninfo, **target.kwargs)


@contextlib.contextmanager
def hold_writes(url: str) -> Iterator[None]:
    """Keep every other writer of the database at ``url`` waiting until the block ends."""
    if url.startswith("postgresql://"):
        conn = pg_connect(url)
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE sessions IN EXCLUSIVE MODE")  # readers still read
    else:
        conn = sqlite3.connect(url, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The test server's URL; a failure under CI=true, a skip that says what to do elsewhere."""
    try:
        import psycopg
    except ImportError:
        reason = "psycopg is not installed: pip install -e '.[test,postgres]'"
    else:
        try:
            pg_admin().close()
            return PG_URL
        except psycopg.Error as exc:
            reason = f"PostgreSQL is not reachable at {PG_URL} ({' '.join(str(exc).split())}); "
            reason += START_PG
    skip_or_fail(reason)


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend a contract test runs on: every test using it runs on both."""
    return str(request.param)


@pytest.fixture
def new_db(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases on the test's backend.

    On SQLite a new file (the first one is ``db_path``); on PostgreSQL a
    ``?schema=`` of its own in the test database, dropped afterwards, so runs on
    one server (other engineers', CI's) never see each other's rows.
    """
    base = request.getfixturevalue("pg_server") if backend == "postgres" else ""
    made: list[str] = []

    def make() -> str:
        n = len(made)
        if backend == "postgres":
            made.append(f"tether_test_{os.getpid()}_{uuid.uuid4().hex[:10]}")
            return with_params(base, schema=made[-1])
        made.append(str(tmp_path / ("tether.db" if n == 0 else f"tether{n}.db")))
        return made[-1]

    yield make
    if backend == "postgres":
        drop_schemas(*made)


@pytest.fixture
def db_url(new_db: Callable[[], str]) -> str:
    """A fresh database on each backend: a SQLite path, or a PostgreSQL URL with its schema."""
    return new_db()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A SQLite file (for tests about files, WAL and pragmas)."""
    return str(tmp_path / "tether.db")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """An open store on each backend."""
    s = tether.open_store(db_url, load_plugins=False)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sqlite_store(db_path: str) -> Iterator[Store]:
    """An open SQLite store on ``db_path``."""
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
import faulthandler, os, signal, sys, time
# A child that hangs can be asked where: SIGUSR2 dumps every thread's stack to stderr.
faulthandler.register(signal.SIGUSR2, all_threads=True)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
import tether


def idle(seconds=60.0):
    # Waits in short sleeps, never one long one: CPython runs a Python signal handler
    # between bytecodes, so a signal landing after the last check and before a long
    # sleep() began would wait for that whole sleep (seen: 1 run in 200 under load).
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
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


def dump_stacks_and_kill(proc: subprocess.Popen[str]) -> None:
    """A hung child from :func:`spawn`: every thread's stack to its stderr, then SIGKILL."""
    proc.send_signal(signal.SIGUSR2)  # faulthandler, registered by CHILD_PRELUDE
    time.sleep(1.0)
    proc.kill()


def finish_child(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[int, str, str]:
    """Wait for a child from :func:`spawn`; a hang fails with every thread's stack."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(proc)
        out, err = proc.communicate()
        pytest.fail(f"child still running after {timeout} s; stdout {out!r}; stacks:\n{err}")
    return proc.returncode, out, err


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
