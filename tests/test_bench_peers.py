"""The peers benchmark's worker speaks its JSON protocol for tether and for real Hermes.

Small sizes, real stores: a worker that broke would only show up in a long
benchmark run otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "peer_worker.py"
HERMES_PYTHON = ROOT / ".venv-hermes" / "bin" / "python"
AGENTS_PYTHON = ROOT / ".venv-agents" / "bin" / "python"


class Worker:
    def __init__(self, python: Path | str) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def ask(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply

    def close(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        return code


def exercise(python: Path | str, peer: str, db: Path) -> dict[str, dict[str, Any]]:
    w = Worker(python)
    try:
        out = {"open": w.ask(op="open", peer=peer, path=str(db))}
        out["append"] = w.ask(op="append", n=5)
        out["batch"] = w.ask(op="batch", n=20, b=10)
        out["read"] = w.ask(op="read", n=150)
        out["end"] = w.ask(op="end", n=3)
        out["grow"] = w.ask(op="grow", start=0, count=30)
        out["list"] = w.ask(op="list")
        out["stats"] = w.ask(op="stats")
    finally:
        assert w.close() == 0
    return out


def check(out: dict[str, dict[str, Any]], version: str) -> None:
    assert out["open"]["ok"]["version"].startswith(version)
    for op in ("append", "batch", "read", "end", "grow", "list"):
        assert 0 < out[op]["ok"] < 60, (op, out[op])
    assert out["stats"]["ok"]["bytes"] > 0 and out["stats"]["ok"]["rss"] > 0


def test_tether_peer(tmp_path: Path) -> None:
    check(exercise(sys.executable, "tether", tmp_path / "t.db"), "tether ")


def test_hermes_peer(tmp_path: Path) -> None:
    if not HERMES_PYTHON.exists():
        pytest.fail(".venv-hermes is missing: make .venv-hermes/.installed")
    check(exercise(HERMES_PYTHON, "hermes", tmp_path / "h.db"), "hermes-agent ")


def test_a_call_the_peer_lacks_is_not_available_not_an_error(tmp_path: Path) -> None:
    """The Agents SDK's sessions have no end and no listing: n/a, and the worker goes on."""
    if not AGENTS_PYTHON.exists():
        pytest.fail(".venv-agents is missing: make .venv-agents/.installed")
    w = Worker(AGENTS_PYTHON)
    try:
        assert "ok" in w.ask(op="open", peer="sdk-sqlite", path=str(tmp_path / "s.db"))
        assert w.ask(op="end", n=3) == {"na": "no end of a session in the SDK's Session protocol"}
        assert w.ask(op="list") == {"na": "no listing call in the SDK's Session protocol"}
        assert w.ask(op="nonsense") == {"error": "ValueError: unknown op nonsense"}
        assert 0 < w.ask(op="append", n=3)["ok"] < 60
    finally:
        assert w.close() == 0
