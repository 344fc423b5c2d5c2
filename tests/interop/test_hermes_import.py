"""``tether hermes import`` on stores the real Hermes wrote, checked against plain SQL.

Every expected figure comes from the raw Hermes rows (plain SQL, counted in
Python) and is compared with tether's rows read back by plain SQL too.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.interop.hermes.importer import StoreSync, import_stores
from tether.interop.hermes.mapping import decode_content, end_reason, map_message

from ..conftest import run_cli
from .sync_helpers import hermes_copy, hermes_ops, replaced_states, rows, tether_messages


@pytest.fixture
def store_copy(hermes_store: Path, tmp_path: Path) -> Path:
    path = hermes_copy(hermes_store, tmp_path)
    return path


def imported(db: Path, path: Path) -> Any:
    with tether.open_store(db) as store:
        return import_stores(store, [path])[0]


def hermes_sessions(path: Path) -> dict[str, dict[str, Any]]:
    cols = ["id", "source", "model", "title", "cwd", "parent_session_id", "started_at"]
    cols += ["ended_at", "end_reason", "model_config"]
    return {
        r[0]: dict(zip(cols, r, strict=True))
        for r in rows(path, f"SELECT {', '.join(cols)} FROM sessions")
    }


def hermes_messages(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows(
        path,
        "SELECT session_id, id, role, content, tool_calls, tool_call_id, tool_name, timestamp, "
        "active, compacted FROM messages ORDER BY id",
    ):
        out.setdefault(r[0], []).append(r[1:])
    return out


def tether_sessions(db: Path) -> dict[str, dict[str, Any]]:
    cols = ["id", "origin", "source", "model", "title", "cwd", "parent_id", "root_id"]
    cols += ["created_at", "ended_at", "end_reason", "owner_id", "message_count"]
    return {
        r[1]: dict(zip(cols, r, strict=True))
        for r in rows(db, f"SELECT {', '.join(cols)} FROM sessions WHERE origin IS NOT NULL")
    }


def test_an_import_equals_the_hermes_rows(store_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    report = imported(db, store_copy)
    hs, hm = hermes_sessions(store_copy), hermes_messages(store_copy)
    ts, tm = tether_sessions(db), tether_messages(db)
    with_messages = {sid for sid in hs if hm.get(sid)}
    ghosts = set(hs) - with_messages
    assert ghosts and report.ghosts == len(ghosts)
    assert set(ts) == {f"hermes:{sid}" for sid in with_messages}
    assert report.sessions_created == len(with_messages)
    assert report.messages == sum(len(v) for v in hm.values())
    for sid in with_messages:
        h, t = hs[sid], ts[f"hermes:{sid}"]
        assert (t["source"], t["model"], t["title"], t["cwd"]) == (
            h["source"],
            h["model"],
            h["title"],
            h["cwd"],
        )
        assert t["created_at"] == h["started_at"]
        assert t["owner_id"] is None  # external: its lifecycle is Hermes'
        assert t["ended_at"] == h["ended_at"]
        assert t["end_reason"] == h["end_reason"]
        # Row for row, in Hermes' id order; NULL content stays NULL, tool calls stay.
        got = tm[f"hermes:{sid}"]
        assert [g[0] for g in got] == list(range(1, len(got) + 1))
        assert t["message_count"] == len(got) == len(hm[sid])
        for g, m in zip(got, hm[sid], strict=True):
            mid, role, content, calls, call_id, tool, ts_, active, compacted = m
            assert g[1:3] == (role, content)
            assert (json.loads(g[3]) if g[3] else None) == (json.loads(calls) if calls else None)
            assert (g[4], g[5], g[6], g[7]) == (call_id, tool, ts_, f"hermes:{mid}")
            assert g[8] == ("active" if active else "compacted" if compacted else "retracted")
    assert any(c is None for v in hm.values() for c in (m[3] for m in v))
    assert Counter(g[8] for v in tm.values() for g in v)["compacted"] == sum(
        1 for v in hm.values() for m in v if not m[7]
    )
    # Chains: a compression child continues its parent's chain, a branch starts its own.
    kinds = Counter()
    for sid in with_messages:
        parent = hs[sid]["parent_session_id"]
        if parent is None or parent not in with_messages:
            continue
        t, p = ts[f"hermes:{sid}"], ts[f"hermes:{parent}"]
        assert t["parent_id"] == p["id"]
        if hs[parent]["end_reason"] == "compression":
            assert t["root_id"] == p["root_id"]
            kinds["compression"] += 1
        else:
            assert "_branched_from" in (hs[sid]["model_config"] or "")
            assert t["root_id"] == t["id"]
            kinds["branch"] += 1
    assert kinds["compression"] and kinds["branch"]
    # tether's own census agrees with the Hermes rows (ghosts aside).
    with tether.open_store(db) as store:
        census = store.census()
    reasons = Counter(hs[s]["end_reason"] for s in with_messages if hs[s]["ended_at"] is not None)
    assert census.end_reasons == dict(reasons)
    assert census.open_external == sum(1 for s in with_messages if hs[s]["ended_at"] is None)
    listed_roots = {r[0] for r in rows(db, "SELECT root_id FROM sessions")}
    assert (
        census.total == len(with_messages)
        and len(listed_roots) == len(with_messages) - kinds["compression"]
    )


def test_a_rerun_writes_nothing(store_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    imported(db, store_copy)
    before = rows(db, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM messages)")
    cursor = rows(db, "SELECT source_key, position, updated_at FROM import_cursors")
    again = imported(db, store_copy)
    assert (again.sessions_created, again.messages, again.ends, again.marked_deleted) == (0,) * 4
    assert rows(db, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM messages)") == (
        before
    )
    assert rows(db, "SELECT source_key, position, updated_at FROM import_cursors") == cursor
    last = rows(store_copy, "SELECT max(id) FROM messages")[0][0]
    assert json.loads(cursor[0][1]) == {"last_message_id": last}


def open_with_messages(path: Path) -> list[str]:
    return [
        r[0]
        for r in rows(
            path,
            "SELECT id FROM sessions s WHERE ended_at IS NULL AND EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id",
        )
    ]


def test_new_messages_and_ends_arrive_exactly_once(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    imported(db, store_copy)
    grow, end = open_with_messages(store_copy)[:2]
    ops: list[dict[str, Any]] = [
        {"op": "append", "sid": grow, "content": f"new {n}"} for n in range(5)
    ]
    ops.append({"op": "end", "sid": end, "reason": "user_exit"})
    hermes_ops(hermes_python, store_copy, ops)
    report = imported(db, store_copy)
    assert (report.messages, report.ends, report.sessions_created) == (5, 1, 0)
    ts = tether_sessions(db)
    assert ts[f"hermes:{end}"]["end_reason"] == "user_exit"
    assert [m[2] for m in tether_messages(db)[f"hermes:{grow}"][-5:]] == [
        f"new {n}" for n in range(5)
    ]
    again = imported(db, store_copy)
    assert (again.messages, again.ends) == (0, 0)


def test_a_reopened_session_continues_in_a_continuation(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    imported(db, store_copy)
    sid = rows(
        store_copy,
        "SELECT id FROM sessions s WHERE end_reason = 'user_exit' AND EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 1",
    )[0][0]
    hermes_ops(
        hermes_python,
        store_copy,
        [
            {"op": "reopen", "sid": sid},
            {"op": "append", "sid": sid, "content": "back again"},
            {"op": "append", "sid": sid, "role": "assistant", "content": "welcome back"},
        ],
    )
    report = imported(db, store_copy)
    assert (report.continuations, report.messages, report.ends) == (1, 2, 0)
    ts = tether_sessions(db)
    first, cont = ts[f"hermes:{sid}"], ts[f"hermes:{sid}#2"]
    assert first["end_reason"] == "user_exit"  # a tether session ends exactly once
    assert cont["ended_at"] is None and cont["parent_id"] == first["id"]
    assert cont["root_id"] == first["root_id"]
    assert [m[2] for m in tether_messages(db)[f"hermes:{sid}#2"]] == ["back again", "welcome back"]
    hermes_ops(hermes_python, store_copy, [{"op": "end", "sid": sid, "reason": "tui_close"}])
    report = imported(db, store_copy)
    assert (report.continuations, report.messages, report.ends) == (0, 0, 1)
    assert tether_sessions(db)[f"hermes:{sid}#2"]["end_reason"] == "tui_close"


def test_encoded_content_is_decoded_and_null_stays_null(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    parts = [
        {"type": "text", "text": "look at "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "this"},
    ]
    hermes_ops(
        hermes_python,
        store_copy,
        [
            {"op": "create", "sid": "enc_1", "source": "tui", "model": "gpt-5"},
            {"op": "append", "sid": "enc_1", "content": parts},
            {"op": "append", "sid": "enc_1", "role": "assistant", "content": None},
            {"op": "append", "sid": "enc_1", "role": "assistant", "content": {"text": "a dict"}},
        ],
    )
    raw = rows(store_copy, "SELECT content FROM messages WHERE session_id = 'enc_1' ORDER BY id")
    assert raw[0][0].startswith("\x00json:") and raw[1][0] is None  # what Hermes stored
    db = tmp_path / "t.db"
    imported(db, store_copy)
    got = tether_messages(db)["hermes:enc_1"]
    assert [g[2] for g in got] == ["look at this", None, "a dict"]
    assert json.loads(got[0][9])["content_parts"] == parts
    assert json.loads(got[2][9])["content_json"] == {"text": "a dict"}


def test_rows_deleted_in_hermes_stay_and_are_counted(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    imported(db, store_copy)
    ended = rows(
        store_copy,
        "SELECT id FROM sessions s WHERE ended_at IS NOT NULL AND parent_session_id IS NULL "
        "AND end_reason != 'compression' AND end_reason != 'branched' AND EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 1",
    )[0][0]
    still_open = open_with_messages(store_copy)[0]
    hermes_ops(
        hermes_python,
        store_copy,
        [{"op": "delete", "sid": ended}, {"op": "delete", "sid": still_open}],
    )
    report = imported(db, store_copy)
    assert (report.deleted_at_source, report.marked_deleted) == (2, 2)
    ts = tether_sessions(db)
    assert ts[f"hermes:{still_open}"]["end_reason"] == "source_deleted"
    assert ts[f"hermes:{ended}"]["end_reason"] != "source_deleted"
    assert len(tether_messages(db)[f"hermes:{ended}"]) > 0
    again = imported(db, store_copy)
    assert (again.deleted_at_source, again.marked_deleted, again.ends) == (2, 0, 0)


class Crash(Exception):
    pass


def test_a_crash_mid_import_and_a_rerun_neither_duplicate_nor_lose(
    store_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    with tether.open_store(db) as store:
        for crash_at in (2, 5):
            sync = StoreSync(store, store_copy, page=20)
            batches = 0

            def crash(_cursor: int, at: int = crash_at) -> None:
                nonlocal batches
                batches += 1
                if batches == at:
                    raise Crash

            sync.on_batch = crash
            with pytest.raises(Crash):
                sync.run_pass(full=True)
            sync.close()
        import_stores(store, [store_copy], page=20)
    hm = hermes_messages(store_copy)
    tm = tether_messages(db)
    assert sum(len(v) for v in tm.values()) == sum(len(v) for v in hm.values())
    for origin, got in tm.items():
        mids = [m[0] for m in hm[origin.removeprefix("hermes:")]]
        assert [g[7] for g in got] == [f"hermes:{m}" for m in mids]
        assert [g[0] for g in got] == list(range(1, len(got) + 1))


def test_the_cli_imports_and_refuses_a_foreign_file(store_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    done = run_cli("hermes", "import", str(store_copy), "--db", str(db))
    assert done.returncode == 0, done.stderr
    with_messages = rows(store_copy, "SELECT count(DISTINCT session_id), count(*) FROM messages")[0]
    assert f"sessions imported                   {with_messages[0]}" in done.stdout
    assert f"messages imported                   {with_messages[1]}" in done.stdout
    again = run_cli("hermes", "import", str(store_copy), "--db", str(db), "--json")
    assert json.loads(again.stdout)["stores"][0]["messages"] == 0
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    bad = run_cli("hermes", "import", str(foreign), "--db", str(db))
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "not a Hermes state.db" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_mapping_rules() -> None:
    assert decode_content(None).content is None
    assert decode_content("plain").content == "plain"
    d = decode_content('\x00json:[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]')
    assert d.content == "ab" and len(d.meta["content_parts"]) == 2
    lone = decode_content("x\ud800y")
    assert (lone.content, lone.replaced_surrogates) == ("x\ufffdy", 1)
    assert end_reason("user_exit") == ("user_exit", "imported from hermes")
    word, detail = end_reason("Weird Reason!")
    assert word == "weird_reason" and "'Weird Reason!'" in detail
    m, _ = map_message({"id": 7, "role": "moderator", "content": "hi", "timestamp": 1.0})
    assert m is not None and m["role"] == "system" and m["meta"]["origin_role"] == "moderator"
    skipped, _ = map_message({"id": 8, "role": "session_meta", "content": "x", "timestamp": 1.0})
    assert skipped is None


def everything_but(db: Path, origin: str) -> list[Any]:
    """Every tether row (sessions, messages, events) but the title of ``origin``."""
    sessions = rows(db, "SELECT * FROM sessions ORDER BY id")
    cols = [r[1] for r in rows(db, "PRAGMA table_info(sessions)")]
    t, o = cols.index("title"), cols.index("origin")
    sessions = [tuple(v for i, v in enumerate(r) if i != t or r[o] != origin) for r in sessions]
    return [
        sessions,
        rows(db, "SELECT * FROM messages ORDER BY session_id, seq"),
        rows(db, "SELECT * FROM events ORDER BY rowid"),
    ]


def test_a_retitle_of_an_ended_imported_session_arrives_once(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    imported(db, store_copy)
    sid = rows(
        store_copy,
        "SELECT id FROM sessions s WHERE ended_at IS NOT NULL AND end_reason != 'compression' "
        "AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 1",
    )[0][0]
    assert tether_sessions(db)[f"hermes:{sid}"]["ended_at"] is not None
    before = everything_but(db, f"hermes:{sid}")
    assert hermes_ops(hermes_python, store_copy, [{"op": "title", "sid": sid, "title": "Renamed"}])
    report = imported(db, store_copy)
    assert (report.titles, report.messages, report.ends, report.restated) == (1, 0, 0, 0)
    assert tether_sessions(db)[f"hermes:{sid}"]["title"] == "Renamed"
    assert everything_but(db, f"hermes:{sid}") == before  # nothing else rewritten
    again = imported(db, store_copy)
    assert again.titles == 0
    # Cleared in Hermes (an empty title is stored as NULL): cleared in tether too.
    hermes_ops(hermes_python, store_copy, [{"op": "title", "sid": sid, "title": ""}])
    assert rows(store_copy, "SELECT title FROM sessions WHERE id = ?", (sid,)) == [(None,)]
    assert imported(db, store_copy).titles == 1
    assert tether_sessions(db)[f"hermes:{sid}"]["title"] is None
    assert everything_but(db, f"hermes:{sid}") == before


def states_of(db: Path, store: Path, sid: str) -> tuple[list[Any], list[Any]]:
    """(Hermes' rows as tether states, tether's) of one session's family, in id order."""
    want = [
        (f"hermes:{mid}", "active" if active else "compacted" if compacted else "retracted")
        for mid, active, compacted in rows(
            store,
            "SELECT id, active, compacted FROM messages WHERE session_id = ? ORDER BY id",
            (sid,),
        )
    ]
    got = [
        (g[7], g[8])
        for origin, msgs in sorted(tether_messages(db).items())
        if origin.split("#")[0] == f"hermes:{sid}"
        for g in msgs
    ]
    return want, sorted(got, key=lambda kv: int(kv[0].split(":")[1]))


def test_in_place_compaction_after_the_import_is_followed_never_duplicated_never_lost(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    imported(db, store_copy)
    live = open_with_messages(store_copy)[0]
    # A session reopened after tether recorded its end: its rows span two tether sessions.
    ended = rows(
        store_copy,
        "SELECT id FROM sessions s WHERE end_reason = 'user_exit' AND NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.id AND m.active = 0) "
        "AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 1",
    )[0][0]
    hermes_ops(
        hermes_python,
        store_copy,
        [{"op": "reopen", "sid": ended}, {"op": "append", "sid": ended, "content": "resumed"}],
    )
    assert imported(db, store_copy).continuations == 1
    before = {
        o: [g[:8] for g in msgs] for o, msgs in tether_messages(db).items()
    }  # content, seq, keys: none of it may change
    flipped = {
        sid: rows(
            store_copy,
            "SELECT count(*) FROM messages WHERE session_id = ? AND active = 1",
            (sid,),
        )[0][0]
        for sid in (live, ended)
    }
    hermes_ops(
        hermes_python,
        store_copy,
        [
            {"op": "compact", "sid": live, "summary": "summary of live"},
            {"op": "compact", "sid": ended, "summary": "summary of ended"},
        ],
    )
    report = imported(db, store_copy)
    assert (report.messages, report.restated) == (2, sum(flipped.values()))
    for sid in (live, ended):
        want, got = states_of(db, store_copy, sid)
        assert got == want and sum(1 for _, s in got if s == "compacted") >= flipped[sid]
    after = tether_messages(db)
    for origin, msgs in before.items():  # nothing rewritten but the states
        assert [g[:8] for g in after[origin][: len(msgs)]] == msgs
    assert (
        sum(len(v) for v in after.values())
        == rows(store_copy, "SELECT count(*) FROM messages")[0][0]
        - rows(store_copy, "SELECT count(*) FROM messages WHERE role = 'session_meta'")[0][0]
    )
    assert imported(db, store_copy).restated == 0
    # A rewind (active=0, compacted=0) and its undo are followed the same way.
    summary = rows(store_copy, "SELECT max(id) FROM messages WHERE session_id = ?", (live,))[0][0]
    hermes_ops(hermes_python, store_copy, [{"op": "rewind", "sid": live, "mid": summary}])
    assert imported(db, store_copy).restated == 1
    want, got = states_of(db, store_copy, live)
    assert got == want and got[-1] == (f"hermes:{summary}", "retracted")
    hermes_ops(hermes_python, store_copy, [{"op": "restore", "sid": live, "mid": summary}])
    assert imported(db, store_copy).restated == 1
    want, got = states_of(db, store_copy, live)
    assert got == want and got[-1] == (f"hermes:{summary}", "active")


def test_rows_replace_messages_deleted_are_retracted_never_shown_twice(
    hermes_python: Path, store_copy: Path, tmp_path: Path
) -> None:
    """Hermes' /retry, /undo and non-in-place /compress call ``replace_messages``: every
    row of the session is DELETEd and the new transcript INSERTed with new ids. tether
    keeps what it imported (append-only) but each row gone is retracted, so the
    session's active messages are Hermes' current ones, never the old ones beside them."""
    db = tmp_path / "t.db"
    imported(db, store_copy)
    live, emptied, *_ = open_with_messages(store_copy)
    ended, split = (
        r[0]
        for r in rows(
            store_copy,
            "SELECT id FROM sessions s WHERE end_reason = 'user_exit' AND NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id AND m.active = 0) "
            "AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 2",
        )
    )
    # A reopen after tether recorded the end: the session spans hermes:<id> and #2.
    hermes_ops(
        hermes_python,
        store_copy,
        [{"op": "reopen", "sid": split}, {"op": "append", "sid": split, "content": "resumed"}],
    )
    assert imported(db, store_copy).continuations == 1
    before = {o: [g[:8] for g in msgs] for o, msgs in tether_messages(db).items()}
    gone = rows(
        store_copy,
        "SELECT count(*) FROM messages WHERE session_id IN (?, ?, ?, ?) AND role <> 'session_meta'",
        (live, emptied, ended, split),
    )[0][0]
    new = [
        {"role": "user", "content": "asked again"},
        {"role": "assistant", "content": "a better answer"},
    ]
    hermes_ops(
        hermes_python,
        store_copy,
        [
            {"op": "replace", "sid": live, "messages": new},
            {"op": "replace", "sid": emptied, "messages": []},  # /undo of the only turn
            {"op": "replace", "sid": ended, "messages": new[:1]},
            {"op": "replace", "sid": split, "messages": new},
        ],
    )
    report = imported(db, store_copy)
    assert (report.messages, report.restated) == (5, gone)
    for sid in (live, emptied, ended, split):
        replaced_states(db, store_copy, sid)
    after = tether_messages(db)
    for origin, msgs in before.items():  # content, seq and keys untouched
        assert [g[:8] for g in after[origin][: len(msgs)]] == msgs
    # A rerun writes nothing at all.
    snapshot = everything_but(db, "")
    again = imported(db, store_copy)
    assert (again.messages, again.restated, again.titles, again.ends) == (0, 0, 0, 0)
    assert everything_but(db, "") == snapshot
    # active_only (0.18.0 on): rows compaction archived stay; the live ones go.
    hermes_ops(hermes_python, store_copy, [{"op": "compact", "sid": live, "summary": "summary"}])
    report = imported(db, store_copy)
    assert (report.messages, report.restated) == (1, 2)
    hermes_ops(
        hermes_python,
        store_copy,
        [{"op": "replace", "sid": live, "messages": new[1:], "active_only": True}],
    )
    report = imported(db, store_copy)
    assert (report.messages, report.restated) == (1, 1)  # the summary gone, its successor
    replaced_states(db, store_copy, live)
    assert rows(
        db,
        "SELECT count(*) FROM messages m JOIN sessions s ON s.id = m.session_id "
        "WHERE s.origin = ? AND m.state = 'compacted'",
        (f"hermes:{live}",),
    ) == [(2,)]
    assert imported(db, store_copy).restated == 0
