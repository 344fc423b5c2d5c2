"""The ``tether`` command: ls, show, end, doctor; --db, $TETHER_DB and --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tether
from tether.cli.app import app
from tether.lifecycle import exits

from .conftest import run_cli

runner = CliRunner()


@pytest.fixture
def filled(db_url: str) -> dict[str, str]:
    s = tether.open_store(db_url, load_plugins=False)
    with s.session(source="cli", model="gpt-4o", title="Fix the build", cwd="/src") as done:
        done.append("user", "why does make fail?")
        done.append(
            "assistant",
            None,
            tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}
            ],
        )
        done.append("tool", "exit 2", tool_call_id="c1", tool_name="shell")
        done.append("assistant", "a header is missing")
    live = s.session(source="tui", title="still going")
    live.append("user", "hello")
    ghost = s.session(source="tui")
    ghost.persist()
    for h in (live, ghost):  # leave them open, as a crashed process would
        exits.untrack(h)
    s.close()
    return {"done": done.id, "live": live.id, "ghost": ghost.id, "db": db_url}


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result


def test_ls_table_and_filters(filled: dict[str, str]) -> None:
    r = invoke("ls", "--db", filled["db"])
    assert r.exit_code == 0
    assert filled["done"] in r.stdout and filled["live"] in r.stdout
    assert filled["ghost"] not in r.stdout
    assert "completed" in r.stdout and "open" in r.stdout
    r = invoke("ls", "--db", filled["db"], "--all")
    assert filled["ghost"] in r.stdout
    r = invoke("ls", "--db", filled["db"], "--source", "cli")
    assert filled["live"] not in r.stdout and filled["done"] in r.stdout
    r = invoke("ls", "--db", filled["db"], "--open")
    assert filled["done"] not in r.stdout and filled["live"] in r.stdout


def test_ls_json_is_stable(filled: dict[str, str]) -> None:
    r = invoke("ls", "--db", filled["db"], "--json", "--limit", "1")
    data = json.loads(r.stdout)
    assert set(data) == {"items", "next_cursor"}
    [item] = data["items"]
    assert item["id"] == filled["live"]
    assert {
        "id",
        "source",
        "model",
        "title",
        "cwd",
        "parent_id",
        "root_id",
        "created_at",
        "last_active_at",
        "ended_at",
        "end_reason",
        "end_detail",
        "message_count",
        "chain_message_count",
        "chain_last_active_at",
        "owner_id",
        "epoch",
        "metadata",
    } <= set(item)
    assert item["created_at"].endswith("Z")
    nxt = json.loads(
        invoke("ls", "--db", filled["db"], "--json", "--cursor", data["next_cursor"]).stdout
    )
    assert [i["id"] for i in nxt["items"]] == [filled["done"]] and nxt["next_cursor"] is None


def test_tether_db_environment_variable(filled: dict[str, str]) -> None:
    r = invoke("ls", "--json", env={"TETHER_DB": filled["db"]})
    assert len(json.loads(r.stdout)["items"]) == 2


def test_show(filled: dict[str, str]) -> None:
    r = invoke("show", filled["done"], "--db", filled["db"])
    assert r.exit_code == 0
    assert "why does make fail?" in r.stdout and "calls shell" in r.stdout
    assert "completed" in r.stdout
    data = json.loads(invoke("show", filled["done"], "--db", filled["db"], "--json").stdout)
    assert set(data) == {"session", "chain", "messages"}
    assert data["session"]["end_reason"] == "completed"
    assert [m["seq"] for m in data["messages"]] == [1, 2, 3, 4]
    assert data["messages"][1]["content"] is None
    assert data["messages"][1]["tool_calls"][0]["function"]["name"] == "shell"


def test_end_once_then_says_so(filled: dict[str, str]) -> None:
    r = invoke("end", filled["live"], "--db", filled["db"], "--reason", "cli_close")
    assert r.exit_code == 0 and f"ended {filled['live']} (cli_close)" in r.stdout
    r = invoke("end", filled["live"], "--db", filled["db"])
    assert r.exit_code == 0 and "already ended (cli_close)" in r.stdout
    data = json.loads(invoke("end", filled["live"], "--db", filled["db"], "--json").stdout)
    assert data["ended"] is False and data["session"]["end_reason"] == "cli_close"


def test_doctor(filled: dict[str, str]) -> None:
    r = invoke("doctor", "--db", filled["db"])
    assert r.exit_code == 0 and "ghosts" in r.stdout and "completed" in r.stdout
    data = json.loads(invoke("doctor", "--db", filled["db"], "--json").stdout)
    assert {"total", "open", "ended", "ghosts", "end_reasons", "by_source"} <= set(data)
    assert (data["total"], data["open"], data["ended"], data["ghosts"]) == (3, 2, 1, 1)
    assert data["end_reasons"] == {"completed": 1}
    assert data["by_source"]["tui"]["open"] == 2


def test_default_database_lives_in_the_data_dir(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    proc = run_cli("doctor", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "xdg" / "tether" / "tether.db").exists()


def test_empty_listing(db_url: str) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    assert invoke("ls", "--db", db_url).stdout.strip() == "no sessions"


def test_real_command_and_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("tether ")


def test_longest_owner_lease_counts_only_owners_of_open_sessions(db_url: str) -> None:
    """The store answers `tether reap --ttl`'s question; the CLI runs no SQL of its own."""
    from .test_liveness import FAR, owned_sessions

    now = 1_000_000.0
    with tether.open_store(db_url, load_plugins=False) as store:
        assert store.longest_owner_lease(above=5) == (0, 0.0)
        owned_sessions(store, FAR, 2, now, lease=600)
        owned_sessions(store, FAR, 1, now, lease=90)
        owned_sessions(store, FAR, 1, now, lease=4)  # within --ttl: not counted
        gone = owned_sessions(store, FAR, 1, now, lease=9000)
        store.end_session(gone[0], "done")  # owns nothing open any more: not counted
        assert store.longest_owner_lease(above=5) == (2, 600.0)
        assert store.longest_owner_lease(above=600) == (0, 0.0)
    r = run_cli("reap", "--db", db_url, "--ttl", "5")
    assert r.returncode == 0, r.stderr
    assert "note: --ttl 5 is below the lease of 2 owners (up to 600 s)" in r.stderr
