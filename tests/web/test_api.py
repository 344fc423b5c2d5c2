"""The live view's JSON API on both backends: shapes, filters, cursors, security, errors."""

from __future__ import annotations

import json

import pytest

from tether.compose import Store
from tether.liveness import Reaper

from ..conftest import run_cli
from .conftest import WebServer, make_session, run_web


def test_sessions_is_the_ls_json_shape_with_a_keyset_cursor(web: WebServer, store: Store) -> None:
    ids = [make_session(store, title=f"t{i}") for i in range(5)]
    first = web.get("/api/v1/sessions?limit=2")
    assert first.status == 200
    page = first.json()
    assert set(page) == {"items", "next_cursor"}
    assert len(page["items"]) == 2 and page["next_cursor"]
    seen = [i["id"] for i in page["items"]]
    cursor = page["next_cursor"]
    while cursor:
        nxt = web.get(f"/api/v1/sessions?limit=2&cursor={cursor}").json()
        seen += [i["id"] for i in nxt["items"]]
        cursor = nxt["next_cursor"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    direct = store.list_sessions(limit=2).to_dict()
    assert json.loads(json.dumps(direct)) == page
    assert web.get("/api/v1/sessions?state=ended").json()["items"] == []
    assert len(web.get("/api/v1/sessions?state=open&source=cli&limit=10").json()["items"]) == 5
    assert web.get("/api/v1/sessions?source=tui").json()["items"] == []


def test_session_detail_has_chain_and_paged_messages(web: WebServer, store: Store) -> None:
    h = store.session(source="cli", title="paged")
    for i in range(5):
        h.append("user" if i % 2 == 0 else "assistant", f"m{i}")
    t = web.get(f"/api/v1/sessions/{h.id}?limit=2").json()
    assert t["session"]["id"] == h.id
    assert [c["id"] for c in t["chain"]] == [h.id]
    assert [m["content"] for m in t["messages"]] == ["m0", "m1"]
    assert t["next_after_seq"] == 2
    rest = web.get(f"/api/v1/sessions/{h.id}?after_seq=2&limit=10").json()
    assert [m["content"] for m in rest["messages"]] == ["m2", "m3", "m4"]
    assert rest["next_after_seq"] is None


def test_census_is_the_doctor_json_shape(web: WebServer, store: Store) -> None:
    make_session(store)
    ended = make_session(store, source="tui")
    store.end_session(ended, "tui_close")
    census, hung = Reaper(store).breakdown()
    assert web.get("/api/v1/census").json() == {
        **json.loads(json.dumps(census.to_dict())),
        "open_hung_owner": hung,
    }


def test_live_states_counts_and_filters(web: WebServer, store: Store) -> None:
    idle = make_session(store, source="cli")
    detached = make_session(store, source="gateway")
    store.mark_detached(detached, store.clock.now())
    working = make_session(store, source="gateway")
    store.record_event(working, "turn_started", {"turn_id": "t1"})
    done = make_session(store, source="gateway")
    store.record_event(done, "turn_started", {"turn_id": "t2"})
    store.record_event(done, "turn_ended", {"turn_id": "t2", "status": "done"})
    live = web.get("/api/v1/live").json()
    states = {r["id"]: r["state"] for r in live["sessions"]}
    assert states == {idle: "idle", detached: "detached", working: "working", done: "idle"}
    c = live["counts"]
    assert c["open"] == 4 and c["active"] == 4
    assert c["by_state"] == {"working": 1, "idle": 2, "detached": 1, "orphaned": 0, "external": 0}
    assert c["by_source"] == {
        "cli": {"idle": 1},
        "gateway": {"detached": 1, "working": 1, "idle": 1},
    }
    row = next(r for r in live["sessions"] if r["id"] == working)
    assert row["owner"]["pid"] > 0 and row["owner"]["alive"] is True
    assert "a turn is running" in row["why"]
    only = web.get("/api/v1/live?state=detached&source=gateway").json()["sessions"]
    assert [r["id"] for r in only] == [detached]
    activity = web.get("/api/v1/activity?state=working").json()
    assert activity["sessions"] == [
        {
            "id": working,
            "source": "gateway",
            "title": "hello",
            "state": "working",
            "last_active_at": row["last_active_at"],
            "host": row["owner"]["host"],
        }
    ]
    assert activity["counts"] == c["by_state"]
    # Attached again: an event and the state follow.
    store.mark_detached(detached, None)
    assert {r["id"]: r["state"] for r in web.get("/api/v1/live").json()["sessions"]}[
        detached
    ] == "idle"
    kinds = [e["kind"] for e in web.get("/api/v1/events?after=0&limit=1000").json()["events"]]
    assert kinds.count("detached") == 1 and kinds.count("attached") == 1


def test_live_pages_with_a_keyset_cursor_and_filters_in_the_database(
    web: WebServer, store: Store
) -> None:
    ids = [make_session(store, source="cli" if i % 2 else "gateway") for i in range(7)]
    for sid in ids[:3]:
        store.mark_detached(sid, store.clock.now())
    seen, cursor = [], None
    while True:
        page = web.get("/api/v1/live?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        assert page["counts"]["open"] == 7 and len(page["sessions"]) <= 2
        seen += [r["id"] for r in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids  # oldest first, each once
    detached, cursor = [], None
    while True:
        q = "/api/v1/live?state=detached&limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = web.get(q).json()
        detached += [r["id"] for r in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert detached == ids[:3]
    idle_cli = web.get("/api/v1/live?state=idle&source=cli").json()["sessions"]
    assert [r["id"] for r in idle_cli] == [i for i in ids[3:] if ids.index(i) % 2]
    assert web.get("/api/v1/live?cursor=nonsense").status == 400
    assert web.get("/api/v1/activity?limit=10001").status == 400


def test_imported_open_session_is_external(web: WebServer, store: Store) -> None:
    now = store.clock.now()
    s = store.import_session("hermes:abc", source="hermes", created_at=now, title="imported")
    live = web.get("/api/v1/live").json()
    (row,) = live["sessions"]
    assert (row["id"], row["state"], row["owner"]) == (s.session.id, "external", None)
    assert "hermes:abc" in row["why"]
    assert live["counts"]["active"] == 0 and live["counts"]["by_state"]["external"] == 1


def test_events_after_and_bad_cursors(web: WebServer, store: Store) -> None:
    sid = make_session(store)
    store.end_session(sid, "cli_close")
    ev = web.get("/api/v1/events?after=0").json()
    assert [e["kind"] for e in ev["events"]] == ["created", "ended"]
    assert ev["last_id"] == ev["newest_id"] and ev["reload"] is False
    assert web.get(f"/api/v1/events?after={ev['last_id']}").json()["events"] == []
    one = web.get("/api/v1/events?after=0&limit=1").json()
    assert len(one["events"]) == 1 and one["last_id"] == ev["events"][0]["id"]


def test_a_cursor_behind_a_purge_is_told_to_reload(web: WebServer, store: Store) -> None:
    kept = make_session(store)  # older: its events stay, so the oldest kept id stays low
    store.end_session(kept, "cli_close")
    gone = make_session(store)
    store.end_session(gone, "cli_close")
    events = web.get("/api/v1/events?after=0").json()["events"]
    cursor = next(e["id"] for e in events if e["session_id"] == gone)  # gone's "created"
    assert store.prune(0.0, apply=True).sessions == 2
    store.restore(kept)
    store.purge(0.0)
    assert store.compacted_through() > cursor > events[0]["id"]
    ev = web.get(f"/api/v1/events?after={cursor}").json()
    assert ev["reload"] is True  # gone's "ended" event was compacted away after the cursor
    assert web.get(f"/api/v1/events?after={ev['last_id']}").json()["reload"] is False


BAD = [
    ("/api/v1/sessions/01NOSUCHSESSION0000000000", 404),
    ("/api/v1/sessions/%00bad", 400),
    ("/api/v1/sessions?cursor=not-a-cursor", 400),
    ("/api/v1/sessions?limit=0", 400),
    ("/api/v1/sessions?limit=abc", 400),
    ("/api/v1/sessions?state=zombie", 400),
    ("/api/v1/sessions?all=maybe", 400),
    ("/api/v1/live?state=zombie", 400),
    ("/api/v1/activity?state=", 400),
    ("/api/v1/live?cursor=1.5~", 400),
    ("/api/v1/live?cursor=nan~01M8PR4KCK4T5NAJZ0526YWCFA", 400),
    ("/api/v1/live?limit=0", 400),
    ("/api/v1/events?after=99999999", 400),
    ("/api/v1/events?after=999999999999999999999999999", 400),
    ("/api/v1/events?after=-1", 400),
    ("/api/v1/events?after=1.5", 400),
    ("/api/v1/events/stream?after=x", 400),
    ("/api/v1/nothing", 404),
    ("/etc/passwd", 404),
]


@pytest.mark.parametrize(("path", "status"), BAD)
def test_bad_input_is_a_4xx_json_error(web: WebServer, path: str, status: int) -> None:
    r = web.get(path)
    assert r.status == status, r.body
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["status"] == status and err["message"] and "Traceback" not in err["message"]


def test_security_host_origin_token_cookie(web: WebServer, store: Store) -> None:
    sid = make_session(store)
    transcript = f"/api/v1/sessions/{sid}"
    for path in (transcript, "/api/v1/live", "/metrics", "/api/v1/events/stream"):
        r = web.get(path, token=False)
        assert r.status == 401 and r.json()["error"]["status"] == 401
        assert web.get(path, token="wrong").status == 401
    assert b"hi" not in web.get(transcript, token=False).body
    # DNS rebinding: a foreign Host is refused even with the token.
    assert web.get("/api/v1/live", headers={"Host": "evil.example"}).status == 403
    assert web.get("/", headers={"Host": "evil.example"}).status == 403
    # A page elsewhere calling in: refused by Origin, token or not.
    r = web.get("/api/v1/live", headers={"Origin": "http://evil.example"})
    assert r.status == 403 and r.json()["error"]["message"] == "origin not allowed"
    assert web.get("/api/v1/live", headers={"Origin": web.base}).status == 200
    # Logging in: a wrong token sets nothing; the right one an HttpOnly, Strict cookie.
    bad = web.get("/login?token=nope", token=False)
    assert bad.status == 401 and "set-cookie" not in bad.headers
    ok = web.get(f"/login?token={web.token}", token=False)
    assert ok.status == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    value = cookie.split(";")[0]
    assert web.get(transcript, token=False, headers={"Cookie": value}).status == 200
    # The page shell carries no data and loads without a token; it forbids framing.
    page = web.get("/", token=False)
    assert (
        page.status == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )


def test_only_get(web: WebServer) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    conn.request(
        "POST",
        "/api/v1/live",
        body=b"{}",
        headers={"Host": web.host_header, "Authorization": f"Bearer {web.token}"},
    )
    r = conn.getresponse()
    assert r.status == 405 and json.loads(r.read())["error"]["status"] == 405
    conn.close()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (labels in any order)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_metrics_agree_with_doctor_json(web: WebServer, store: Store, db_url: str) -> None:
    for _ in range(3):
        make_session(store, source="cli")
    for reason in ("cli_close", "cli_close", "error"):
        store.end_session(make_session(store, source="tui"), reason)
    text = web.get("/metrics").body.decode()
    doctor = json.loads(run_cli("doctor", "--json", "--db", db_url).stdout)
    assert _metric(text, "tether_sessions", state="open") == doctor["open"]
    assert _metric(text, "tether_sessions", state="ended") == doctor["ended"]
    assert _metric(text, "tether_sessions_open_owner", owner="live") == doctor["open_live_owner"]
    assert _metric(text, "tether_sessions_open_owner", owner="dead") == doctor["open_dead_owner"]
    assert _metric(text, "tether_sessions_ghosts") == doctor["ghosts"]
    for source, c in doctor["by_source"].items():
        for reason, n in c["end_reasons"].items():
            assert _metric(text, "tether_sessions_ended_total", source=source, reason=reason) == n
    assert _metric(text, "tether_sessions_open", source="cli", state="idle") == 3
    assert _metric(text, "tether_owners", state="live") == 1
    assert _metric(text, "tether_oldest_open_session_age_seconds") >= 0


def test_metrics_counters_keep_counting_across_a_restart(store: Store) -> None:
    store.end_session(make_session(store, source="cli"), "cli_close")
    with run_web(store) as w:
        before = _metric(
            w.get("/metrics").body.decode(),
            "tether_sessions_ended_total",
            source="cli",
            reason="cli_close",
        )
    store.end_session(make_session(store, source="cli"), "cli_close")
    with run_web(store) as w:  # a new process's view: the store holds the count
        after = _metric(
            w.get("/metrics").body.decode(),
            "tether_sessions_ended_total",
            source="cli",
            reason="cli_close",
        )
    assert (before, after) == (1, 2)


def test_followed_turns_agree_with_the_database(web: WebServer, store: Store) -> None:
    """The page's turn states come from the followed events (no per-session probe); after
    any series of turns, attaches, detaches and ends they equal what the database says."""
    import random

    from tether.web.service import LiveView

    rng = random.Random(12)
    by_sql = LiveView(store)  # no feed: the database decides every read
    ids: list[str] = []
    for step in range(60):
        op = rng.choice(["new", "start", "stop", "detach", "attach", "end"])
        if op == "new" or not ids:
            ids.append(make_session(store, source=rng.choice(["cli", "gateway"])))
        else:
            sid = rng.choice(ids)
            if op == "start":
                store.record_event(sid, "turn_started", {"turn_id": str(step)})
            elif op == "stop":
                store.record_event(sid, "turn_ended", {"turn_id": str(step)})
            elif op == "detach":
                store.mark_detached(sid, store.clock.now())
            elif op == "attach":
                store.mark_detached(sid, None)
            else:
                store.end_session(sid, "cli_close")
                ids.remove(sid)
        if step % 6 == 5:
            served = web.get("/api/v1/live?limit=1000").json()
            direct = by_sql.snapshot(limit=1000)
            assert served["counts"] == direct.counts
            assert {r["id"]: r["state"] for r in served["sessions"]} == {
                r.facts.id: r.state for r in direct.rows
            }
            for state in ("working", "idle", "detached"):
                page = web.get(f"/api/v1/live?state={state}&limit=1000").json()["sessions"]
                assert [r["id"] for r in page] == [
                    r.facts.id for r in by_sql.snapshot(state=state, limit=1000).rows
                ]


def test_the_readme_shows_the_live_shape(web: WebServer, store: Store) -> None:
    """The README's /live output (real, from a gateway) has the shape the API answers."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("\n## Live view") :]
    shown = re.search(r"/api/v1/live \| jq \.\n(\{.*?\n\})\n", section, re.S)
    assert shown is not None
    doc = json.loads(shown.group(1))
    store.record_event(make_session(store, source="gateway"), "turn_started", {"turn_id": "t"})
    live = web.get("/api/v1/live").json()
    assert set(doc) == set(live) and set(doc["counts"]) == set(live["counts"])
    assert set(doc["sessions"][0]) == set(live["sessions"][0])
    assert set(doc["sessions"][0]["owner"]) == set(live["sessions"][0]["owner"])


def test_remote_owners_settled_in_the_database_agree_with_the_reaper(db_url: str) -> None:
    """Owners on another host with a fresh heartbeat are counted alive in the database
    (no per-owner verdict in Python); every count, row, filter and owner metric must
    still be what the reaper's one-by-one verdicts say, with each owner counted once."""
    import tether

    # No startup sweep: the dead owners' sessions stay open (orphaned) for the test.
    with (
        tether.open_store(db_url, load_plugins=False, startup_sweep=False) as store,
        run_web(store) as web,
    ):
        _remote_owners_agree(web, store)


def _remote_owners_agree(web: WebServer, store: Store) -> None:
    import time

    from tether.liveness.identity import ProcessIdentity

    from ..test_liveness import FAR, owned_sessions

    near = ProcessIdentity("near-host", "boot-near", 99, 1)
    now = time.time()  # the heartbeats' clock (PostgreSQL's server runs on this machine)
    local_idle = make_session(store, source="cli")
    local_detached = make_session(store, source="cli")
    store.mark_detached(local_detached, store.clock.now())
    a1, a2, a3 = owned_sessions(store, FAR, 3, now - 5)  # fresh: alive
    b1, b2 = owned_sessions(store, FAR, 2, now - 2)  # fresh, same host: another owner
    (c1,) = owned_sessions(store, near, 1, now - 1)  # fresh, another host
    d1, d2 = owned_sessions(store, FAR, 2, now - 100)  # stale: dead, judged in Python
    (e1,) = owned_sessions(store, FAR, 1, now - 20, lease=10.0)  # stale by its own lease
    (f1,) = owned_sessions(store, FAR, 1, now - 1)  # fresh, but its row goes missing
    store.backend.write(
        lambda c: c.execute(
            "DELETE FROM owners WHERE id = (SELECT owner_id FROM sessions WHERE id = ?)", (f1,)
        )
    )
    store.mark_detached(a2, store.clock.now())
    for sid in (a3, b2, d1):
        store.record_event(sid, "turn_started", {"turn_id": sid})
    external = store.import_session("hermes:x1", source="hermes", created_at=store.clock.now())

    here = ProcessIdentity.current().host
    expected = {
        local_idle: ("idle", here),
        local_detached: ("detached", here),
        a1: ("idle", FAR.host),
        a2: ("detached", FAR.host),
        a3: ("working", FAR.host),
        b1: ("idle", FAR.host),
        b2: ("working", FAR.host),
        c1: ("idle", near.host),
        d1: ("orphaned", FAR.host),
        d2: ("orphaned", FAR.host),
        e1: ("orphaned", FAR.host),
        f1: ("orphaned", None),
        external.session.id: ("external", None),
    }
    live = web.get("/api/v1/live?limit=1000").json()
    assert {r["id"]: r["state"] for r in live["sessions"]} == {
        k: s for k, (s, _) in expected.items()
    }
    for r in live["sessions"]:
        assert (r["owner"] or {}).get("host") == expected[r["id"]][1]
        if r["state"] in ("idle", "detached", "working"):
            assert r["owner"]["alive"] is True and r["owner"]["hung"] is False
    by_host: dict[str, dict[str, int]] = {}
    by_state: dict[str, int] = {}
    for state, host in expected.values():
        cell = by_host.setdefault(host or "(none)", {})
        cell[state] = cell.get(state, 0) + 1
        by_state[state] = by_state.get(state, 0) + 1
    c = live["counts"]
    assert c["by_host"] == by_host
    assert {k: v for k, v in c["by_state"].items() if v} == by_state
    assert c["by_source"]["test"] == {"idle": 3, "detached": 1, "working": 2, "orphaned": 4}
    for state in ("working", "idle", "detached", "orphaned", "external"):
        page = web.get(f"/api/v1/live?state={state}&limit=1000").json()["sessions"]
        assert sorted(r["id"] for r in page) == sorted(
            k for k, (s, _) in expected.items() if s == state
        )
    # The owners, as the reaper judges them one by one: each counted once.
    verdicts = {s.owner_id: s.verdict.alive for s in Reaper(store).classify()}
    text = web.get("/metrics").body.decode()
    assert _metric(text, "tether_owners", state="live") == sum(verdicts.values()) == 4
    assert _metric(text, "tether_owners", state="dead") == len(verdicts) - 4 == 3
    assert _metric(text, "tether_owner_heartbeat_age_seconds") >= 100
