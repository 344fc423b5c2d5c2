"""How the long-running servers run Python's garbage collector (issue 15).

In a gateway under load, CPython's default collector paused the event loop
for 13 to 17 ms on each full collection, which walked every object start-up
had built (modules, classes, the ASGI stack): each such pause delays every
turn in flight, and made most of the gateway's p99. The servers freeze what
start-up built and collect young objects less often.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import child_env

PROBE = """
import gc, json
from tether.gcpolicy import YOUNG, tune_for_server
before = gc.get_freeze_count()
meter = tune_for_server()
for _ in range(3):
    a = []; a.append(a)  # a cycle: only the collector frees it
    del a
    gc.collect()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "young": gc.get_threshold()[0],
                  "YOUNG": YOUNG, "stats": meter.stats()}))
"""


def test_a_server_freezes_its_start_up_and_collects_young_objects_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=child_env(), check=True
    )
    got = json.loads(out.stdout)
    assert got["before"] == 0
    assert got["frozen"] > 1000  # everything imported by then: never walked again
    assert got["young"] == got["YOUNG"] > 700  # CPython's default is 700
    stats = got["stats"]
    assert stats["gc_collections"] >= 3
    assert 0 < stats["gc_pause_max_ms"] < 1000
    assert stats["gc_frozen_objects"] == got["frozen"]
