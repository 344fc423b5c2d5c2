"""A handle's explicit state (new, persisted, ended, fenced): transitions are
logged, final states are final, and every write is guarded by the state."""

from __future__ import annotations

import logging

import pytest

import tether
from tether.compose import Store
from tether.lifecycle import HandleState
from tether.lifecycle.handle import InvalidHandleState


def transitions(caplog: pytest.LogCaptureFixture, session_id: str) -> list[str]:
    return [
        r.getMessage().split(": handle ", 1)[1]
        for r in caplog.records
        if r.name == "tether.lifecycle" and r.getMessage().startswith(f"session {session_id}:")
    ]


def test_a_session_goes_new_persisted_ended_and_logs_each_step(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="tether.lifecycle"):
        h = store.session(source="cli")
        assert h.state is HandleState.NEW and not h.persisted
        h.append("user", "hello")
        assert h.state is HandleState.PERSISTED and h.persisted
        assert h.end() is True
        assert h.state is HandleState.ENDED and h.ended and h.persisted
    assert transitions(caplog, h.id) == ["NEW -> PERSISTED", "PERSISTED -> ENDED"]
    assert repr(h) == f"<SessionHandle {h.id} ended>"
    with pytest.raises(tether.SessionEndedError):
        h.append("user", "after the end")
    with pytest.raises(tether.SessionEndedError):
        h.buffer("user", "after the end")
    assert h.end() is False  # ending twice is a no-op that says so
    assert h.state is HandleState.ENDED


def test_a_session_ended_without_content_was_never_persisted(store: Store) -> None:
    h = store.session(source="cli")
    assert h.end() is False
    assert h.state is HandleState.ENDED and not h.persisted
    assert store.list_sessions(include_empty=True).items == []


def test_a_taken_over_handle_is_fenced_for_good(db_url: str) -> None:
    a = tether.open_store(db_url, load_plugins=False)
    b = tether.open_store(db_url, load_plugins=False, startup_sweep=False)
    try:
        h = a.session(source="cli")
        h.append("user", "one")
        taken = b.resume(h.id, force=True)
        assert taken.state is HandleState.PERSISTED
        with pytest.raises(tether.StaleOwnerError):
            h.append("user", "stale")
        assert h.state is HandleState.FENCED and h.ended
        with pytest.raises(tether.StaleOwnerError):  # the guard, without a round trip
            h.append("user", "stale again")
        assert h.end() is False
        assert h.state is HandleState.FENCED
        taken.end()
    finally:
        b.close()
        a.close()


def test_a_transition_out_of_a_final_state_is_refused(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "x")
    h.end()
    with pytest.raises(InvalidHandleState, match="cannot go from ENDED to PERSISTED"):
        h.state = HandleState.PERSISTED
    assert h.state is HandleState.ENDED
