"""Four processes append to the same session and to their own at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

import tether

from .conftest import child_env

pytestmark = pytest.mark.slow

WRITER = """
import json, sys, time, tether
db, shared, start, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
store = tether.open_store(db, load_plugins=False)
mine = store.session(source="writer")
together = store.attach(shared)
while time.time() < start:
    pass
seqs = []
for i in range(n):
    seqs.append(together.append("user", f"shared {i}").seq)
    mine.append("assistant", f"own {i}")
    if i % 10 == 0:
        for k in range(3):
            mine.buffer("tool", f"buffered {i}.{k}", tool_call_id=f"c{i}.{k}")
        mine.flush()
mine.end()
print(json.dumps({"id": mine.id, "shared_seqs": seqs}))
"""


def test_four_processes_same_and_different_sessions(db_url: str) -> None:
    n = 150
    store = tether.open_store(db_url, load_plugins=False)
    shared = store.session(source="shared")
    shared.persist()
    start = str(time.time() + 1.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db_url, shared.id, start, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        results.append(json.loads(out))

    shared_msgs = store.get_messages(shared.id)
    assert [m.seq for m in shared_msgs] == list(range(1, 4 * n + 1))  # gap-free, no duplicates
    assert store.get_session(shared.id).message_count == 4 * n
    all_seqs = sorted(s for r in results for s in r["shared_seqs"])
    assert all_seqs == list(range(1, 4 * n + 1))  # every acknowledged seq is what was stored
    per_writer = n + 3 * len(range(0, n, 10))
    for r in results:
        s = store.get_session(r["id"])
        assert s.message_count == per_writer and s.end_reason == "completed"
        assert [m.seq for m in store.get_messages(r["id"])] == list(range(1, per_writer + 1))
    c = store.census()
    assert (c.total, c.open, c.ghosts) == (5, 1, 0)
    shared.end()
    store.close()


OPENER = """
import sys, time, tether
t = float(sys.argv[2])
while time.time() < t:
    pass
s = tether.open_store(sys.argv[1], load_plugins=False)
h = s.session(source="race")
h.append("user", "hi")
h.end()
print("ok")
"""


def test_processes_creating_a_new_database_at_once_all_succeed(
    new_db: Callable[[], str], backend: str
) -> None:
    """Four processes open (so create and migrate) the same new database at once."""
    for _ in range(3):
        url = new_db()
        start = str(time.time() + 1.5)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, url, start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for _ in range(4)
        ]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and out.strip() == "ok", err
        s = tether.open_store(url, load_plugins=False)
        assert s.census().total == 4
        from tether.store.sqlite.schema import MIGRATIONS

        query = "SELECT version FROM tether_migrations ORDER BY version"
        got = s.backend.read(lambda c, q=query: [tuple(r) for r in c.execute(q).fetchall()])
        assert got == [(m.version,) for m in MIGRATIONS]  # each migration applied once
        s.close()
