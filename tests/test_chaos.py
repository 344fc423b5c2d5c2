"""kill -9 chaos: processes die at random moments; nothing acknowledged is lost, nothing stays open.

Eight children each open several sessions and append in a loop, reporting every
message *after* ``append`` returned (acknowledged). The parent SIGKILLs each at
a random moment once it is writing (it acknowledged its first writes), runs the
reaper, and checks that no session is left open and that every acknowledged
message is stored exactly once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

import tether
from tether.liveness import Reaper

from .conftest import CHILD_PRELUDE, child_env

pytestmark = pytest.mark.slow

WORKER = (
    CHILD_PRELUDE
    + """
import random
# No startup sweep: the parent's reaper is the one under test (a worker that
# starts late would otherwise reap the sessions of one killed before it).
store = tether.open_store(sys.argv[1], heartbeat_interval=0.5, owner_ttl=5, startup_sweep=False)
rnd = random.Random(int(sys.argv[2]))
handles = [store.session(source="chaos", title=f"w{sys.argv[2]}s{k}") for k in range(3)]
i = 0
while True:
    h = rnd.choice(handles)
    text = f"{sys.argv[2]}:{i}"
    if rnd.random() < 0.3:
        for k in range(3):
            h.buffer("assistant", f"{text}.{k}")
        for m in h.flush():
            print("ack", h.id, m.seq, m.content, flush=True)
    else:
        m = h.append("user", text)
        print("ack", h.id, m.seq, m.content, flush=True)
    i += 1
"""
)


# Each child is killed at a random moment after it acknowledged this many writes.
# Opening a store takes seconds on a loaded machine (PostgreSQL: 0.7-2.7 s), so a
# kill timed from the start could land before any write, and test nothing.
WARM_UP = 20
# The kill phase must end within this (a wedged child fails the test, never hangs it).
KILL_PHASE_TIMEOUT = 120.0


def test_kill_9_at_random_moments(db_url: str) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    rnd = random.Random(1234)
    acked: list[tuple[str, int, str]] = []
    per_child = Counter[int]()  # acknowledged writes so far, by child
    lock = threading.Lock()
    procs = []
    readers = []

    def read(n: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "ack":
                with lock:
                    acked.append((parts[1], int(parts[2]), parts[3]))
                    per_child[n] += 1

    for n in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        t = threading.Thread(target=read, args=(n, proc), daemon=True)
        t.start()
        procs.append(proc)
        readers.append(t)

    deadline = time.monotonic() + KILL_PHASE_TIMEOUT
    order = list(enumerate(procs))
    rnd.shuffle(order)
    try:
        for n, proc in order:
            # The ledger says when the child is writing; then it dies at a random moment.
            while True:
                with lock:
                    warm = per_child[n] >= WARM_UP
                if proc.poll() is not None:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise AssertionError(f"child {n} exited before it was killed: {err}")
                assert time.monotonic() < deadline, f"child {n} acknowledged {per_child[n]}"
                if warm:
                    break
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc in procs:
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    for t in readers:
        t.join(timeout=10)
        assert not t.is_alive()
    assert all(per_child[n] >= WARM_UP for n in range(8)), per_child  # each died writing

    store = tether.open_store(db_url, load_plugins=False)
    reaper = Reaper(store)
    reaped = reaper.sweep().reaped
    # On PostgreSQL a row still locked by a killed child's transaction (until its
    # server process notices the dead connection) is skipped, and taken next sweep.
    deadline = time.monotonic() + 30
    while store.census().open and time.monotonic() < deadline:
        time.sleep(0.1)
        reaped += reaper.sweep().reaped
    census = store.census()
    assert census.open == 0, census  # nothing left open
    assert census.end_reasons == {"reaped": census.total}
    assert len(reaped) == census.total  # each ended once
    assert {r.detail.split()[0] for r in reaped} == {"pid"}

    assert len(acked) >= 8 * WARM_UP
    stored = {}
    for sid in {a[0] for a in acked}:
        msgs = store.get_messages(sid)
        assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1))  # gap-free
        assert store.get_session(sid).message_count == len(msgs)
        for m in msgs:
            stored[(sid, m.seq)] = m.content
    counts = Counter(m for m in stored.values())
    for sid, seq, content in acked:
        assert stored.get((sid, seq)) == content, (sid, seq, content)  # every ack is there
        assert counts[content] == 1  # exactly once
    store.close()
