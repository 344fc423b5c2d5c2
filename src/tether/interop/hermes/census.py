"""``tether hermes census``: the 001 report's numbers, by plain SQL over a Hermes store.

The keys that mean the same as in ``tether doctor --json`` have the same names
(``total``, ``open``, ``ended``, ``ghosts``, ``end_reasons`` counting ended rows
only, ``by_source`` with the same inner keys). Columns a generation lacks take the
reference's defaults (``active`` 1, ``compacted`` 0); columns it does not know are
never read.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .store import HermesStore, discover, open_readonly, recognise

SOURCE_KEYS = ("total", "open", "ended", "ghosts")
MESSAGE_KEYS = ("rows", "active", "compacted", "null_content", "dangling_tool_calls")
NO_REASON = "(none)"  # an ended row whose end_reason is NULL (no release writes one)

# Dangling tool calls (what a process killed mid-tool leaves behind): each call of
# an assistant message (its id, from Hermes' JSON list) that no tool message of the
# same session answers. The calls and the
# answers are read in one pass each and compared as sets: a NOT EXISTS lookup per
# call (the session's messages through Hermes' session index) cost 0.7 s of a
# 100,000-session census, the two passes and the set about 0.5 s.
CALLS_SQL = """
SELECT m.session_id, json_extract(j.value, '$.id') FROM messages m,
  json_each(CASE WHEN json_valid(m.tool_calls) AND json_type(m.tool_calls) = 'array'
            THEN m.tool_calls ELSE '[]' END) j
WHERE m.tool_calls IS NOT NULL
"""
ANSWERS_SQL = "SELECT session_id, tool_call_id FROM messages WHERE tool_call_id IS NOT NULL"


def census(path: str | Path) -> dict[str, Any]:
    """The census of one store, as the JSON object ``census --json`` prints per store.

    All figures come from one short read transaction, so they agree with each
    other even while Hermes writes; it is committed as soon as they are read.
    """
    path = Path(path)
    conn = open_readonly(path)
    try:
        store = recognise(conn, path)
        conn.execute("BEGIN")
        try:
            return _census(conn, store)
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


def _census(conn: sqlite3.Connection, store: HermesStore) -> dict[str, Any]:
    result: dict[str, Any] = {"path": str(store.path)}
    row = conn.execute("SELECT version FROM schema_version LIMIT 1").fetchone()
    result["schema_version"] = row[0] if row else None
    result.update(_sessions(conn))
    result["chains"] = _chains(conn, store)
    result["messages"] = _messages(conn, store)
    return result


def _sessions(conn: sqlite3.Connection) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    by_source: dict[str, dict[str, Any]] = {}
    # Ghosts apart: a correlated NOT EXISTS inside the GROUP BY runs about twice as slow
    # as the two plain queries (both in the caller's one read transaction).
    rows = conn.execute(
        "SELECT COALESCE(source, ''), ended_at IS NULL, end_reason, COUNT(*)"
        " FROM sessions GROUP BY 1, 2, 3"
    )
    for source, is_open, reason, n in rows:
        entry = by_source.setdefault(
            source, {**dict.fromkeys(SOURCE_KEYS, 0), "end_reasons": Counter()}
        )
        state = "open" if is_open else "ended"
        for key in ("total", state):
            entry[key] += n
            totals[key] += n
        if not is_open:
            entry["end_reasons"][reason or NO_REASON] += n
            reasons[reason or NO_REASON] += n
    ghosts = conn.execute(
        "SELECT COALESCE(source, ''), ended_at IS NULL, COUNT(*) FROM sessions s"
        " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id) GROUP BY 1, 2"
    )
    for source, is_open, n in ghosts:
        by_source[source]["ghosts"] += n
        totals["ghosts"] += n
        if is_open:
            totals["ghosts_open"] += n
    for entry in by_source.values():
        entry["end_reasons"] = _histogram(entry["end_reasons"])
    return {
        **{key: totals[key] for key in SOURCE_KEYS},
        "ghosts_open": totals["ghosts_open"],
        "end_reasons": _histogram(reasons),
        "by_source": dict(sorted(by_source.items())),
    }


def _chains(conn: sqlite3.Connection, store: HermesStore) -> dict[str, Any]:
    """Compression chains: a row ended ``compression`` continues in its child.

    A branch (``branched``) or a delegate starts its own chain, so only links to a
    parent that ended with ``compression`` join rows. ``open_tips`` counts the
    chains (two rows or more) whose last row is still open.
    """
    lengths: Counter[int] = Counter()
    open_tips = 0
    if "parent_session_id" in store.session_columns:
        # Only rows in a chain of two or more: those ended 'compression' and their
        # children (a 100,000-row store reads a fraction of its rows here).
        rows = conn.execute(
            "SELECT id, parent_session_id, end_reason, ended_at IS NULL FROM sessions"
            " WHERE end_reason = 'compression' OR parent_session_id IN"
            " (SELECT id FROM sessions WHERE end_reason = 'compression')"
        ).fetchall()
        compressed = {sid for sid, _, reason, _ in rows if reason == "compression"}
        children: dict[str, list[str]] = {}
        linked: set[str] = set()
        for sid, parent, _, _ in rows:
            if parent is not None and parent in compressed and parent != sid:
                children.setdefault(parent, []).append(sid)
                linked.add(sid)
        is_open = {sid: bool(o) for sid, _, _, o in rows}
        for root in (sid for sid, *_ in rows if sid not in linked):
            size, tips, todo, seen = 0, 0, [root], set()
            while todo:
                sid = todo.pop()
                if sid in seen:  # a cycle written by hand: count each row once
                    continue
                seen.add(sid)
                size += 1
                kids = children.get(sid, [])
                todo.extend(kids)
                tips += not kids and is_open[sid]
            if size >= 2:
                lengths[size] += 1
                open_tips += tips
    return {
        "count": sum(lengths.values()),
        "lengths": {str(k): lengths[k] for k in sorted(lengths)},
        "open_tips": open_tips,
    }


def _messages(conn: sqlite3.Connection, store: HermesStore) -> dict[str, Any]:
    cols = store.message_columns
    active = "SUM(active = 1)" if "active" in cols else "COUNT(*)"  # missing: all active
    compacted = "SUM(compacted = 1)" if "compacted" in cols else "0"
    rows, n_active, n_compacted, null_content = conn.execute(
        f"SELECT COUNT(*), {active}, {compacted}, SUM(content IS NULL) FROM messages"
    ).fetchone()
    dangling = 0
    if {"tool_calls", "tool_call_id"} <= cols:
        answered = set(conn.execute(ANSWERS_SQL))
        # A numeric id compares as text, as SQLite compares it with the TEXT column.
        dangling = sum(
            1
            for sid, cid in conn.execute(CALLS_SQL)
            if cid is not None and (sid, cid if type(cid) is str else str(cid)) not in answered
        )
    return {
        "rows": rows,
        "active": n_active or 0,
        "compacted": n_compacted or 0,
        "null_content": null_content or 0,
        "dangling_tool_calls": dangling,
    }


def _histogram(counts: Counter[str]) -> dict[str, int]:
    """Most frequent first, then by name: the same input always prints the same."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def sum_census(stores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several stores summed, with each store's own in ``stores``."""
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    by_source: dict[str, dict[str, Any]] = {}
    lengths: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    chains = open_tips = 0
    for one in stores:
        for key in (*SOURCE_KEYS, "ghosts_open"):
            totals[key] += one[key]
        reasons.update(one["end_reasons"])
        for source, inner in one["by_source"].items():
            entry = by_source.setdefault(
                source, {**dict.fromkeys(SOURCE_KEYS, 0), "end_reasons": Counter()}
            )
            for key in SOURCE_KEYS:
                entry[key] += inner[key]
            entry["end_reasons"].update(inner["end_reasons"])
        chains += one["chains"]["count"]
        open_tips += one["chains"]["open_tips"]
        lengths.update(one["chains"]["lengths"])
        messages.update(one["messages"])
    for entry in by_source.values():
        entry["end_reasons"] = _histogram(entry["end_reasons"])
    versions = sorted({s["schema_version"] for s in stores if s["schema_version"] is not None})
    return {
        **{key: totals[key] for key in SOURCE_KEYS},
        "ghosts_open": totals["ghosts_open"],
        "end_reasons": _histogram(reasons),
        "by_source": dict(sorted(by_source.items())),
        "chains": {
            "count": chains,
            "lengths": {k: lengths[k] for k in sorted(lengths, key=int)},
            "open_tips": open_tips,
        },
        "messages": {key: messages[key] for key in MESSAGE_KEYS},
        "schema_versions": versions,
        "stores": list(stores),
    }


def census_stores(paths: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The census of every store found (see :func:`discover`), summed."""
    return sum_census([census(p) for p in discover(paths)])
