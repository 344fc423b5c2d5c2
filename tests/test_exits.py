"""Every exit path ends the session: each test runs a real child and reads the database after.

Each child opens a session, appends one message, buffers two more (never
flushed by the child itself) and then leaves by one exit path. Afterwards the
session must be ended with the right reason and hold all three messages.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import tether

from .conftest import dump_stacks_and_kill, finish_child, hold_writes, spawn, wait_for_line

pytestmark = pytest.mark.slow

SETUP = """
store = tether.open_store(sys.argv[1])
h = store.session(source="exit-test")
h.append("user", "acknowledged")
h.buffer("assistant", "buffered 1")
h.buffer("assistant", "buffered 2")
"""


def check(db: str, reason: str, detail: str | None = None) -> tether.Session:
    store = tether.open_store(db, load_plugins=False)
    try:
        [item] = store.list_sessions(include_empty=True).items
        s = item.session
        assert s.end_reason == reason, (s.end_reason, s.end_detail)
        if detail is not None:
            assert s.end_detail == detail
        msgs = [m.content for m in store.get_messages(s.id)]
        assert msgs == ["acknowledged", "buffered 1", "buffered 2"]
        assert s.message_count == 3
        return s
    finally:
        store.close()


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[int, str, str]:
    return finish_child(proc, timeout)


def test_context_manager_exception_ends_with_error(db_url: str) -> None:
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1])
        with store.session(source="exit-test") as h:
            h.append("user", "acknowledged")
            h.buffer("assistant", "buffered 1")
            h.buffer("assistant", "buffered 2")
            raise RuntimeError("tool exploded")
        """,
        db_url,
    )
    rc, _, err = finish(proc)
    assert rc == 1 and "tool exploded" in err
    check(db_url, "error", "RuntimeError: tool exploded")


def test_atexit_ends_an_open_session(db_url: str) -> None:
    proc = spawn(SETUP + "\nprint('done')", db_url)
    rc, _out, err = finish(proc)
    assert rc == 0, err
    s = check(db_url, "process_exit")
    assert "exited without ending" in (s.end_detail or "")


def test_uncaught_exception_outside_a_with_block(db_url: str) -> None:
    proc = spawn(SETUP + "\nraise KeyError('lost')", db_url)
    rc, _, _ = finish(proc)
    assert rc == 1
    check(db_url, "error", "uncaught KeyError: 'lost'")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signals_end_the_session(db_url: str, sig: signal.Signals) -> None:
    proc = spawn(SETUP + "\nprint('ready', flush=True)\nidle()", db_url)
    wait_for_line(proc, "ready")
    proc.send_signal(sig)
    rc, _, err = finish(proc)
    assert rc == 128 + sig, err
    check(db_url, "signal", sig.name)


def test_sigterm_inside_a_with_block(db_url: str) -> None:
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1])
        with store.session(source="exit-test") as h:
            h.append("user", "acknowledged")
            h.buffer("assistant", "buffered 1")
            h.buffer("assistant", "buffered 2")
            print("ready", flush=True)
            idle()
        """,
        db_url,
    )
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 143, err
    check(db_url, "signal", "SIGTERM")


def test_ctrl_c_ends_the_session(db_url: str) -> None:
    proc = spawn(SETUP + "\nprint('ready', flush=True)\nidle()", db_url)
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc in (1, -signal.SIGINT, 130), err
    assert "KeyboardInterrupt" in err
    check(db_url, "signal", "SIGINT")


def test_ctrl_c_caught_by_the_program_does_not_end_the_session(db_url: str) -> None:
    # Agents catch Ctrl+C to interrupt a turn; the session must live on.
    proc = spawn(
        SETUP
        + """
try:
    print("ready", flush=True)
    idle()
except KeyboardInterrupt:
    h.append("assistant", "interrupted turn")
print("alive", h.ended, flush=True)
h.end("cli_close")
""",
        db_url,
    )
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc)
    assert rc == 0, err
    assert "alive False" in out
    store = tether.open_store(db_url, load_plugins=False)
    [item] = store.list_sessions().items
    assert item.session.end_reason == "cli_close" and item.session.message_count == 4
    store.close()


def test_second_ctrl_c_during_finalization_still_ends_the_session(db_url: str) -> None:
    """Hold the write lock so finalization blocks; Ctrl+C twice; the end still lands."""
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1])
        with store.session(source="exit-test") as h:
            h.append("user", "acknowledged")
            h.buffer("assistant", "buffered 1")
            h.buffer("assistant", "buffered 2")
            print("ready", flush=True)
            idle()
        """,
        db_url,
    )
    wait_for_line(proc, "ready")
    with hold_writes(db_url):  # the child's flush + end must now wait
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # a second Ctrl+C while it is finalizing
        time.sleep(0.5)
        assert proc.poll() is None  # still finishing its end
    rc, _, err = finish(proc)
    assert rc != 0 and "KeyboardInterrupt" in err
    check(db_url, "signal", "SIGINT")


def test_previous_handler_is_chained(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "handler-ran"
    proc = spawn(
        "def graceful(signum, frame):\n"
        "    open(sys.argv[2], 'w').write('yes')\n"
        "    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, graceful)\n"
        + SETUP
        + "\nprint('ready', flush=True)\nidle()",
        db_url,
        str(marker),
    )
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 3, err
    assert marker.read_text() == "yes"
    check(db_url, "process_exit", "the process exited without ending the session")


def test_ignored_signal_stays_ignored(db_url: str) -> None:
    proc = spawn(
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        + SETUP
        + "\nprint('ready', flush=True)\ntime.sleep(1.5)\nh.end('completed')",
        db_url,
    )
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGHUP)
    rc, _, err = finish(proc)
    assert rc == 0, err
    check(db_url, "completed")


def test_sigkill_leaves_acknowledged_messages(db_url: str) -> None:
    # No exit path runs under SIGKILL; what append acknowledged is still there
    # (the liveness reaper ends the session).
    proc = spawn(SETUP + "\nprint('ready', flush=True)\nidle()", db_url)
    wait_for_line(proc, "ready")
    proc.kill()
    finish(proc)
    store = tether.open_store(db_url, load_plugins=False)
    [item] = store.list_sessions().items
    assert [m.content for m in store.get_messages(item.session.id)] == ["acknowledged"]
    store.close()


# --- worker threads ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_first_session_on_a_worker_thread_still_ends_on_signal(
    db_url: str, sig: signal.Signals
) -> None:
    """Signal handlers can only be installed from the main thread: opening the store there is
    enough, even when every session is created on a worker."""
    proc = spawn(
        """
        import threading
        store = tether.open_store(sys.argv[1])
        def work():
            h = store.session(source="exit-test")
            h.append("user", "acknowledged")
            h.buffer("assistant", "buffered 1")
            h.buffer("assistant", "buffered 2")
            print("ready", flush=True)
        t = threading.Thread(target=work, daemon=True)
        t.start()
        t.join()
        idle()
        """,
        db_url,
    )
    wait_for_line(proc, "ready")
    proc.send_signal(sig)
    rc, _, err = finish(proc)
    assert rc == 128 + sig, err
    check(db_url, "signal", sig.name)


def test_sigterm_with_a_non_daemon_worker_stopped_by_atexit_terminates(db_url: str) -> None:
    """Python joins non-daemon threads before ``atexit``: the program's own hook that stops
    its worker never ran, and the process hung with the session open."""
    proc = spawn(
        "import atexit, threading\n"
        "stop = threading.Event()\n"
        "def work():\n"
        "    while not stop.wait(0.05):\n"
        "        pass\n"
        "threading.Thread(target=work).start()  # non-daemon\n"
        "atexit.register(stop.set)\n" + SETUP + "\nprint('ready', flush=True)\nidle()",
        db_url,
    )
    wait_for_line(proc, "ready")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc, _, err = finish(proc, timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process hung after SIGTERM") from None
    assert rc == 143, err
    assert time.monotonic() - started < 5
    check(db_url, "signal", "SIGTERM")


def test_sigterm_with_a_worker_nothing_stops_still_terminates(db_url: str) -> None:
    """Without tether, SIGTERM would kill it at once; with tether the sessions end first, and a
    thread that never stops delays the exit by a bounded grace only."""
    proc = spawn(
        "import threading\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()  # non-daemon, never stops\n"
        + SETUP
        + "\nprint('ready', flush=True)\nidle()",
        db_url,
    )
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    try:
        rc, _, err = finish(proc, timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process hung after SIGTERM") from None
    assert rc == 143, err
    check(db_url, "signal", "SIGTERM")


def test_a_store_opened_on_a_worker_thread_still_ends_its_sessions_at_exit(db_url: str) -> None:
    """No signal handlers can be installed from there (documented); the atexit path still works."""
    proc = spawn(
        "import threading\n"
        "def work():\n"
        "    global h\n"
        "    store = tether.open_store(sys.argv[1])\n"
        "    h = store.session(source='exit-test')\n"
        "    h.append('user', 'acknowledged')\n"
        "    h.buffer('assistant', 'buffered 1')\n"
        "    h.buffer('assistant', 'buffered 2')\n"
        "t = threading.Thread(target=work)\n"
        "t.start()\n"
        "t.join()\n"
        "print('done', flush=True)\n",
        db_url,
    )
    rc, out, err = finish(proc)
    assert rc == 0 and "done" in out, err
    check(db_url, "process_exit")


THREADS_UNDER_SIGNALS = """
import random, threading
from tether.threads import PeriodicThread
armed = False  # the program raises only around tether's calls (as a loop catching Ctrl+C does)

def on_signal(signum, frame):
    if armed:
        raise KeyboardInterrupt

signal.signal(signal.SIGINT, on_signal)
store = tether.open_store(sys.argv[1], load_plugins=False)  # tether's handlers, chained
started = interrupts = 0
errors = []
threads = []
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    t = PeriodicThread(lambda woken: None, interval=0.0005, name="t")
    threads.append(t)
    try:
        armed = True
        t.start()
        started += 1
        for _ in range(3):  # as the checkpointer is woken from the write path
            t.wake()
        t.stop()
        armed = False
    except KeyboardInterrupt:
        armed = False
        interrupts += 1
    except RuntimeError as exc:  # Python's own Thread.start/join, cut by the handler's exception
        armed = False
        errors.append(repr(exc))
print("signals-off", flush=True)
time.sleep(0.5)  # the parent stops sending
for t in threads:
    try:
        t.stop()
    except RuntimeError as exc:
        errors.append(repr(exc))
alive = [t for t in threads if t.is_alive()]
print("started", started, "interrupts", interrupts, flush=True)
print("errors", len(errors), *sorted(set(errors))[:3], flush=True)
print("alive", len(alive), flush=True)
"""


def test_ctrl_c_while_tether_starts_and_stops_its_threads(tmp_path: Path) -> None:
    """A program that catches Ctrl+C while tether starts or stops a background thread
    (the heartbeat at the first session, the checkpointer, at close): Python's own
    Thread.start/join are not written for a handler's exception (a start cut in its
    wait raised RuntimeError('release unlocked lock') in CI's signal test; a cut join
    marks a running thread stopped; one cut inside Event.set() of wake() or stop()
    left the event's lock taken, and the next set() hung the process for good).
    tether holds the signal until the step is done.
    Not a store test: one backend is enough."""
    proc = spawn(THREADS_UNDER_SIGNALS, str(tmp_path / "t.db"), "4")
    wait_for_line(proc, "ready")
    out: list[str] = []
    err: list[str] = []
    off = threading.Event()

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if line.strip() == "signals-off":
                off.set()

    def read_err() -> None:
        assert proc.stderr is not None
        err.extend(proc.stderr)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_out, read_err)]
    for r in readers:
        r.start()
    rnd = random.Random(3)
    sent = 0
    deadline = time.monotonic() + 30
    while not off.is_set() and proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        sent += 1
        time.sleep(rnd.uniform(0, 0.002))
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(proc)
        proc.wait()
        for r in readers:
            r.join(10)
        pytest.fail("the child hung:\n" + "".join(err[-200:]))
    for r in readers:
        r.join(10)
    text = "".join(out)
    assert rc == 0, "".join(err)[-3000:]
    assert "errors 0" in text, text
    assert "alive 0" in text, text
    interrupts = int(text.split("interrupts ")[1].split()[0])
    assert sent > 300 and interrupts > 50, (sent, text)
