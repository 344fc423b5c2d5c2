"""The event stream: every lifecycle event exactly once, in order, across reconnects."""

from __future__ import annotations

import time

from tether.compose import Store
from tether.store.views import event_bounds

from ..conftest import finish_child, pg_connect, spawn
from .conftest import WebServer, make_session
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
