"""``tether hermes gc`` on stores the real Hermes wrote: it deletes only what tether
holds completely, through Hermes' own delete semantics; expectations by plain SQL."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import tether
from tether.interop.hermes.gc import gc_stores
from tether.interop.hermes.importer import import_stores

from ..conftest import run_cli
from .sync_helpers import hermes_copy, hermes_ops, rows, tether_messages


@pytest.fixture
def imported(hermes_store: Path, tmp_path: Path) -> tuple[Path, Path]:
    path = hermes_copy(hermes_store, tmp_path)
    db = tmp_path / "t.db"
    with tether.open_store(db) as store:
        import_stores(store, [path])
    return path, db


def ended_with_messages(path: Path) -> set[str]:
    return {
        r[0]
        for r in rows(
            path,
            "SELECT id FROM sessions s WHERE ended_at IS NOT NULL AND EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id)",
        )
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_dry_run_lists_what_tether_holds_and_changes_nothing(
    imported: tuple[Path, Path],
) -> None:
    path, db = imported
    wal = Path(f"{path}-wal")
    # A mode=ro reader re-creates an empty WAL file (harmless); nothing is in it.
    assert not wal.exists() or wal.stat().st_size == 0
    before = sha256(path)
    with tether.open_store(db) as store:
        (result,) = gc_stores(store, [path], older_than=0, yes=False)
    assert sha256(path) == before
    assert not wal.exists() or wal.stat().st_size == 0
    assert set(result.eligible) == ended_with_messages(path)
    ended_ghosts = rows(
        path,
        "SELECT count(*) FROM sessions s WHERE ended_at IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.id)",
    )[0][0]
    assert result.kept == {"not_in_tether": ended_ghosts}
    assert result.deleted == []


def test_yes_deletes_with_hermes_semantics_and_tether_keeps_everything(
    hermes_python: Path, imported: tuple[Path, Path]
) -> None:
    path, db = imported
    expected = ended_with_messages(path)
    messages_before = tether_messages(db)
    children = dict(
        rows(path, "SELECT id, parent_session_id FROM sessions WHERE parent_session_id IS NOT NULL")
    )
    with tether.open_store(db) as store:
        (result,) = gc_stores(store, [path], older_than=0, yes=True)
    assert set(result.deleted) == expected
    left = {r[0] for r in rows(path, "SELECT id FROM sessions")}
    assert not left & expected
    assert (
        rows(
            path, "SELECT count(*) FROM messages WHERE session_id NOT IN (SELECT id FROM sessions)"
        )[0][0]
        == 0
    )
    # Hermes' search index follows its triggers: nothing points at a deleted message.
    assert (
        rows(
            path, "SELECT count(*) FROM messages_fts WHERE rowid NOT IN (SELECT id FROM messages)"
        )[0][0]
        == 0
    )
    # Children of deleted rows are orphaned (kept, parent NULL), as Hermes' delete does.
    for child, parent in children.items():
        if parent in expected and child in left:
            assert rows(path, "SELECT parent_session_id FROM sessions WHERE id = ?", (child,)) == [
                (None,)
            ]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert tether_messages(db) == messages_before  # tether lost nothing
    # Hermes goes on working on the store.
    sid = sorted(left)[0]
    hermes_ops(hermes_python, path, [{"op": "append", "sid": sid, "content": "after gc"}])
    with tether.open_store(db) as store:
        (again,) = gc_stores(store, [path], older_than=0, yes=True)
    assert again.deleted == []


def test_what_tether_lacks_or_holds_open_is_kept(
    hermes_python: Path, imported: tuple[Path, Path]
) -> None:
    path, db = imported
    ended = sorted(ended_with_messages(path))[0]
    still_open = rows(
        path,
        "SELECT id FROM sessions s WHERE ended_at IS NULL AND EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id",
    )[0][0]
    # Hermes appends to an ended row (it has no guard) and ends an open one; tether
    # has not seen either yet.
    hermes_ops(
        hermes_python,
        path,
        [
            {"op": "append", "sid": ended, "content": "late"},
            {"op": "end", "sid": still_open, "reason": "user_exit"},
        ],
    )
    with tether.open_store(db) as store:
        (result,) = gc_stores(store, [path], older_than=0, yes=True)
        assert ended not in result.deleted and still_open not in result.deleted
        assert result.kept["missing_messages"] == 1
        assert result.kept["open_in_tether"] == 1
        import_stores(store, [path])  # now tether holds both completely
        (result,) = gc_stores(store, [path], older_than=0, yes=True)
    assert set(result.deleted) == {ended, still_open}


def test_older_than_and_the_cli(imported: tuple[Path, Path]) -> None:
    path, db = imported
    n = len(ended_with_messages(path))
    young = run_cli("hermes", "gc", str(path), "--db", str(db), "--older-than", "3650d")
    assert young.returncode == 0, young.stderr
    assert "0 sessions ended more than 3650d ago" in young.stdout
    dry = run_cli("hermes", "gc", str(path), "--db", str(db), "--older-than", "0", "--json")
    assert json.loads(dry.stdout)["stores"][0]["eligible"] == n
    assert json.loads(dry.stdout)["dry_run"] is True
    done = run_cli("hermes", "gc", str(path), "--db", str(db), "--older-than", "0", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted{'':<50}{n}" in done.stdout
    missing = run_cli("hermes", "gc", str(path), "--db", str(db.parent / "nope.db"))
    assert missing.returncode == 1 and "no database at" in missing.stderr


def delegate_family(
    hermes_python: Path, path: Path, p: str, *, child_open: bool, release: str | None = None
) -> list[str]:
    """A session ``p`` with a delegate child, its own delegate grandchild (an orchestrator
    subagent) and a branch child, all written by the real SessionDB."""
    d1, d2, b = f"{p}_d1", f"{p}_d2", f"{p}_b"
    ops: list[dict[str, object]] = [{"op": "create", "sid": p, "source": "cli"}]
    ops.append({"op": "append", "sid": p, "content": "delegate this"})
    for child, parent in ((d1, p), (d2, d1)):
        ops.append(
            {
                "op": "create",
                "sid": child,
                "source": "cli",
                "parent": parent,
                "model_config": {"_delegate_from": parent},
            }
        )
        ops.append({"op": "append", "sid": child, "role": "assistant", "content": f"work {child}"})
    branched = {"_branched_from": p}
    ops.append({"op": "create", "sid": b, "source": "cli", "parent": p, "model_config": branched})
    ops.append({"op": "append", "sid": b, "content": "a branch, still open"})
    ops += [{"op": "end", "sid": s, "reason": "completed"} for s in (d2, p)]
    if not child_open:
        ops.append({"op": "end", "sid": d1, "reason": "completed"})
    hermes_ops(hermes_python, path, ops, release=release)
    return [p, d1, d2, b]


def test_a_session_with_delegate_children_goes_with_them_as_hermes_own_delete_does(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    path = hermes_copy(hermes_store, tmp_path)
    p, d1, d2, b = delegate_family(hermes_python, path, "deleg_ok", child_open=False)
    q, e1, e2, _ = delegate_family(hermes_python, path, "deleg_busy", child_open=True)
    db = tmp_path / "t.db"
    with tether.open_store(db) as store:
        import_stores(store, [path])
    # What Hermes' own delete does with the same sessions, on a copy.
    mirror = tmp_path / "own" / "state.db"
    mirror.parent.mkdir()
    shutil.copy(path, mirror)
    hermes_ops(hermes_python, mirror, [{"op": "delete", "sid": p}])
    took_along = {p, d1, d2} - {r[0] for r in rows(mirror, "SELECT id FROM sessions")}
    assert took_along == {p, d1, d2}  # Hermes 0.19 deletes delegate children with the parent
    messages_before = tether_messages(db)
    with tether.open_store(db) as store:
        (dry,) = gc_stores(store, [path], older_than=0, yes=False)
        assert {p, d1, d2} <= set(dry.eligible)
        # q's delegate child e1 is open: Hermes' delete of q would take it along, so q
        # stays; e2 (ended, held) may go on its own, as Hermes lets a subagent row go.
        assert q not in dry.eligible and e2 in dry.eligible
        assert dry.kept["delegate_children"] == 1
        (result,) = gc_stores(store, [path], older_than=0, yes=True)
    left = {r[0] for r in rows(path, "SELECT id FROM sessions")}
    assert {p, d1, d2} <= set(result.deleted) and not {p, d1, d2} & left
    assert {q, e1, b} <= left and e2 not in left
    assert rows(path, "SELECT parent_session_id FROM sessions WHERE id = ?", (b,)) == [(None,)]
    gone = rows(path, "SELECT count(*) FROM messages WHERE session_id IN (?, ?, ?)", (p, d1, d2))
    assert gone == [(0,)]
    assert rows(
        path, "SELECT count(*) FROM messages_fts WHERE rowid NOT IN (SELECT id FROM messages)"
    ) == [(0,)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert tether_messages(db) == messages_before


@pytest.mark.parametrize("release", ["0.16.0", "0.17.0"])
def test_gc_follows_each_generations_own_delete_of_delegate_children(
    release: str, hermes_python: Path, hermes_generations: dict[str, Path], tmp_path: Path
) -> None:
    # 0.16.0 (schema 14) orphans delegate children like any child; 0.17.0 (schema 16)
    # deletes them with their parent. Each release's own delete is the reference.
    path = tmp_path / "hermes" / "state.db"
    path.parent.mkdir()
    shutil.copy(hermes_generations[release], path)
    q, e1, e2, _ = delegate_family(hermes_python, path, "busy", child_open=True, release=release)
    own = tmp_path / "own" / "state.db"
    own.parent.mkdir()
    shutil.copy(path, own)
    hermes_ops(hermes_python, own, [{"op": "delete", "sid": q}], release=release)
    takes_along = not rows(own, "SELECT 1 FROM sessions WHERE id = ?", (e1,))
    assert takes_along == (release == "0.17.0")
    db = tmp_path / "t.db"
    with tether.open_store(db) as store:
        import_stores(store, [path])
        (result,) = gc_stores(store, [path], older_than=0, yes=True)
    left = {r[0] for r in rows(path, "SELECT id FROM sessions")}
    assert e1 in left and e2 not in left  # e1 is open; e2 is ended and held
    # The open delegate child e1 would go with q: then q is kept, else q goes.
    assert (q in left) == takes_along
    assert result.kept.get("delegate_children", 0) == int(takes_along)
    if not takes_along:
        assert rows(path, "SELECT parent_session_id FROM sessions WHERE id = ?", (e1,)) == [(None,)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


def test_a_ghost_delegate_child_ended_in_hermes_does_not_keep_its_parent(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    """A delegate child without a message (a subagent that never wrote one) is never
    imported, so tether has nothing of it to hold and needs nothing: ended in Hermes,
    it goes with its parent as Hermes' own delete takes it. An open one still keeps
    the parent (Hermes' delete would take a live row along)."""
    path = hermes_copy(hermes_store, tmp_path)
    ops: list[dict[str, object]] = []
    for parent, kid_open in (("ghostly", False), ("haunted", True)):
        ops += [
            {"op": "create", "sid": parent, "source": "cli"},
            {"op": "append", "sid": parent, "content": "delegate this"},
            {
                "op": "create",
                "sid": f"{parent}_kid",
                "source": "cli",
                "parent": parent,
                "model_config": {"_delegate_from": parent},
            },
            {"op": "end", "sid": parent, "reason": "completed"},
        ]
        if not kid_open:
            ops.append({"op": "end", "sid": f"{parent}_kid", "reason": "completed"})
    hermes_ops(hermes_python, path, ops)
    own = tmp_path / "own" / "state.db"
    own.parent.mkdir()
    shutil.copy(path, own)
    hermes_ops(hermes_python, own, [{"op": "delete", "sid": "ghostly"}])
    assert rows(own, "SELECT id FROM sessions WHERE id LIKE 'ghostly%'") == []
    db = tmp_path / "t.db"
    with tether.open_store(db) as store:
        import_stores(store, [path])
        assert not store.origin_family("hermes:ghostly_kid")  # a ghost: never imported
        before = tether_messages(db)
        (dry,) = gc_stores(store, [path], older_than=0, yes=False)
        assert "ghostly" in dry.eligible and "haunted" not in dry.eligible
        (result,) = gc_stores(store, [path], older_than=0, yes=True)
    assert {"ghostly", "ghostly_kid"} <= set(result.deleted)
    assert "haunted" not in result.deleted and result.kept["delegate_children"] == 1
    left = {r[0] for r in rows(path, "SELECT id FROM sessions")}
    assert not {"ghostly", "ghostly_kid"} & left and {"haunted", "haunted_kid"} <= left
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert tether_messages(db) == before
