"""Census and repair on every Hermes schema generation a user may have on disk.

Each PyPI release from 0.13.0 (schema 11) to 0.19.0 (schema 22) writes its own store
through its own ``hermes_state.py`` (conftest ``hermes_generations``); the git-main
layouts before (schema 2) and after (schema 30) the releases are derived from those
stores with plain SQL. Every expected figure is counted here by plain SQL over the
file, never taken from tether's output.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tether.interop.hermes import census
from tether.interop.hermes.repair import apply_repair, plan_repair

from .conftest import GENERATIONS
from .test_hermes_census import comparable, expected_census, sha256
from .test_hermes_repair import open_ids, snapshot

# Columns that came (or went) with a generation: proof that each store is what that
# generation wrote, not 0.19.0's file relabelled.
MARKERS = {
    ("messages", "active"): 14,
    ("messages", "compacted"): 17,
    ("sessions", "title"): 11,
    ("sessions", "cwd"): 14,
    ("sessions", "profile_name"): 22,
    ("sessions", "last_activity_at"): 30,
}
OWNED = "source IN ('cli', 'tui', 'cron')"


def table_columns(path: Path, table: str) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


def test_every_generation_is_the_one_its_release_writes(
    hermes_generations: dict[str, Path],
) -> None:
    for name, schema in GENERATIONS.items():
        path = hermes_generations[name]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        [(version,)] = conn.execute("SELECT version FROM schema_version").fetchall()
        [(sessions, messages)] = conn.execute(
            "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM messages)"
        ).fetchall()
        conn.close()
        assert version == schema, name
        assert sessions > 0 and messages > 0, name
        for (table, column), since in MARKERS.items():
            assert (column in table_columns(path, table)) == (schema >= since), (name, column)


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_census_equals_plain_sql_on_every_generation(
    name: str, hermes_generations: dict[str, Path]
) -> None:
    path = hermes_generations[name]
    before = sha256(path)
    result = census(path)
    assert result["schema_version"] == GENERATIONS[name]
    assert comparable(result) == expected_census(path)
    assert sha256(path) == before


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_repair_dry_run_then_yes_on_every_generation(
    name: str, hermes_generations: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_generations[name], store)
    before = snapshot(store)
    owned = open_ids(store, OWNED)
    spared = open_ids(store, f"NOT ({OWNED})")
    assert owned and spared, name
    main_file = sha256(store)
    # In process (the CLI's own path is tested on 0.19.0 in test_hermes_repair.py), with a
    # short second holder scan: thirteen generations stay a few seconds.
    plan = plan_repair(store, recheck_after=0.05)
    assert plan.to_end["dead"] == owned
    assert sha256(store) == main_file  # the dry run changed nothing
    wal = Path(f"{store}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    done = apply_repair(plan)
    assert done.ended["dead"] == owned and done.skipped == []
    after = snapshot(store)
    assert open_ids(store, "1") == spared
    for sid, (ended_at, reason, last) in after.items():
        if sid in owned:
            assert reason == "reaped" and (last is None or ended_at >= last)  # type: ignore[operator]
        else:
            assert after[sid] == before[sid]
    second = apply_repair(plan_repair(store, recheck_after=0.05))
    assert all(ids == [] for ids in second.ended.values()) and second.transactions == 0
    assert snapshot(store) == after


def test_git_mains_last_activity_counts_as_activity(
    hermes_generations: dict[str, Path], tmp_path: Path
) -> None:
    # Upstream main's heartbeat stamps last_activity_at without a message: a row whose
    # stamp moved after the plan read it is left open.
    store = tmp_path / "state.db"
    shutil.copy(hermes_generations["git-v30"], store)
    plan = plan_repair(store, recheck_after=0.05)
    beating, *others = plan.to_end["dead"]
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("UPDATE sessions SET last_activity_at = ? WHERE id = ?", (time.time(), beating))
    conn.close()
    result = apply_repair(plan)
    assert result.skipped == [beating] and result.ended["dead"] == others
    assert open_ids(store, OWNED) == [beating]
