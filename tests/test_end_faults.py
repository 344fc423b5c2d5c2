"""An end never loses buffered messages silently.

The fault is real: a trigger in the database rejects one message at flush
time (as a constraint, a full disk or a broken connection would), on both
backends. Whatever the final flush does, the end is recorded; when messages
could not be stored it is recorded as ``error`` with a detail that counts them,
and the caller gets :class:`tether.MessagesLostError`.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import pytest

import tether
from tether.compose import Store

from .conftest import finish_child, hold_writes, pg_connect, spawn


class Recorder:
    def __init__(self) -> None:
        self.ends: list[tuple[str, str, bool, str | None]] = []

    @tether.hookimpl
    def on_session_end(self, session: tether.Session, reason: str, interrupted: bool) -> None:
        self.ends.append((session.id, reason, interrupted, session.end_reason))


def reject_poison(url: str) -> None:
    """Make the database refuse any message whose content is 'poison'."""
    if url.startswith("postgresql://"):
        conn = pg_connect(url)
        conn.execute(
            """
            CREATE FUNCTION reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.content = 'poison' THEN RAISE EXCEPTION 'poison rejected'; END IF;
                RETURN NEW;
            END $$
            """
        )
        conn.execute(
            "CREATE TRIGGER reject_poison BEFORE INSERT ON messages "
            "FOR EACH ROW EXECUTE FUNCTION reject_poison()"
        )
    else:
        conn = sqlite3.connect(url, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER reject_poison BEFORE INSERT ON messages "
            "WHEN NEW.content = 'poison' BEGIN SELECT RAISE(ABORT, 'poison rejected'); END"
        )
    conn.close()


def test_failed_final_flush_ends_with_error_and_tells_the_caller(store: Store, db_url: str) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    h = store.session(source="cli")
    h.append("user", "stored")
    reject_poison(db_url)
    h.buffer("assistant", "before the poison")
    h.buffer("assistant", "poison")
    with pytest.raises(tether.MessagesLostError) as caught:
        h.end("completed")
    err = caught.value
    assert err.session_id == h.id and err.lost == 2 and err.reason == "error"
    assert "2 buffered messages could not be stored" in str(err)
    s = store.get_session(h.id)
    assert s.end_reason == "error"
    assert s.end_detail is not None
    assert s.end_detail.startswith("2 buffered messages could not be stored")
    assert "ending as completed" in s.end_detail and "poison rejected" in s.end_detail
    assert [m.content for m in store.get_messages(h.id)] == ["stored"]
    assert s.message_count == 1
    assert rec.ends == [(h.id, "error", True, "error")]  # the hooks see what was recorded
    assert h.ended and h.end() is False  # ended once; nothing more to say


def test_with_block_raises_when_its_final_flush_fails(store: Store, db_url: str) -> None:
    reject_poison(db_url)
    lost = pytest.raises(tether.MessagesLostError, match="1 buffered message could not")
    with lost, store.session(source="cli") as h:
        h.append("user", "stored")
        h.buffer("assistant", "poison")
    s = store.get_session(h.id)
    assert (s.end_reason, s.message_count) == ("error", 1)


def test_failed_flush_inside_a_failing_block_keeps_the_original_exception(
    store: Store, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    reject_poison(db_url)
    with pytest.raises(RuntimeError, match="tool exploded"), store.session(source="cli") as h:
        h.append("user", "stored")
        h.buffer("assistant", "poison")
        raise RuntimeError("tool exploded")
    s = store.get_session(h.id)
    assert s.end_reason == "error"
    assert s.end_detail is not None and "ending as error (RuntimeError: tool exploded)" in (
        s.end_detail
    )
    assert "1 buffered message could not be stored" in caplog.text


def test_final_flush_waits_out_a_briefly_locked_database(store: Store, db_url: str) -> None:
    """Contention within the store's busy budget is retried: nothing is lost, no error."""
    h = store.session(source="cli")
    h.append("user", "stored")
    h.buffer("assistant", "buffered")
    locked = threading.Event()

    def hold() -> None:
        with hold_writes(db_url):
            locked.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    try:
        assert h.end("completed") is True
    finally:
        holder.join(10)
    s = store.get_session(h.id)
    assert (s.end_reason, s.message_count) == ("completed", 2)


def test_flush_lost_to_a_takeover_is_not_an_error_of_this_handle(store: Store) -> None:
    """Another owner took the session: this handle ends nothing and raises nothing."""
    h = store.session(source="cli")
    h.append("user", "stored")
    h.buffer("assistant", "late")
    other = store.resume(h.id, force=True)
    assert h.end("completed") is False
    assert store.get_session(h.id).ended_at is None
    other.end("completed")


@pytest.mark.slow
def test_sigterm_with_an_unstorable_buffer_ends_as_error_and_says_so(db_url: str) -> None:
    """The exit paths go through the same end: recorded as error, logged on stderr."""
    tether.open_store(db_url, load_plugins=False).close()  # create the tables
    reject_poison(db_url)
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1])
        h = store.session(source="exit-test")
        h.append("user", "acknowledged")
        h.buffer("assistant", "poison")
        print("ID", h.id, flush=True)
        idle()
        """,
        db_url,
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().split()[1]
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish_child(proc)  # a hang fails with every thread's stack
    assert code == 143, err
    assert "1 buffered message could not be stored" in err
    store = tether.open_store(db_url, load_plugins=False)
    try:
        s = store.get_session(sid)
        assert s.end_reason == "error" and s.message_count == 1
        assert "ending as signal (SIGTERM)" in (s.end_detail or "")
    finally:
        store.close()
