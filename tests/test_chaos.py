"""kill -9 chaos: processes die at random moments; nothing acknowledged is lost, nothing stays open.

Eight children each open several sessions and append in a loop, reporting every
message *after* ``append`` returned (acknowledged). The parent SIGKILLs them at
random moments, runs the reaper, and checks that no session is left open and
that every acknowledged message is stored exactly once.
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


def test_kill_9_at_random_moments(db_url: str) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    rnd = random.Random(1234)
    acked: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    procs = []
    readers = []

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "ack":
                with lock:
                    acked.append((parts[1], int(parts[2]), parts[3]))

    for n in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        t = threading.Thread(target=read, args=(proc,), daemon=True)
        t.start()
        procs.append(proc)
        readers.append(t)

    started = time.time()
    order = list(procs)
    rnd.shuffle(order)
    for proc in order:  # each dies at a random moment within the first seconds
        time.sleep(rnd.uniform(0.2, 0.8))
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    for t in readers:
        t.join(timeout=10)
    assert time.time() - started < 30

    store = tether.open_store(db_url, load_plugins=False)
    reaper = Reaper(store)
    reaped = reaper.sweep().reaped
    # On PostgreSQL a row still locked by a killed child's transaction (until its
    # server process notices the dead connection) is skipped, and taken next sweep.
    deadline = time.monotonic() + 10
    while store.census().open and time.monotonic() < deadline:
        time.sleep(0.1)
        reaped += reaper.sweep().reaped
    census = store.census()
    assert census.open == 0, census  # nothing left open
    assert census.end_reasons == {"reaped": census.total}
    assert len(reaped) == census.total  # each ended once
    assert {r.detail.split()[0] for r in reaped} == {"pid"}

    assert len(acked) > 100, "the workers should have written for a while"
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
