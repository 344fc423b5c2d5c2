"""Helpers of the import, mirror and gc tests: Hermes operations through the real
SessionDB (hermes_ops.py, in the Hermes environment) and plain-SQL reads."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from .conftest import _hermes_env

OPS = Path(__file__).resolve().parent / "hermes_ops.py"


def hermes_ops(
    python: Path, path: Path, ops: list[dict[str, Any]], release: str | None = None
) -> list[Any]:
    """Apply ``ops`` to the store through the real SessionDB (of ``release``, an older
    release's own module, or the environment's); their results, in order."""
    proc = subprocess.run(
        [str(python), str(OPS), "ops", str(path)],
        input="".join(json.dumps(op) + "\n" for op in ops),
        capture_output=True,
        text=True,
        timeout=120,
        env=_hermes_env(release),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["result"] for line in proc.stdout.splitlines() if line.strip()]


def start_churn(python: Path, path: Path, *args: str) -> subprocess.Popen[str]:
    """The 004 workload (see hermes_ops.py churn); returns once it is ready."""
    proc = subprocess.Popen(
        [str(python), str(OPS), "churn", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_hermes_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def churn_report(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def hermes_copy(source: Path, tmp_path: Path) -> Path:
    """A copy of the Hermes store ``source`` at ``tmp_path/hermes/state.db``."""
    path = tmp_path / "hermes" / "state.db"
    path.parent.mkdir()
    shutil.copy(source, path)
    return path


def rows(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Plain SQL over a file (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def tether_messages(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """tether's messages of imported sessions, by origin, in seq order (plain SQL)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows(
        db,
        "SELECT s.origin, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.tool_name, "
        "m.created_at, m.idem_key, m.state, m.meta FROM messages m "
        "JOIN sessions s ON s.id = m.session_id WHERE s.origin IS NOT NULL "
        "ORDER BY s.origin, m.seq",
    ):
        out.setdefault(r[0], []).append(r[1:])
    return out


def replaced_states(db: Path, store: Path, sid: str) -> None:
    """After Hermes' destructive ``replace_messages`` of ``sid``: tether's family of it
    (``hermes:<sid>``, ``#2``...) holds every row it ever imported (content and seq kept),
    each Hermes row still there in Hermes' state, each row gone ``retracted``; and its
    active messages are exactly Hermes' active ones, in order (plain SQL on both sides)."""
    have = {r[1] for r in rows(store, "PRAGMA table_info(messages)")}
    flags = ", ".join(c if c in have else d for c, d in (("active", "1"), ("compacted", "0")))
    hermes = {
        f"hermes:{mid}": (role, content, "active" if a else "compacted" if c else "retracted")
        for mid, role, content, a, c in rows(
            store,
            f"SELECT id, role, content, {flags} FROM messages "
            "WHERE session_id = ? AND role <> 'session_meta' ORDER BY id",
            (sid,),
        )
    }
    family = [
        r[1:]
        for r in rows(
            db,
            "SELECT s.origin, m.idem_key, m.role, m.content, m.state FROM messages m "
            "JOIN sessions s ON s.id = m.session_id WHERE s.origin = ? OR s.origin LIKE ? "
            "ORDER BY length(s.origin), s.origin, m.seq",
            (f"hermes:{sid}", f"hermes:{sid}#%"),
        )
    ]
    held = {key for key, *_ in family}
    assert set(hermes) <= held, sorted(set(hermes) - held)
    for key, role, content, state in family:
        if key in hermes:
            assert (role, content, state) == hermes[key], key
        else:
            assert state == "retracted", (key, state)
    assert [(r, c) for _, r, c, s in family if s == "active"] == [
        (r, c) for r, c, s in hermes.values() if s == "active"
    ]
