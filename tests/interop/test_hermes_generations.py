"""Census, repair and import on every Hermes schema generation a user may have on disk.

Each PyPI release from 0.13.0 (schema 11) to 0.19.0 (schema 22) writes its own store
through its own ``hermes_state.py`` (conftest ``hermes_generations``); the git-main
layouts before (schema 2) and after (schema 30) the releases are derived from those
stores with plain SQL. Every expected figure is counted here by plain SQL over the
file, never taken from tether's output.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.interop.hermes import census
from tether.interop.hermes.importer import import_stores
from tether.interop.hermes.repair import apply_repair, plan_repair

from .conftest import GENERATIONS, RELEASE_SCHEMAS
from .sync_helpers import hermes_ops, replaced_states, rows
from .test_hermes_census import comparable, expected_census, sha256
from .test_hermes_repair import open_ids, snapshot

# Columns that came (or went) with a generation: proof that each store is what that
# generation wrote, not 0.19.0's file relabelled.
MARKERS = {
    ("messages", "active"): 14,
    ("messages", "compacted"): 17,
    ("sessions", "title"): 11,
    ("sessions", "cwd"): 14,
    ("sessions", "profile_name"): 22,
    ("sessions", "last_activity_at"): 30,
}
OWNED = "source IN ('cli', 'tui', 'cron')"


def table_columns(path: Path, table: str) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


def test_every_generation_is_the_one_its_release_writes(
    hermes_generations: dict[str, Path],
) -> None:
    for name, schema in GENERATIONS.items():
        path = hermes_generations[name]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        [(version,)] = conn.execute("SELECT version FROM schema_version").fetchall()
        [(sessions, messages)] = conn.execute(
            "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM messages)"
        ).fetchall()
        conn.close()
        assert version == schema, name
        assert sessions > 0 and messages > 0, name
        for (table, column), since in MARKERS.items():
            assert (column in table_columns(path, table)) == (schema >= since), (name, column)


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_census_equals_plain_sql_on_every_generation(
    name: str, hermes_generations: dict[str, Path]
) -> None:
    path = hermes_generations[name]
    before = sha256(path)
    result = census(path)
    assert result["schema_version"] == GENERATIONS[name]
    assert comparable(result) == expected_census(path)
    assert sha256(path) == before


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_repair_dry_run_then_yes_on_every_generation(
    name: str, hermes_generations: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_generations[name], store)
    before = snapshot(store)
    owned = open_ids(store, OWNED)
    spared = open_ids(store, f"NOT ({OWNED})")
    assert owned and spared, name
    main_file = sha256(store)
    # In process (the CLI's own path is tested on 0.19.0 in test_hermes_repair.py), with a
    # short second holder scan: thirteen generations stay a few seconds.
    plan = plan_repair(store, recheck_after=0.05)
    assert plan.to_end["dead"] == owned
    assert sha256(store) == main_file  # the dry run changed nothing
    wal = Path(f"{store}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    done = apply_repair(plan)
    assert done.ended["dead"] == owned and done.skipped == []
    after = snapshot(store)
    assert open_ids(store, "1") == spared
    for sid, (ended_at, reason, last) in after.items():
        if sid in owned:
            assert reason == "reaped" and (last is None or ended_at >= last)  # type: ignore[operator]
        else:
            assert after[sid] == before[sid]
    second = apply_repair(plan_repair(store, recheck_after=0.05))
    assert all(ids == [] for ids in second.ended.values()) and second.transactions == 0
    assert snapshot(store) == after


def test_git_mains_last_activity_counts_as_activity(
    hermes_generations: dict[str, Path], tmp_path: Path
) -> None:
    # Upstream main's heartbeat stamps last_activity_at without a message: a row whose
    # stamp moved after the plan read it is left open.
    store = tmp_path / "state.db"
    shutil.copy(hermes_generations["git-v30"], store)
    plan = plan_repair(store, recheck_after=0.05)
    beating, *others = plan.to_end["dead"]
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("UPDATE sessions SET last_activity_at = ? WHERE id = ?", (time.time(), beating))
    conn.close()
    result = apply_repair(plan)
    assert result.skipped == [beating] and result.ended["dead"] == others
    assert open_ids(store, OWNED) == [beating]


def _select(path: Path, table: str, wanted: list[str], where: str = "") -> list[tuple[Any, ...]]:
    """``wanted`` columns of ``table`` (NULL for those this generation lacks), plain SQL."""
    have = table_columns(path, table)
    cols = ", ".join(c if c in have else "NULL" for c in wanted)
    return rows(path, f"SELECT {cols} FROM {table} {where}")


def _content(raw: Any) -> Any:
    if isinstance(raw, str) and raw.startswith("\x00json:"):
        value = json.loads(raw[len("\x00json:") :])
        return "".join(p.get("text", "") for p in value) if isinstance(value, list) else value
    return raw


def expected_import(path: Path) -> tuple[dict[str, Any], dict[str, list[Any]], int]:
    """What tether must hold after importing ``path``, from the Hermes rows alone: each
    session's row, its messages (key, role, content, state) in Hermes' id order, and how
    many ghosts stay out."""
    have = table_columns(path, "messages")
    msgs: dict[str, list[Any]] = {}
    for sid, mid, role, content, active, compacted in _select(
        path,
        "messages",
        ["session_id", "id", "role", "content", "active", "compacted"],
        "ORDER BY id",
    ):
        if role == "session_meta":
            continue
        active = 1 if "active" not in have or active is None else active
        state = "active" if active else "compacted" if compacted else "retracted"
        msgs.setdefault(sid, []).append((f"hermes:{mid}", role, _content(content), state))
    sessions = {}
    cols = ["id", "source", "model", "title", "cwd", "started_at", "ended_at", "end_reason"]
    cols += ["parent_session_id", "model_config"]
    all_rows = _select(path, "sessions", cols)
    for r in all_rows:
        if r[0] in msgs:
            sessions[r[0]] = dict(zip(cols, r, strict=True))
    return sessions, msgs, len(all_rows) - len(sessions)


def check_import(path: Path, db: Path, replaced: frozenset[str] = frozenset()) -> int:
    """tether's rows (plain SQL) against the Hermes rows (plain SQL); the ghost count.
    The sessions ``replaced`` (Hermes' replace_messages deleted rows tether keeps,
    retracted) are checked by :func:`replaced_states` instead of row for row."""
    hs, hm, ghosts = expected_import(path)
    tcols = ["id", "origin", "source", "model", "title", "cwd", "created_at", "ended_at"]
    tcols += ["end_reason", "owner_id", "parent_id", "root_id", "message_count"]
    ts = {
        r[1]: dict(zip(tcols, r, strict=True))
        for r in rows(db, f"SELECT {', '.join(tcols)} FROM sessions WHERE origin IS NOT NULL")
    }
    assert set(ts) == {f"hermes:{sid}" for sid in hs}
    tm: dict[str, list[Any]] = {}
    for origin, key, role, content, state in rows(
        db,
        "SELECT s.origin, m.idem_key, m.role, m.content, m.state FROM messages m "
        "JOIN sessions s ON s.id = m.session_id ORDER BY s.origin, m.seq",
    ):
        tm.setdefault(origin, []).append((key, role, content, state))
    for sid, h in hs.items():
        t = ts[f"hermes:{sid}"]
        want = (h["source"], h["model"], h["title"], h["cwd"], h["started_at"], h["ended_at"])
        got = (t["source"], t["model"], t["title"], t["cwd"], t["created_at"], t["ended_at"])
        assert got == want, sid
        assert t["end_reason"] == h["end_reason"] and t["owner_id"] is None
        if sid in replaced:
            replaced_states(db, path, sid)
        else:
            assert tm[f"hermes:{sid}"] == hm[sid] and t["message_count"] == len(hm[sid])
        parent = h["parent_session_id"]
        if parent in hs:
            p = ts[f"hermes:{parent}"]
            assert t["parent_id"] == p["id"]
            compression = hs[parent]["end_reason"] == "compression" and not any(
                k in (h["model_config"] or "") for k in ("_branched_from", "_delegate_from")
            )
            assert (t["root_id"] == p["root_id"]) == compression, sid
    return ghosts


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_import_equals_plain_sql_on_every_generation(
    name: str, hermes_python: Path, hermes_generations: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_generations[name], store)
    main_file = sha256(store)
    db = tmp_path / "t.db"
    with tether.open_store(db) as ts:
        (report,) = import_stores(ts, [store])
        assert report.ghosts == check_import(store, db)
        assert sha256(store) == main_file  # read-only
        (again,) = import_stores(ts, [store])
        assert (again.sessions_created, again.messages, again.ends, again.titles) == (0,) * 4
        assert again.restated == 0
    if name not in RELEASE_SCHEMAS:
        return  # git-main layouts: no SessionDB of theirs to write with
    # That release's own SessionDB renames an ended row, grows and ends an open one,
    # rewrites another through replace_messages (/retry: every row deleted, new ids)
    # and (0.18 on) compacts another in place; the next import follows all of it.
    hs, _, _ = expected_import(store)
    ended = sorted(s for s, h in hs.items() if h["ended_at"] is not None)[0]
    grow, *others = sorted(s for s, h in hs.items() if h["ended_at"] is None)
    retried = others[-1]
    ops: list[dict[str, Any]] = [
        {"op": "title", "sid": ended, "title": f"renamed in {name}"},
        {"op": "append", "sid": grow, "content": "one more"},
        {"op": "end", "sid": grow, "reason": "user_exit"},
        {"op": "replace", "sid": retried, "messages": [{"role": "user", "content": "again"}]},
    ]
    # The rows the replace retracts in tether, and those the compaction marks.
    restated = rows(
        db,
        "SELECT count(*) FROM messages m JOIN sessions s ON s.id = m.session_id "
        "WHERE s.origin = ? AND m.state <> 'retracted'",
        (f"hermes:{retried}",),
    )[0][0]
    compacts = "compacted" in table_columns(store, "messages")
    if compacts:
        assert others[0] != retried
        ops.append({"op": "compact", "sid": others[0], "summary": "summary"})
        restated += rows(
            store,
            "SELECT count(*) FROM messages WHERE session_id = ? AND active = 1",
            (others[0],),
        )[0][0]
    hermes_ops(hermes_python, store, ops, release=None if name == "0.19.0" else name)
    with tether.open_store(db) as ts:
        (after,) = import_stores(ts, [store])
        assert (after.titles, after.ends, after.messages) == (1, 1, 2 + compacts)
        assert after.restated == restated > 0
        (again,) = import_stores(ts, [store])
        assert (again.messages, again.restated, again.titles) == (0, 0, 0)
    check_import(store, db, replaced=frozenset({retried}))
