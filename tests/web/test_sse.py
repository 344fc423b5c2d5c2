"""The event stream: every lifecycle event exactly once, in order, across reconnects."""

from __future__ import annotations

import time

import pytest

from tether.compose import Store
from tether.store.views import event_bounds
from tether.web.feed import Horizon

from ..conftest import finish_child, pg_connect, spawn
from .conftest import WebServer, make_session, run_web
from .sse import SSEClient


def test_reconnect_with_last_event_id_gets_every_missed_event_exactly_once(
    web: WebServer, store: Store
) -> None:
    first = SSEClient(web.port, web.token, last_event_id=0)
    a = make_session(store)
    store.end_session(a, "cli_close")
    got = first.take(2)
    assert [(e.data["kind"], e.data["session_id"]) for e in got] == [("created", a), ("ended", a)]
    assert all(e.id == str(e.data["id"]) for e in got)
    first.close()  # the browser goes away; the store moves on
    missed = []
    for _ in range(5):
        sid = make_session(store)
        store.end_session(sid, "cli_close")
        missed += [("created", sid), ("ended", sid)]
    second = SSEClient(web.port, web.token, last_event_id=int(got[-1].id or 0))
    b = make_session(store)  # after the reconnect: live, not caught up
    events = second.take(len(missed) + 1)
    assert [(e.data["kind"], e.data["session_id"]) for e in events] == [*missed, ("created", b)]
    ids = [int(e.id or 0) for e in events]
    assert ids == sorted(set(ids)) and ids[0] > int(got[-1].id or 0)
    # Nothing more: no duplicate arrives after the live one.
    c = make_session(store)
    assert second.next().data["session_id"] == c
    second.close()


def test_without_a_cursor_only_new_events(web: WebServer, store: Store) -> None:
    make_session(store)
    client = SSEClient(web.port, web.token)
    time.sleep(0.2)  # the stream is open; the old event is behind it
    sid = make_session(store)
    assert client.next().data["session_id"] == sid
    client.close()


def test_a_cursor_newer_than_the_store_gets_reload(web: WebServer, store: Store) -> None:
    make_session(store)
    client = SSEClient(web.port, web.token, last_event_id=10**12)
    reload = client.next()
    assert reload.event == "reload" and reload.data["newest_id"] == event_bounds(store)[1]
    assert reload.id == str(reload.data["newest_id"])
    sid = make_session(store)
    assert client.next().data["session_id"] == sid
    client.close()


def test_a_cursor_whose_events_are_gone_gets_reload(
    web: WebServer, store: Store, db_url: str
) -> None:
    for _ in range(3):
        store.end_session(make_session(store), "cli_close")
    lo, hi = event_bounds(store)
    # Retention removed the oldest events (as a prune would).
    if db_url.startswith("postgresql://"):
        conn = pg_connect(db_url)
        conn.execute("DELETE FROM events WHERE id < %s", (hi - 1,))
        conn.close()
    else:
        import sqlite3

        conn = sqlite3.connect(db_url)
        conn.execute("DELETE FROM events WHERE id < ?", (hi - 1,))
        conn.commit()
        conn.close()
    client = SSEClient(web.port, web.token, last_event_id=lo)
    reload = client.next()
    assert reload.event == "reload" and "gone" in reload.data["reason"]
    sid = make_session(store)
    assert client.next().data["session_id"] == sid
    client.close()
    assert web.get(f"/api/v1/events?after={lo}").json()["reload"] is True


def test_events_of_another_process_appear(web: WebServer, db_url: str) -> None:
    client = SSEClient(web.port, web.token)
    time.sleep(0.2)
    code = """
import sys, tether
store = tether.open_store(sys.argv[1])
h = store.session(source="agent", title="elsewhere")
h.append("user", "hi")
h.end("completed")
print(h.id)
store.close()
"""
    rc, out, err = finish_child(spawn(code, db_url))
    assert rc == 0, err
    sid = out.strip()
    got = client.take(2)
    assert [(e.data["kind"], e.data["session_id"]) for e in got] == [
        ("created", sid),
        ("ended", sid),
    ]
    client.close()


def _received(client: SSEClient, wait: float) -> list[int]:
    """The event ids a client gets within ``wait`` seconds (the client is closed after)."""
    client.conn.sock.settimeout(wait)
    ids = []
    try:
        while True:
            ids.append(int(client.next().id or 0))
    except TimeoutError:
        pass
    client.close()
    return ids


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_event_committed_out_of_id_order_is_delivered_once_after_a_reconnect(
    web: WebServer, store: Store, db_url: str
) -> None:
    """PostgreSQL draws event ids from a sequence: transaction A holds id N while B
    commits N+1. A client that saw N+1 and resumes from it must still get N, once.
    (SQLite has one writer: its ids commit in order.)"""
    start = event_bounds(store)[1]
    client = SSEClient(web.port, web.token, last_event_id=start)
    a = pg_connect(db_url)
    try:
        a.execute("BEGIN")
        held = int(
            a.execute(
                "INSERT INTO events (at, session_id, kind, data) "
                "VALUES (0, 'held', 'created', NULL) RETURNING id"
            ).fetchone()[0]
        )
        b = make_session(store)  # commits held + 1 (and maybe more) while A is open
        first = _received(client, 1.0)
        cursor = first[-1] if first else start
        second = SSEClient(web.port, web.token, last_event_id=cursor)
        a.execute("COMMIT")
    finally:
        a.close()
    c = make_session(store)
    rest = []
    while True:
        ev = second.next()
        rest.append(int(ev.id or 0))
        if ev.data["session_id"] == c:
            break
    second.close()
    got = first + rest
    assert held in got, (held, first, rest)
    assert len(got) == len(set(got)), got  # nothing twice
    assert first == sorted(first) and rest == sorted(rest)
    newest = event_bounds(store)[1]
    assert sorted(got) == list(range(start + 1, newest + 1)), (start, newest, got)
    assert b  # B's events are among them (checked by the range above)


def test_horizon_passes_a_barrier_only_once_its_writers_are_gone() -> None:
    h = Horizon()
    assert h.bound(frozenset()) == 0 and not h.waiting
    h.saw(7, frozenset({"3/1"}))  # 7 visible while 3/1 may still commit a smaller id
    assert h.waiting and h.needs_writers
    assert h.bound(frozenset({"3/1", "4/9"})) == 0  # 3/1 still running: hold 7
    h.saw(9, frozenset({"3/1", "4/9"}))
    assert h.bound(frozenset({"4/9"})) == 7  # 3/1 ended: up to 7 is final, 9 is not
    assert h.bound(frozenset({"4/9"})) == 0 and h.waiting
    assert h.bound(frozenset({"5/2"})) == 9  # a writer that started later does not hold 9
    assert not h.waiting


def test_horizon_without_writers_is_final_at_the_next_read() -> None:
    h = Horizon()
    h.saw(4, frozenset())
    assert not h.needs_writers
    assert h.bound(frozenset()) == 4 and not h.waiting
    # The same ids seen again with fewer writers: only those still running hold them.
    h.saw(6, frozenset({"1/1", "2/2"}))
    h.saw(6, frozenset({"2/2"}))
    assert h.bound(frozenset({"1/1"})) == 6


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_hub_started_while_an_earlier_id_is_uncommitted_still_streams_it(
    store: Store, db_url: str
) -> None:
    start = event_bounds(store)[1]
    a = pg_connect(db_url)
    try:
        a.execute("BEGIN")
        a.execute(
            "INSERT INTO events (at, session_id, kind, data) VALUES (0, 'held', 'created', NULL)"
        )
        make_session(store)  # a later id, committed before the hub starts
        with run_web(store) as web:
            client = SSEClient(web.port, web.token, last_event_id=start)
            a.execute("COMMIT")
            got = [int(e.id or 0) for e in client.take(2)]
            c = make_session(store)
            assert client.next().data["session_id"] == c  # nothing twice before it
            client.close()
    finally:
        a.close()
    assert got == [start + 1, start + 2]
