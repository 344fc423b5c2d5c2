"""``tether hermes census`` on stores the real Hermes wrote, checked against plain SQL.

Every expected figure is computed here from the raw rows (``SELECT`` of the columns,
counted in Python), never from tether's own output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tether.errors import ForeignDatabaseError, NotADatabaseError, StoreOpenError
from tether.interop.hermes import NotAHermesStoreError, census, census_stores, discover
from tether.model import SourceCensus

from ..conftest import ROOT, child_env, run_cli
from .conftest import generate, start_writer, writer_report


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def expected_census(path: Path) -> dict[str, Any]:
    """The census, from the raw rows by plain SQL and plain Python."""
    sessions = rows(
        path, "SELECT id, source, parent_session_id, ended_at, end_reason FROM sessions"
    )
    # A generation without active/compacted (before 0.16/0.18): Hermes' defaults, 1 and 0.
    have = {r[1] for r in rows(path, "PRAGMA table_info(messages)")}
    active = "active" if "active" in have else "1"
    compacted = "compacted" if "compacted" in have else "0"
    messages = rows(
        path,
        f"SELECT session_id, content, tool_calls, tool_call_id, {active}, {compacted}"
        " FROM messages",
    )
    with_messages = {m[0] for m in messages}
    by_source: dict[str, dict[str, Any]] = {}
    reasons: Counter[str] = Counter()
    for sid, source, _, ended_at, reason in sessions:
        entry = by_source.setdefault(
            source, {"total": 0, "open": 0, "ended": 0, "ghosts": 0, "end_reasons": Counter()}
        )
        entry["total"] += 1
        entry["open" if ended_at is None else "ended"] += 1
        entry["ghosts"] += sid not in with_messages
        if ended_at is not None:
            entry["end_reasons"][reason] += 1
            reasons[reason] += 1
    for entry in by_source.values():
        entry["end_reasons"] = dict(entry["end_reasons"])

    # Chains: follow each row up through parents that ended 'compression'.
    by_id = {s[0]: s for s in sessions}

    def root(sid: str) -> str:
        parent = by_id[sid][2]
        while parent in by_id and by_id[parent][4] == "compression":
            sid, parent = parent, by_id[parent][2]
        return sid

    members: dict[str, list[str]] = {}
    for sid in by_id:
        members.setdefault(root(sid), []).append(sid)
    chains = [m for m in members.values() if len(m) >= 2]
    answered = {(m[0], m[3]) for m in messages if m[3] is not None}
    dangling = sum(
        (m[0], call["id"]) not in answered
        for m in messages
        if m[2] is not None
        for call in json.loads(m[2])
    )
    return {
        "schema_version": rows(path, "SELECT version FROM schema_version")[0][0],
        "total": len(sessions),
        "open": sum(s[3] is None for s in sessions),
        "ended": sum(s[3] is not None for s in sessions),
        "ghosts": sum(s[0] not in with_messages for s in sessions),
        "ghosts_open": sum(s[0] not in with_messages and s[3] is None for s in sessions),
        "end_reasons": dict(reasons),
        "by_source": by_source,
        "chains": {
            "count": len(chains),
            "lengths": {str(k): v for k, v in Counter(len(m) for m in chains).items()},
            "open_tips": sum(by_id[s][3] is None for m in chains for s in m),
        },
        "messages": {
            "rows": len(messages),
            "active": sum(m[4] == 1 for m in messages),
            "compacted": sum(m[5] == 1 for m in messages),
            "null_content": sum(m[1] is None for m in messages),
            "dangling_tool_calls": dangling,
        },
    }


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without its path (the expectation has none)."""
    return {k: v for k, v in result.items() if k != "path"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shape(path: Path) -> list[tuple[Any, ...]]:
    """A store's rows without Hermes' wall-clock timestamps."""
    return rows(
        path,
        "SELECT id, source, model, parent_session_id, ended_at IS NULL, end_reason,"
        " message_count, model_config FROM sessions ORDER BY id",
    ) + rows(
        path,
        "SELECT session_id, role, content, tool_calls, tool_call_id, active, compacted"
        " FROM messages ORDER BY id",
    )


# --- the fixture -------------------------------------------------------------------------


def test_the_generator_is_deterministic_from_its_seed(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    again = generate(hermes_python, tmp_path / "again" / "state.db", seed=7)
    other = generate(hermes_python, tmp_path / "other" / "state.db", seed=8)
    assert shape(again) == shape(hermes_store)
    assert shape(other) != shape(hermes_store)


def test_the_fixture_has_every_shape_the_census_counts(hermes_store: Path) -> None:
    sources = {r[0] for r in rows(hermes_store, "SELECT DISTINCT source FROM sessions")}
    assert sources == {"cli", "tui", "api_server", "telegram", "cron"}
    reasons = {r[0] for r in rows(hermes_store, "SELECT DISTINCT end_reason FROM sessions")}
    assert {None, "compression", "branched"} <= reasons
    want = expected_census(hermes_store)
    assert want["open"] > 0 and want["ended"] > 0
    assert want["ghosts_open"] > 0 and want["ghosts"] > want["ghosts_open"]
    assert want["chains"]["count"] > 0 and len(want["chains"]["lengths"]) > 1
    assert want["chains"]["open_tips"] > 0
    m = want["messages"]
    assert m["compacted"] > 0 and m["null_content"] > 0 and m["dangling_tool_calls"] > 0
    # Tool calls with NULL content, and branches that point at their parent.
    [(calls,)] = rows(
        hermes_store,
        "SELECT COUNT(*) FROM messages WHERE content IS NULL AND tool_calls IS NOT NULL",
    )
    [(branches,)] = rows(
        hermes_store,
        "SELECT COUNT(*) FROM sessions c JOIN sessions p ON c.parent_session_id = p.id"
        " WHERE p.end_reason = 'branched' AND c.model_config LIKE '%_branched_from%'",
    )
    assert calls > 0 and branches > 0
    # Never-ended gateway chats and API-server rows, as Hermes leaves them.
    [(telegram_open, api_open)] = rows(
        hermes_store,
        "SELECT SUM(source = 'telegram' AND ended_at IS NULL),"
        " SUM(source = 'api_server' AND ended_at IS NULL) FROM sessions",
    )
    assert telegram_open > 0 and api_open > 0


# --- the census --------------------------------------------------------------------------


def test_census_equals_plain_sql_and_leaves_the_file_byte_identical(hermes_store: Path) -> None:
    assert (
        not Path(f"{hermes_store}-wal").exists() or Path(f"{hermes_store}-wal").stat().st_size == 0
    )
    before = sha256(hermes_store)
    result = census(hermes_store)
    assert comparable(result) == expected_census(hermes_store)
    assert result["path"] == str(hermes_store)
    assert sha256(hermes_store) == before
    wal = Path(f"{hermes_store}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # read-only: nothing was written


def test_census_json_has_doctors_keys_per_store_and_summed(hermes_store: Path) -> None:
    proc = run_cli("hermes", "census", "--json", str(hermes_store))
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    want = expected_census(hermes_store)
    [store] = printed["stores"]
    assert comparable(store) == want
    doctor_keys = set(SourceCensus().to_dict())
    for inner in printed["by_source"].values():
        assert set(inner) == doctor_keys
    for key in ("total", "open", "ended", "ghosts", "end_reasons", "by_source", "chains"):
        assert printed[key] == want[key], key
    assert printed["messages"] == want["messages"]
    assert printed["schema_versions"] == [22]


def test_census_prints_the_figures_as_text(hermes_store: Path) -> None:
    proc = run_cli("hermes", "census", str(hermes_store))
    assert proc.returncode == 0, proc.stderr
    want = expected_census(hermes_store)
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    assert lines[0] == f"{hermes_store} (Hermes schema 22)"
    assert f"sessions {want['total']}" in lines
    assert f"ghosts (no messages) {want['ghosts']}" in lines
    assert f"dangling tool calls {want['messages']['dangling_tool_calls']}" in lines
    for source, inner in want["by_source"].items():
        figures = [inner[k] for k in ("total", "open", "ended", "ghosts")]
        assert " ".join(map(str, [source, *figures])) in lines


def test_several_stores_are_listed_and_summed(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    second = generate(hermes_python, tmp_path / "gw2" / "state.db", seed=11, conversations=30)
    result = census_stores([hermes_store, second])
    a, b = expected_census(hermes_store), expected_census(second)
    assert [comparable(s) for s in result["stores"]] == [a, b]
    for key in ("total", "open", "ended", "ghosts", "ghosts_open"):
        assert result[key] == a[key] + b[key]
    assert result["end_reasons"] == dict(Counter(a["end_reasons"]) + Counter(b["end_reasons"]))
    for source in set(a["by_source"]) | set(b["by_source"]):
        for key in ("total", "open", "ended", "ghosts"):
            assert result["by_source"][source][key] == sum(
                x["by_source"].get(source, {}).get(key, 0) for x in (a, b)
            )
    assert result["chains"]["count"] == a["chains"]["count"] + b["chains"]["count"]
    for key, n in result["messages"].items():
        assert n == a["messages"][key] + b["messages"][key]


def test_census_while_hermes_writes_costs_the_writer_nothing(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    live = tmp_path / "state.db"
    shutil.copy(hermes_store, live)
    writer = start_writer(hermes_python, live, seconds=4, rate=100)
    seen: list[int] = []
    errors: list[BaseException] = []

    def read_until_the_writer_ends() -> None:
        try:
            while writer.poll() is None:
                seen.append(census(live)["messages"]["rows"])
        except BaseException as exc:  # reported below, with the writer's own report
            errors.append(exc)

    reader = threading.Thread(target=read_until_the_writer_ends)
    reader.start()
    report = writer_report(writer)
    reader.join(timeout=60)
    assert not errors, errors
    assert report["failures"] == 0, report
    assert isinstance(report["appended"], int) and report["appended"] >= 100
    assert len(seen) >= 10 and seen == sorted(seen)  # every census saw a consistent prefix
    assert seen[-1] <= expected_census(live)["messages"]["rows"]
    assert comparable(census(live)) == expected_census(live)


# --- finding and recognising stores -------------------------------------------------------


def test_stores_are_found_where_hermes_keeps_them(hermes_store: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    places = [
        tmp_path / "custom" / "state.db",
        home / ".hermes" / "state.db",
        home / ".hermes" / "profiles" / "work" / "state.db",
        home / ".hermes" / "profiles" / "bot" / "state.db",
    ]
    for p in places:
        p.parent.mkdir(parents=True)
        shutil.copy(hermes_store, p)
    env = {"HERMES_HOME": str(places[0].parent)}
    assert discover(env=env, home=home) == [places[0], places[1], places[3], places[2]]
    assert discover(env={}, home=home) == [places[1], places[3], places[2]]
    assert discover([places[2]], env=env, home=home) == [places[2]]
    proc = run_cli("hermes", "census", "--json", env={"HOME": str(home), **env})
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert len(printed["stores"]) == 4
    assert printed["total"] == 4 * expected_census(hermes_store)["total"]


def test_no_store_found_is_one_error_line(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError, match="no Hermes store found"):
        discover(env={}, home=tmp_path)
    proc = run_cli("hermes", "census", env={"HOME": str(tmp_path), "HERMES_HOME": ""})
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no Hermes store")
    proc = run_cli("hermes", "census", str(tmp_path / "missing.db"))
    assert proc.returncode == 1 and proc.stderr.startswith("error: no Hermes store at")


def test_anything_else_is_refused_in_one_line_and_left_untouched(tmp_path: Path) -> None:
    import tether

    theirs = tmp_path / "tether.db"
    store = tether.open_store(str(theirs))
    with store.session(source="cli") as s:
        s.append("user", "hi")
    store.close()
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    for path, error in ((theirs, NotAHermesStoreError), (text, NotADatabaseError)):
        before = sha256(path)
        with pytest.raises(error, match="not"):
            census(path)
        proc = run_cli("hermes", "census", str(path))
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and str(path) in proc.stderr
        assert sha256(path) == before
    assert issubclass(NotAHermesStoreError, ForeignDatabaseError)


def test_unknown_columns_are_ignored_and_missing_ones_defaulted(
    hermes_store: Path, tmp_path: Path
) -> None:
    # A newer generation: columns and a table this tether does not know.
    newer = tmp_path / "newer.db"
    shutil.copy(hermes_store, newer)
    conn = sqlite3.connect(newer)
    conn.execute("ALTER TABLE sessions ADD COLUMN last_activity_at REAL")
    conn.execute("ALTER TABLE messages ADD COLUMN message_uid TEXT")
    conn.execute("CREATE TABLE gateway_heartbeats (pid INTEGER)")
    conn.commit()
    conn.close()
    assert comparable(census(newer)) == expected_census(hermes_store)
    # An early git-main generation (v2 columns, written here by hand: no release of
    # that generation exists to drive): no active/compacted, so all rows are active.
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript(
        """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (2);
        CREATE TABLE sessions (id TEXT PRIMARY KEY, source TEXT NOT NULL, user_id TEXT,
          model TEXT, model_config TEXT, system_prompt TEXT, parent_session_id TEXT,
          started_at REAL NOT NULL, ended_at REAL, end_reason TEXT,
          message_count INTEGER DEFAULT 0, tool_call_count INTEGER DEFAULT 0,
          input_tokens INTEGER DEFAULT 0, output_tokens INTEGER DEFAULT 0);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
          role TEXT NOT NULL, content TEXT, tool_call_id TEXT, tool_calls TEXT,
          tool_name TEXT, timestamp REAL NOT NULL, token_count INTEGER, finish_reason TEXT);
        INSERT INTO sessions (id, source, started_at, ended_at, end_reason)
          VALUES ('a', 'cli', 1, 2, 'compression'), ('b', 'cli', 2, NULL, NULL),
                 ('c', 'telegram', 3, NULL, NULL);
        UPDATE sessions SET parent_session_id = 'a' WHERE id = 'b';
        INSERT INTO messages (session_id, role, content, tool_calls, timestamp)
          VALUES ('a', 'user', 'hi', NULL, 1),
                 ('b', 'assistant', NULL, '[{"id": "x", "type": "function"}]', 2);
        """
    )
    conn.close()
    result = census(old)
    assert result["schema_version"] == 2
    assert (result["total"], result["open"], result["ghosts"], result["ghosts_open"]) == (
        3,
        2,
        1,
        1,
    )
    assert result["chains"] == {"count": 1, "lengths": {"2": 1}, "open_tips": 1}
    assert result["messages"] == {
        "rows": 2,
        "active": 2,
        "compacted": 0,
        "null_content": 1,
        "dangling_tool_calls": 1,
    }
    assert comparable(result) == expected_census(old)


# --- the README ---------------------------------------------------------------------------


def test_the_readme_shows_census_and_repair_of_a_generated_store_as_printed(
    hermes_python: Path, tmp_path: Path
) -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Coming from Hermes")
    end = readme.index("\n## ", start + 1)
    census_block, *others = (
        b.split("```", 1)[0].splitlines() for b in readme[start:end].split("```text\n")[1:]
    )
    generate_line, *steps = census_block
    assert generate_line.startswith("$ .venv-hermes/bin/python tests/interop/hermes_fixture.py")
    generate(hermes_python, tmp_path / "state.db", seed=int(generate_line.split("--seed")[1]))
    # Census, then repair's dry run, --yes and a second --yes, in order, on the same file.
    blocks = [steps, *(b for b in others if b[0].startswith("$ tether hermes repair"))]
    commands = [b[0] for b in blocks]
    assert commands == [
        "$ tether hermes census state.db",
        "$ tether hermes repair state.db",
        "$ tether hermes repair state.db --yes",
        "$ tether hermes repair state.db --yes",
    ]
    for command, *shown in blocks:
        proc = subprocess.run(
            [sys.executable, "-m", "tether", *command.split()[2:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == shown, command


# --- the Hermes environment ------------------------------------------------------------------


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_hermes_environment_fails_under_ci_and_skips_elsewhere(
    ci: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{Path(__file__)}::test_the_fixture_has_every_shape_the_census_counts",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(CI=ci, TETHER_TEST_HERMES_PYTHON=str(tmp_path / "none" / "python")),
    )
    assert "no Hermes environment at" in proc.stdout, proc.stdout
    if ci:
        assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout
    else:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout
