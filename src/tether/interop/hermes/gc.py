"""``tether hermes gc``: delete Hermes sessions that tether holds completely.

What the web UI's deleter (field report 004) wanted to be. A Hermes session is
deleted only when, checked inside the same Hermes write transaction that
deletes it (``BEGIN IMMEDIATE``, so no Hermes writer can slip in between):

* it is ended in Hermes, and ended longer than ``older_than``;
* tether has it (``hermes:<id>``, or its last continuation) ended too;
* tether holds every one of its messages (every Hermes message id but the
  rows importers skip is a key tether holds).

The delete is Hermes' own (``SessionDB.delete_session``'s statements, as the
store's generation runs them): delegate children (``model_config._delegate_from``,
recursively) are deleted with their parent from schema 16 (Hermes 0.17) on, so
a session with delegate children goes only when every one of them meets the
same conditions (else it is kept, and says so), a ghost child (no message, so
never imported: tether needs nothing of it) only ended in Hermes; branch and compression
children are orphaned (``parent_session_id`` set NULL); the messages go
(Hermes' triggers update its search index) and then the rows; their transcript
files under ``sessions/`` are removed after the commit.
Each write transaction handles at most 50 sessions and stays well under a
second (a live Hermes waits up to about 16 s before it loses a message).
Nothing is vacuumed, checkpointed, or changed in the file's pragmas.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import StoreOpenError
from ...store import StoreCore
from .mapping import SKIPPED_ROLES, message_key, origin_of
from .store import discover, open_readonly, recognise

BATCH = 50  # sessions per Hermes write transaction
BATCH_SECONDS = 0.25  # and no longer than this

KEPT_REASONS = {
    "not_in_tether": "not imported into tether (or a ghost)",
    "open_in_tether": "still open in tether",
    "missing_messages": "tether lacks some of its messages",
    "delegate_children": "a delegate child is not deletable (Hermes' delete takes it along)",
    "changed": "changed in Hermes since it was checked",
}


@dataclass(slots=True)
class GcResult:
    """One store's gc: what can go (or went) and what is kept, and why."""

    path: str
    considered: int = 0  # ended in Hermes longer than older_than
    eligible: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)

    def keep(self, why: str) -> None:
        self.kept[why] = self.kept.get(why, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "considered": self.considered,
            "eligible": len(self.eligible),
            "deleted": len(self.deleted),
            "kept": dict(sorted(self.kept.items())),
        }


def _skipped_roles_sql() -> str:
    return ", ".join(f"'{r}'" for r in sorted(SKIPPED_ROLES))


def _why_kept(store: StoreCore, conn: sqlite3.Connection, sid: str) -> str | None:
    """None if tether holds ``sid`` completely (so it may go now); else why it stays."""
    family = store.origin_family(origin_of(sid))
    if not family:
        return "not_in_tether"
    if family[-1].ended_at is None:
        return "open_in_tether"
    held: set[str] = set()
    for member in family:
        held |= store.imported_keys(member.id)
    ids = conn.execute(
        f"SELECT id FROM messages WHERE session_id = ? AND role NOT IN ({_skipped_roles_sql()})",
        (sid,),
    ).fetchall()
    if any(message_key(r[0]) not in held for r in ids):
        return "missing_messages"
    return None


def _is_ghost(conn: sqlite3.Connection, sid: str) -> bool:
    """Whether ``sid`` has no message an import would take (a ghost is never imported)."""
    row = conn.execute(
        f"SELECT 1 FROM messages WHERE session_id = ? AND role NOT IN ({_skipped_roles_sql()}) "
        "LIMIT 1",
        (sid,),
    ).fetchone()
    return row is None


_DELEGATE_FROM = "json_extract(COALESCE(model_config, '{}'), '$._delegate_from')"


def cascades(conn: sqlite3.Connection) -> bool:
    """Whether this generation's own delete takes delegate children along (schema 16,
    Hermes 0.17, on; older ones orphan them like any child)."""
    try:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        has_config = conn.execute(
            "SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'model_config'"
        ).fetchone()
    except sqlite3.Error:
        return False
    return bool(has_config) and row is not None and (row[0] or 0) >= 16


def delegate_edges(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """Every delegate link, read in one scan: id -> the rows Hermes' delete of it takes
    along directly (``hermes_state._collect_delegate_child_ids``' test: a row whose
    ``_delegate_from`` names it, or whose parent it is when the row has the marker)."""
    edges: dict[str, set[str]] = {}
    for sid, parent, origin in conn.execute(
        f"SELECT id, parent_session_id, {_DELEGATE_FROM} FROM sessions "
        f"WHERE {_DELEGATE_FROM} IS NOT NULL"
    ):
        edges.setdefault(str(origin), set()).add(sid)
        if parent is not None:
            edges.setdefault(parent, set()).add(sid)
    return edges


def delegates_of(edges: dict[str, set[str]], sid: str) -> list[str]:
    """The delegate descendants Hermes' delete of ``sid`` takes along (recursively)."""
    found = {sid}
    frontier = [sid]
    while frontier:
        frontier = [kid for f in frontier for kid in edges.get(f, ()) if kid not in found]
        found.update(frontier)
    found.discard(sid)
    return sorted(found)


def _check(
    store: StoreCore,
    conn: sqlite3.Connection,
    sid: str,
    before: float,
    edges: dict[str, set[str]] | None,
) -> tuple[str | None, list[str]]:
    """Why ``sid`` stays (None: it may go), and the delegate children going with it
    (``edges``: see :func:`delegate_edges`; None where the delete does not cascade).
    Its children must be ended in Hermes before ``before`` and held by tether too."""
    why = _why_kept(store, conn, sid)
    if why is not None or edges is None:
        return why, []
    kids = []
    for kid in delegates_of(edges, sid):
        row = conn.execute("SELECT ended_at FROM sessions WHERE id = ?", (kid,)).fetchone()
        if row is None:  # deleted already (with an earlier parent of this transaction)
            continue
        if row[0] is None or row[0] >= before:
            return "delegate_children", []
        why_kid = _why_kept(store, conn, kid)
        if why_kid == "not_in_tether" and _is_ghost(conn, kid):
            # Never imported for want of a message: tether needs nothing of it.
            why_kid = None
        if why_kid is not None:
            return "delegate_children", []
        kids.append(kid)
    return None, kids


def _candidates(conn: sqlite3.Connection, before: float) -> list[str]:
    """Sessions ended before ``before``."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? ORDER BY id",
            (before,),
        )
    ]


def gc_store(
    store: StoreCore,
    path: Path,
    *,
    older_than: float = 0.0,
    yes: bool = False,
    now: float | None = None,
) -> GcResult:
    """Plan (and with ``yes`` run) the gc of one Hermes store against ``store``."""
    now = time.time() if now is None else now
    result = GcResult(str(path))
    ro = open_readonly(path)
    try:
        recognise(ro, path)
        before = now - older_than
        cascade = cascades(ro)
        ro.execute("BEGIN")
        try:
            ids = _candidates(ro, before)
            edges = delegate_edges(ro) if cascade else None
        finally:
            ro.execute("COMMIT")
        result.considered = len(ids)
        for sid in ids:
            ro.execute("BEGIN")
            try:
                why, _ = _check(store, ro, sid, before, edges)
            finally:
                ro.execute("COMMIT")
            if why is None:
                result.eligible.append(sid)
            else:
                result.keep(why)
    finally:
        ro.close()
    if yes and result.eligible:
        _delete(store, path, result, now - older_than, cascade)
    return result


def _delete(store: StoreCore, path: Path, result: GcResult, before: float, cascade: bool) -> None:
    try:
        # Read-write, but nothing about the file changes: no journal mode, no
        # checkpoint, no vacuum. foreign_keys is this connection's setting (as
        # Hermes' own connection has it), not the file's.
        conn = sqlite3.connect(str(path), timeout=5, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreOpenError(f"cannot open {str(path)!r} to delete from it: {exc}") from exc
    deleted: list[str] = []
    gone: set[str] = set()  # deleted along with a parent (delegate children)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        todo = list(result.eligible)
        while todo:
            started = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read under the write lock, once per transaction (one scan).
                edges = delegate_edges(conn) if cascade else None
                done = 0
                while todo and done < BATCH and time.monotonic() - started < BATCH_SECONDS:
                    sid = todo.pop(0)
                    done += 1
                    if sid in gone:
                        continue
                    row = conn.execute(
                        "SELECT ended_at FROM sessions WHERE id = ?", (sid,)
                    ).fetchone()
                    if row is None or row[0] is None or row[0] >= before:
                        result.keep("changed")
                        continue
                    # Re-checked under Hermes' write lock: nothing can be appended now.
                    why, kids = _check(store, conn, sid, before, edges)
                    if why is not None:
                        result.keep(why)
                        continue
                    if kids:  # hermes_state._delete_delegate_children
                        marks = ",".join("?" * len(kids))
                        conn.execute(f"DELETE FROM messages WHERE session_id IN ({marks})", kids)
                        conn.execute(
                            "UPDATE sessions SET parent_session_id = NULL "
                            f"WHERE parent_session_id IN ({marks})",
                            kids,
                        )
                        conn.execute(f"DELETE FROM sessions WHERE id IN ({marks})", kids)
                    conn.execute(
                        "UPDATE sessions SET parent_session_id = NULL WHERE parent_session_id = ?",
                        (sid,),
                    )
                    conn.execute("DELETE FROM messages WHERE session_id = ?", (sid,))
                    conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
                    deleted.append(sid)
                    for kid in kids:
                        if kid not in gone:
                            gone.add(kid)
                            deleted.append(kid)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            result.deleted.extend(deleted)
            deleted = []
    finally:
        conn.close()
    _remove_files(path.parent / "sessions", result.deleted)


def _remove_files(sessions_dir: Path, ids: Sequence[str]) -> None:
    """Hermes' transcript files of deleted sessions (as its own delete does)."""
    if not sessions_dir.is_dir():
        return
    for sid in ids:
        for p in (sessions_dir / f"{sid}.json", sessions_dir / f"{sid}.jsonl"):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        for p in sessions_dir.glob(f"request_dump_{sid}_*.json"):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


def gc_stores(
    store: StoreCore,
    paths: Sequence[str | Path] = (),
    *,
    older_than: float = 0.0,
    yes: bool = False,
) -> list[GcResult]:
    """:func:`gc_store` over every store found (see :func:`discover`)."""
    return [gc_store(store, p, older_than=older_than, yes=yes) for p in discover(paths)]
