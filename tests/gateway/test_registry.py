"""The sans-IO registry: every rule checked by moving a ManualClock, no sockets, no sleeps."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tether
from tether.gateway.registry import (
    Busy,
    Closing,
    Deliver,
    Finalize,
    Full,
    Interrupt,
    InvalidPhase,
    MarkDetached,
    NotAttached,
    NotLive,
    Phase,
    Registry,
    TooMany,
)

GRACE = 120.0


def make(clock: tether.ManualClock, **kw: Any) -> Registry:
    kw.setdefault("detach_grace", GRACE)
    return Registry(clock=clock, stream_prefix="t", **kw)


def frames(actions: list[Any], conn: Any | None = None) -> list[dict[str, Any]]:
    out = []
    for a in actions:
        if isinstance(a, Deliver) and (conn is None or conn in a.conns):
            out.append(json.loads(a.frame))
    return out


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_open_attach_emit_delivers_numbered_events(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    attached, actions = r.open("s1", "c1")
    assert actions == []
    assert attached.to_result() == {
        "session_id": "s1",
        "stream": "t.1",
        "last_seq": 0,
        "replayed": 0,
        "reload": False,
        "state": "attached",
        "turn_id": None,
    }
    got = frames(r.emit("s1", "message.delta", {"text": "hi"}) + r.emit("s1", "x", {}))
    assert [f["params"]["seq"] for f in got] == [1, 2]
    assert got[0] == {
        "jsonrpc": "2.0",
        "method": "message.delta",
        "params": {"session_id": "s1", "seq": 1, "text": "hi"},
    }


def test_drop_detaches_records_time_and_keeps_session(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    actions = r.disconnect("c1")
    assert actions == [MarkDetached("s1", clock.now())]
    assert "s1" in r and r.connections == 0
    assert r.active()[0]["state"] == "detached"
    assert r.next_deadline() == clock.monotonic() + GRACE


def test_detached_idle_session_finalized_after_grace(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.disconnect("c1")
    clock.advance(GRACE - 0.001)
    assert r.tick() == []
    clock.advance(0.001)
    actions = r.tick()
    assert of(actions, Finalize) == [Finalize("s1", "ws_disconnect", False)]
    assert len(r) == 0 and r.next_deadline() is None
    assert [s["state"] for s in r.active()] == ["finalizing"]  # until the store has the end
    r.end_recorded("s1")
    assert r.active() == []


def test_warm_reattach_replays_missed_events_exactly_once_in_order(
    clock: tether.ManualClock,
) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    seen = frames(r.emit("s1", "e", {"n": 1}) + r.emit("s1", "e", {"n": 2}))
    r.disconnect("c1")
    for n in range(3, 8):
        assert r.emit("s1", "e", {"n": n}) == []  # nobody attached: buffered only
    clock.advance(GRACE / 2)
    r.connect("c2")
    attached, actions = r.attach("s1", "c2", since=seen[-1]["params"]["seq"], stream="t.1")
    assert actions == [MarkDetached("s1", None)]
    assert not attached.reload
    replayed = [json.loads(f)["params"]["n"] for f in attached.replay]
    assert replayed == [3, 4, 5, 6, 7]
    live = frames(r.emit("s1", "e", {"n": 8}), "c2")
    assert [f["params"]["n"] for f in live] == [8]
    assert r.next_deadline() is None  # attached again: no timer


def test_replay_gap_says_reload_never_a_silent_gap(clock: tether.ManualClock) -> None:
    r = make(clock, replay_events=3)
    r.connect("c1")
    r.open("s1", "c1")
    r.emit("s1", "e", {})
    r.disconnect("c1")
    for _ in range(5):
        r.emit("s1", "e", {})
    r.connect("c2")
    attached, _ = r.attach("s1", "c2", since=1)
    assert attached.reload and attached.replay == []
    assert attached.last_seq == 6


def test_replay_bounded_by_bytes(clock: tether.ManualClock) -> None:
    r = make(clock, replay_bytes=500)
    r.connect("c1")
    r.open("s1", "c1")
    for _ in range(20):
        r.emit("s1", "e", {"text": "x" * 50})
    s = r.session("s1")
    assert s.replay.bytes <= 500 and len(s.replay) < 20
    r.connect("c2")
    assert r.attach("s1", "c2", since=0)[0].reload
    ok, _ = r.attach("s1", "c2", since=20 - len(s.replay))
    assert not ok.reload and len(ok.replay) == len(s.replay)


def test_other_stream_or_future_seq_means_reload(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.emit("s1", "e", {})
    assert r.attach("s1", "c1", since=0, stream="other.9")[0].reload
    assert r.attach("s1", "c1", since=5)[0].reload
    fresh, _ = r.attach("s1", "c1")  # no since: no replay, no reload
    assert not fresh.reload and fresh.replay == [] and fresh.last_seq == 1


def test_cold_open_with_since_asks_for_reload(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    attached, _ = r.open("s1", "c1", since=42)
    assert attached.reload


def test_running_turn_is_never_cut_off_grace_counts_from_turn_end(
    clock: tether.ManualClock,
) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.begin_turn("s1", "c1", "t1")
    r.disconnect("c1")
    assert r.next_deadline() is None
    clock.advance(GRACE * 10)
    assert r.tick() == []
    assert r.active()[0]["state"] == "running"
    actions = r.end_turn("s1", "t1", "completed")
    assert frames(actions) == []  # nobody attached; buffered for a re-attach
    assert r.next_deadline() == clock.monotonic() + GRACE
    clock.advance(GRACE - 1)
    assert r.tick() == []
    clock.advance(1)
    assert of(r.tick(), Finalize) == [Finalize("s1", "ws_disconnect", False)]


def test_one_turn_at_a_time_busy_error(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.begin_turn("s1", "c1", "t1")
    with pytest.raises(Busy, match="busy") as err:
        r.begin_turn("s1", "c1", "t2")
    assert err.value.turn_id == "t1"
    r.end_turn("s1", "t1", "completed")
    r.begin_turn("s1", "c1", "t2")


def test_turn_needs_an_attached_connection(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.connect("c2")
    r.open("s1", "c1")
    with pytest.raises(NotAttached):
        r.begin_turn("s1", "c2", "t1")
    with pytest.raises(NotLive):
        r.begin_turn("nope", "c1", "t1")


def test_end_turn_announces_and_ignores_stale_turn(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.begin_turn("s1", "c1", "t1")
    assert r.end_turn("s1", "other", "completed") == []
    [end] = frames(r.end_turn("s1", "t1", "error", "boom"))
    assert end["method"] == "turn.end"
    assert end["params"] == {
        "session_id": "s1",
        "seq": 1,
        "turn_id": "t1",
        "status": "error",
        "error": "boom",
    }
    r.begin_turn("s1", "c1", "t2")
    assert r.end_turn("s1", "t2", "error", announce=False) == []


def test_interrupt(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    assert r.interrupt("s1") == []
    r.begin_turn("s1", "c1", "t1")
    assert r.interrupt("s1") == [Interrupt("s1", "t1")]


def test_close_idle_session_tells_attached_clients(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    actions = r.close("s1", "completed")
    [ended] = frames(actions, "c1")
    assert ended["method"] == "session.ended" and ended["params"]["reason"] == "completed"
    assert of(actions, Finalize) == [Finalize("s1", "completed", False)]
    assert r.sessions_of("c1") == frozenset()
    with pytest.raises(NotLive):
        r.close("s1", "completed")


def test_close_running_session_interrupts_then_finalizes(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.begin_turn("s1", "c1", "t1")
    assert r.close("s1", "completed") == [Interrupt("s1", "t1")]
    assert r.close("s1", "other") == [Interrupt("s1", "t1")]  # the first reason wins
    with pytest.raises(Closing):
        r.attach("s1", "c1")
    actions = r.end_turn("s1", "t1", "interrupted")
    assert [f["method"] for f in frames(actions)] == ["turn.end", "session.ended"]
    assert of(actions, Finalize) == [Finalize("s1", "completed", True)]
    assert len(r) == 0


def test_idle_timeout_ends_attached_sessions(clock: tether.ManualClock) -> None:
    r = make(clock, idle_timeout=30.0)
    r.connect("c1")
    r.open("s1", "c1")
    clock.advance(20)
    r.begin_turn("s1", "c1", "t1")
    clock.advance(100)  # running: never timed out
    assert r.tick() == []
    r.end_turn("s1", "t1", "completed")
    clock.advance(29)
    assert r.tick() == []
    clock.advance(1)
    assert of(r.tick(), Finalize) == [Finalize("s1", "idle_timeout", False)]


def test_shorter_idle_timeout_wins_over_grace(clock: tether.ManualClock) -> None:
    r = make(clock, idle_timeout=10.0)
    r.connect("c1")
    r.open("s1", "c1")
    r.disconnect("c1")
    assert r.active()[0]["ends_as"] == "idle_timeout"
    clock.advance(10)
    assert of(r.tick(), Finalize)[0].reason == "idle_timeout"


def test_max_live_evicts_least_recently_active_idle(clock: tether.ManualClock) -> None:
    r = make(clock, max_live=2)
    r.connect("c1")
    r.open("old", "c1")
    clock.advance(1)
    r.open("busy", "c1")
    r.begin_turn("busy", "c1", "t1")
    clock.advance(1)
    _, actions = r.open("new", "c1")
    assert of(actions, Finalize) == [Finalize("old", "lru_evict", False)]
    assert [f["params"]["reason"] for f in frames(actions)] == ["lru_evict"]
    r.end_recorded("old")
    assert sorted(s["session_id"] for s in r.active()) == ["busy", "new"]
    assert r.has_room()
    r.begin_turn("new", "c1", "t2")
    assert not r.has_room()
    with pytest.raises(Full):
        r.open("third", "c1")
    assert len(r) == 2


def test_reattach_refreshes_activity_for_lru(clock: tether.ManualClock) -> None:
    r = make(clock, max_live=2)
    r.connect("c1")
    r.open("a", "c1")
    clock.advance(1)
    r.open("b", "c1")
    clock.advance(1)
    r.attach("a", "c1")  # a is now the most recently active
    _, actions = r.open("c", "c1")
    assert of(actions, Finalize)[0].session_id == "b"


def test_fan_out_to_every_attached_connection(clock: tether.ManualClock) -> None:
    r = make(clock)
    for c in ("c1", "c2"):
        r.connect(c)
    r.open("s1", "c1")
    r.attach("s1", "c2")
    [d] = r.emit("s1", "e", {})
    assert set(d.conns) == {"c1", "c2"}
    assert r.disconnect("c1") == []  # still attached through c2: not detached
    assert r.active()[0]["state"] == "attached"


def test_shutdown_closes_everything(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("a", "c1")
    r.open("b", "c1")
    r.begin_turn("b", "c1", "t1")
    actions = r.shutdown("gateway_shutdown")
    assert of(actions, Finalize) == [Finalize("a", "gateway_shutdown", False)]
    assert of(actions, Interrupt) == [Interrupt("b", "t1")]
    assert of(r.end_turn("b", "t1", "interrupted"), Finalize) == [
        Finalize("b", "gateway_shutdown", True)
    ]
    assert len(r) == 0


def test_back_to_baseline_after_many_cycles(clock: tether.ManualClock) -> None:
    """1,000 connect/create/turn/drop cycles leave nothing behind once the grace passes."""
    r = make(clock, detach_grace=5.0)
    finalized = 0
    for i in range(1000):
        conn = f"c{i}"
        r.connect(conn)
        r.open(f"s{i}", conn)
        r.begin_turn(f"s{i}", conn, f"t{i}")
        r.emit(f"s{i}", "message.delta", {"text": "hi"})
        r.end_turn(f"s{i}", f"t{i}", "completed")
        r.disconnect(conn)
        clock.advance(0.01)
        finalized += len(of(r.tick(), Finalize))
    clock.advance(5.0)
    finalized += len(of(r.tick(), Finalize))
    assert finalized == 1000
    assert len(r) == 0 and r.connections == 0
    assert r.next_deadline() is None
    assert r.pending_timers <= 64  # the heap is compacted as sessions go


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        Registry(detach_grace=-1)
    with pytest.raises(ValueError):
        Registry(idle_timeout=0)
    with pytest.raises(ValueError):
        Registry(max_live=0)


# --- a property: whatever happens, a re-attaching client sees each event once, in order ----

ops = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 5)),
        st.tuples(st.just("drop"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("wait"), st.floats(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, events=st.integers(1, 8))
def test_client_view_is_exactly_once_in_order_or_reload(
    ops: list[tuple[str, Any]], events: int
) -> None:
    clock = tether.ManualClock()
    r = Registry(clock=clock, detach_grace=5.0, replay_events=events, stream_prefix="p")
    conn = 0
    r.connect(conn)
    r.open("s", conn)
    emitted = 0
    seen: list[int] = []  # what the client received, in order
    attached = True
    for op, arg in ops:
        if "s" not in r:
            break
        if op == "emit":
            for _ in range(arg):
                emitted += 1
                for a in r.emit("s", "e", {"n": emitted}):
                    if attached:
                        seen.append(json.loads(a.frame)["params"]["n"])
        elif op == "drop" and attached:
            r.disconnect(conn)
            attached = False
        elif op == "resume" and not attached:
            conn += 1
            r.connect(conn)
            result, _ = r.attach("s", conn, since=seen[-1] if seen else 0, stream="p.1")
            if result.reload:
                seen = list(range(1, result.last_seq + 1))  # reload: read history instead
            else:
                seen += [json.loads(f)["params"]["n"] for f in result.replay]
            attached = True
        elif op == "wait":
            clock.advance(arg)
            r.tick()
        if attached and "s" in r:
            assert seen == list(range(1, emitted + 1))


# --- ends that could not be recorded, caps, phases --------------------------------------


def test_failed_end_stays_finalizing_and_is_retried_with_backoff(
    clock: tether.ManualClock,
) -> None:
    r = make(clock, end_retry=0.5, end_retry_max=4.0)
    r.connect("c1")
    r.open("s1", "c1")
    [fin] = of(r.close("s1", "completed"), Finalize)
    assert r.is_ending("s1") and "s1" not in r
    with pytest.raises(Closing):
        r.open("s1", "c1")  # a session whose end is decided cannot come back
    delays = []
    for _ in range(5):
        at = r.end_failed("s1", "StoreBusyError: database is locked")
        assert at is not None and r.next_deadline() == at
        delays.append(at - clock.monotonic())
        clock.advance(at - clock.monotonic() - 0.001)
        assert r.tick() == []
        [row] = r.active()
        assert row["state"] == "finalizing" and row["ends_as"] == "completed"
        assert row["error"] == "StoreBusyError: database is locked"
        clock.advance(0.001)
        assert r.tick() == [fin]  # asked again, same reason
        assert r.tick() == [] and r.next_deadline() is None  # one attempt at a time
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0])
    r.end_recorded("s1")
    assert not r.is_ending("s1") and r.active() == [] and r.next_deadline() is None


def test_retry_endings_asks_again_at_once(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("a", "c1")
    r.open("b", "c1")
    r.shutdown("gateway_shutdown")
    r.end_failed("a", "x")
    r.end_failed("b", "x")
    assert r.retry_endings() == [
        Finalize("a", "gateway_shutdown", False),
        Finalize("b", "gateway_shutdown", False),
    ]
    assert r.retry_endings() == []  # in flight now


def test_per_connection_cap(clock: tether.ManualClock) -> None:
    r = make(clock, max_per_conn=2)
    for c in ("c1", "c2"):
        r.connect(c)
    r.open("a", "c1")
    r.open("b", "c1")
    with pytest.raises(TooMany):
        r.open("c", "c1")
    r.open("c", "c2")
    with pytest.raises(TooMany):
        r.attach("c", "c1")
    r.attach("a", "c1")  # already attached: no new place taken
    assert len(r) == 3


def test_detach_one_connection_keeps_the_session(clock: tether.ManualClock) -> None:
    r = make(clock)
    for c in ("c1", "c2"):
        r.connect(c)
    r.open("s1", "c1")
    r.attach("s1", "c2")
    assert r.detach("s1", "c1") == []  # c2 still attached
    assert r.sessions_of("c1") == frozenset()
    [d] = r.emit("s1", "e", {})
    assert d.conns == ("c2",)
    assert of(r.detach("s1", "c2"), MarkDetached) == [MarkDetached("s1", clock.now())]
    assert r.active()[0]["state"] == "detached" and r.active()[0]["ends_as"] == "ws_disconnect"


def test_ended_elsewhere_tells_clients_reason_and_detail(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    actions = r.close("s1", "cli_close", "ended by tether end")
    [f] = frames(actions, "c1")
    assert f["method"] == "session.ended"
    assert f["params"] == {
        "session_id": "s1",
        "seq": 1,
        "reason": "cli_close",
        "detail": "ended by tether end",
    }


def test_forget_drops_a_reservation_without_an_end(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.forget("s1")
    assert "s1" not in r and not r.is_ending("s1") and r.active() == []
    assert r.sessions_of("c1") == frozenset() and r.next_deadline() is None


def test_phase_transitions_are_explicit_and_logged(
    clock: tether.ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tether.gateway")
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    s = r.session("s1")
    assert s.phase is Phase.ATTACHED
    r.begin_turn("s1", "c1", "t1")
    assert s.phase is Phase.RUNNING
    r.close("s1", "completed")
    assert s.phase is Phase.CLOSING
    r.end_turn("s1", "t1", "interrupted")
    assert s.phase is Phase.FINALIZING
    assert [m for m in caplog.messages if m.startswith("session s1:")] == [
        "session s1: attached -> running",
        "session s1: running -> closing",
        "session s1: closing -> finalizing",
    ]


def test_a_reserved_session_is_never_evicted_until_confirmed(clock: tether.ManualClock) -> None:
    r = make(clock, max_live=1)
    r.connect("c1")
    r.open("cold", "c1", reserve=True)  # the store is taking it over
    assert not r.has_room()
    with pytest.raises(Full):
        r.open("new", "c1")
    r.confirm("cold")
    clock.advance(1)
    _, actions = r.open("new", "c1")
    assert of(actions, Finalize) == [Finalize("cold", "lru_evict", False)]


def test_detach_and_attach_are_phase_transitions(
    clock: tether.ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tether.gateway")
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    s = r.session("s1")
    clock.advance(5)
    r.detach("s1", "c1")
    assert s.phase is Phase.DETACHED and s.since == clock.monotonic()
    clock.advance(2)
    assert r.active()[0]["detached_for"] == 2.0
    r.attach("s1", "c1")
    assert s.phase is Phase.ATTACHED and r.active()[0]["detached_for"] is None
    assert [m for m in caplog.messages if m.startswith("session s1:")] == [
        "session s1: attached -> detached",
        "session s1: detached -> attached",
    ]


def test_a_turn_runs_on_without_clients_and_the_grace_counts_from_its_end(
    clock: tether.ManualClock,
) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    r.begin_turn("s1", "c1", "t1")
    r.disconnect("c1")
    s = r.session("s1")
    assert s.phase is Phase.RUNNING and s.turn_id == "t1" and r.next_deadline() is None
    clock.advance(GRACE * 3)  # a running turn is never cut off
    assert r.tick() == []
    r.end_turn("s1", "t1", "completed")
    assert s.phase is Phase.DETACHED and s.turn_id is None
    assert r.next_deadline() == clock.monotonic() + GRACE


def test_phase_data_exists_exactly_in_its_phase(clock: tether.ManualClock) -> None:
    r = make(clock)
    r.connect("c1")
    r.open("s1", "c1")
    s = r.session("s1")
    with pytest.raises(InvalidPhase, match="running needs a turn"):
        s.enter(Phase.RUNNING, clock.monotonic())
    with pytest.raises(InvalidPhase, match="closing needs a reason"):
        s.enter(Phase.CLOSING, clock.monotonic(), turn_id="t1")
    with pytest.raises(InvalidPhase, match="session s1 is attached"):
        s.expect(Phase.RUNNING, Phase.CLOSING)
    r.begin_turn("s1", "c1", "t1")
    r.close("s1", "cli_close", "bye")
    assert (s.phase, s.turn_id, s.end_reason, s.end_detail) == (
        Phase.CLOSING,
        "t1",
        "cli_close",
        "bye",
    )
    r.close("s1", "idle_timeout")  # the first reason wins
    assert s.end_reason == "cli_close"
    r.end_turn("s1", "t1", "interrupted")
    assert (s.phase, s.turn_id, s.end_reason) == (Phase.FINALIZING, None, None)


def test_streamed_events_never_touch_the_timers(clock: tether.ManualClock) -> None:
    """The I/O layer wakes its timer task only on timers_changed: never per token (#15)."""
    r = make(clock, idle_timeout=600)
    r.connect("c1")
    r.open("s1", "c1")
    assert r.timers_changed  # the idle timeout was set
    r.timers_changed = False
    r.begin_turn("s1", "c1", "t1")  # a running turn drops its timer: nothing comes due earlier
    for i in range(100):
        r.emit("s1", "message.delta", {"turn_id": "t1", "text": f"w{i}"})
    assert not r.timers_changed
    r.end_turn("s1", "t1", "completed")
    assert r.timers_changed and r.next_deadline() == clock.monotonic() + 600


def test_tick_with_a_limit_takes_the_earliest_expiries_and_leaves_the_rest_due(
    clock: tether.ManualClock,
) -> None:
    """A reconnect storm: many sessions expire together; the event loop takes them
    a batch at a time, the earliest first, and is told the rest are due."""
    r = make(clock, detach_grace=1.0)
    for i in range(10):
        r.connect(f"c{i}")
        r.open(f"s{i}", f"c{i}")
        r.disconnect(f"c{i}")
        clock.advance(0.01)  # s0 expires first
    clock.advance(1.0)
    batches = []
    while (at := r.next_deadline()) is not None and at <= clock.monotonic():
        batches.append([a.session_id for a in of(r.tick(4), Finalize)])
    assert batches == [["s0", "s1", "s2", "s3"], ["s4", "s5", "s6", "s7"], ["s8", "s9"]]
    assert len(r) == 0 and r.ending == 10


def test_retries_are_due_by_their_time_whatever_else_is_ending(
    clock: tether.ManualClock,
) -> None:
    """Ends in flight (no retry asked) are not the timers' business; the ones waiting
    for a retry come back in time order, a limit at a time."""
    r = make(clock, end_retry=0.5, end_retry_max=4.0)
    fins = {}
    for i in range(6):
        r.connect(f"c{i}")
        r.open(f"s{i}", f"c{i}")
        [fins[f"s{i}"]] = of(r.close(f"s{i}", "completed"), Finalize)
    assert r.next_deadline() is None and r.tick() == []  # six in flight, none to retry
    r.end_failed("s3", "busy")
    clock.advance(0.1)
    r.end_failed("s1", "busy")
    r.end_failed("s5", "busy")
    assert r.next_deadline() == pytest.approx(clock.monotonic() + 0.4)  # s3's
    clock.advance(0.5)
    assert r.tick(2) == [fins["s3"], fins["s1"]]  # s1 and s5 at the same time: by id
    assert r.tick(2) == [fins["s5"]]
    assert r.tick() == [] and r.next_deadline() is None
    r.end_failed("s2", "busy")
    r.end_recorded("s2")  # recorded by an attempt still under way: nothing to retry
    clock.advance(10)
    assert r.tick() == [] and r.next_deadline() is None
    r.end_failed("s4", "busy")
    assert r.retry_endings() == [fins["s4"]] and r.next_deadline() is None
