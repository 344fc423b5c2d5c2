"""Start ``tether serve`` as a child process and wait for its address (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

READY = "tether gateway on "


@dataclass
class Child:
    """A running ``tether serve``: its URL, database, token and process."""

    url: str
    db: str
    token: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


@contextlib.contextmanager
def spawn_gateway(
    directory: Path,
    *args: str,
    token: str,
    db: str | None = None,
    name: str = "gateway",
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[Child]:
    """``tether serve --port 0`` on 127.0.0.1 in ``directory``; killed on exit if still running."""
    db = db or str(directory / "tether.db")
    log = directory / f"{name}.log"
    child_env = dict(env if env is not None else os.environ)
    child_env.pop("TETHER_DB", None)
    child_env["TETHER_TOKEN"] = token
    child_env["PYTHONUNBUFFERED"] = "1"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "serve", "--db", db, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env,
            preexec_fn=preexec_fn,  # e.g. lower a resource limit in the child
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith(READY):
                break
        if not line.startswith(READY):
            raise RuntimeError(f"tether serve did not start: {log.read_text()}")
        yield Child(line.split()[3], db, token, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
