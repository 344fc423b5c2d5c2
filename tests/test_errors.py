"""Bad input gets one clear error, and nothing is lost or half-written."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tether.compose import Store
from tether.store.sqlite.schema import SCHEMA_VERSION

from .conftest import run_cli


def count(store: Store, table: str) -> int:
    return store.backend.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def assert_one_clear_line(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- opening -------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "x.db"
    with pytest.raises(tether.StoreOpenError, match="does not exist"):
        tether.open_store(target)
    assert not target.parent.exists()
    assert_one_clear_line(run_cli("ls", "--db", str(target)), "no database")


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only for real, even for root (the immutable attribute)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(mode)


@pytest.mark.parametrize("target", ["/dev/null", "fifo"])
def test_cli_on_a_device_or_fifo_is_one_error_and_creates_nothing(
    tmp_path: Path, target: str
) -> None:
    if target == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = Path(target)
    before = sorted(os.listdir(path.parent))
    assert_one_clear_line(run_cli("ls", "--db", str(path)), "not a database file")
    assert sorted(os.listdir(path.parent)) == before


def test_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        with pytest.raises(tether.StoreOpenError, match="writable"):
            tether.open_store(ro / "x.db")
        assert_one_clear_line(run_cli("ls", "--db", str(ro / "x.db")), "no database")
    assert list(ro.iterdir()) == []


def test_read_only_database_file(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    s = tether.open_store(path, load_plugins=False)
    h = s.session(source="cli")
    h.append("user", "before")
    h.end()
    s.close()
    with read_only(path):
        s = tether.open_store(path, load_plugins=False)
        assert s.get_session(h.id).message_count == 1  # reading still works
        h2 = s.session(source="cli")
        with pytest.raises(tether.StoreOpenError, match="read-only"):
            h2.append("user", "x")
        with pytest.raises(tether.StoreOpenError, match="read-only"):
            s.end_session(h.id, "manual")
        s.backend.close()
        proc = run_cli("end", h.id, "--db", str(path))
        assert_one_clear_line(proc, "read-only")
    s = tether.open_store(path, load_plugins=False)
    assert s.census().total == 1
    s.close()


def test_not_a_sqlite_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 100
    path.write_bytes(content)
    with pytest.raises(tether.NotADatabaseError, match="untouched"):
        tether.open_store(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    proc = run_cli("doctor", "--db", str(path))
    assert_one_clear_line(proc, "not a tether database")
    assert path.read_bytes() == content


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, source TEXT)")
    c.commit()
    c.close()
    before = path.read_bytes()
    with pytest.raises(tether.ForeignDatabaseError):
        tether.open_store(path)
    assert path.read_bytes() == before
    assert_one_clear_line(run_cli("ls", "--db", str(path)), "another application")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    tether.open_store(path, load_plugins=False).close()
    c = sqlite3.connect(path)
    # A step of a newer tether that older code cannot survive (see tests/test_upgrades.py).
    c.execute(
        "INSERT INTO tether_migrations VALUES (?, ?, 0)", (SCHEMA_VERSION + 5, SCHEMA_VERSION + 5)
    )
    c.commit()
    c.close()
    with pytest.raises(tether.SchemaTooNewError, match="newer tether"):
        tether.open_store(path)
    assert_one_clear_line(run_cli("ls", "--db", str(path)), "newer tether")


def test_a_directory_path(tmp_path: Path) -> None:
    with pytest.raises(tether.StoreOpenError, match="directory"):
        tether.open_store(tmp_path)


def test_invalid_durability(tmp_path: Path) -> None:
    with pytest.raises(tether.StoreOpenError, match="durability"):
        tether.open_store(tmp_path / "x.db", durability="sometimes")


# --- sessions and messages --------------------------------------------------------


def test_unknown_session_id(store: Store) -> None:
    with pytest.raises(tether.SessionNotFoundError, match="no session"):
        store.get_session("01NOPE")
    with pytest.raises(tether.SessionNotFoundError):
        store.get_messages("01NOPE")
    with pytest.raises(tether.SessionNotFoundError):
        store.attach("01NOPE")
    assert isinstance(tether.SessionNotFoundError("x"), LookupError)


def test_unknown_session_id_on_the_cli(db_url: str, store: Store) -> None:
    assert_one_clear_line(run_cli("show", "01NOPE", "--db", db_url), "no session")
    assert_one_clear_line(run_cli("end", "01NOPE", "--db", db_url), "no session")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "wizard", "content": "x"}, "invalid role"),
        ({"role": "user", "content": "bad \udc80 surrogate"}, "lone surrogate"),
        ({"role": "user", "content": "nul \x00 inside"}, "NUL character at offset 4"),
        ({"role": "user", "content": 42}, "must be a string"),
        ({"role": "assistant", "tool_calls": [{"name": "x\x00"}]}, "NUL"),
        ({"role": "assistant", "tool_calls": [{"args": float("nan")}]}, "not valid JSON"),
        ({"role": "assistant", "tool_calls": "ls"}, "must be a list"),
        ({"role": "tool", "content": "x", "tool_name": "\ud800"}, "lone surrogate"),
    ],
)
def test_invalid_messages_write_nothing(store: Store, kwargs: dict, message: str) -> None:
    h = store.session(source="cli")
    h.append("user", "fine")
    kwargs = dict(kwargs)  # the parameters are shared by both backends' runs
    role = kwargs.pop("role")
    with pytest.raises(tether.InvalidInputError, match=message):
        h.append(role, **kwargs)
    with pytest.raises(tether.InvalidInputError, match=message):
        h.buffer(role, **kwargs)
    assert h.pending == 0
    assert count(store, "messages") == 1
    assert store.get_session(h.id).message_count == 1
    assert isinstance(tether.InvalidInputError("x"), ValueError)


def test_invalid_session_fields_write_nothing(store: Store) -> None:
    with pytest.raises(tether.InvalidInputError):
        store.session(source="cli", title="a\x00b")
    with pytest.raises(tether.InvalidInputError):
        store.session(source="")
    with pytest.raises(tether.InvalidInputError):
        store.session(source="cli", metadata={"k": {1, 2}})
    with pytest.raises(tether.InvalidInputError):
        store.session(source="cli", metadata={"k": "\udfff"})
    assert count(store, "sessions") == 0


def test_invalid_end_reason(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "x")
    with pytest.raises(tether.InvalidInputError, match="end reason"):
        h.end("Not A Reason!")
    with pytest.raises(tether.InvalidInputError):
        store.end_session(h.id, "")
    assert store.get_session(h.id).is_open
    assert h.end("custom_reason") is True  # any snake_case word is allowed


def test_bad_cli_reason(db_url: str, store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "x")
    assert_one_clear_line(
        run_cli("end", h.id, "--reason", "Bad Reason", "--db", db_url), "end reason"
    )
    assert store.get_session(h.id).is_open


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("", False),
        ("plain ascii", False),
        ("héllo wörld, 日本語, 😀", False),
        ("\x00", True),
        ("end\x00", True),
        ("\x00é", True),
        ("é\ud800", True),
        ("\udfff", True),
        ("ascii then \udc80 low", True),
        ("😀\ud83d", True),  # a high surrogate left over after a real astral character
    ],
)
def test_bad_text_finds_nul_and_lone_surrogates(text: str, bad: bool) -> None:
    from tether.validate import BAD_TEXT_SEARCH, check_text

    assert bool(BAD_TEXT_SEARCH(text)) is bad
    if bad:
        with pytest.raises(tether.InvalidInputError, match=r"NUL|lone surrogate"):
            check_text(text, "content")
    else:
        assert check_text(text, "content") == text
