"""Hermes ``state.db`` fixtures written by the real ``hermes-agent`` package.

Run with the Hermes environment's interpreter (``.venv-hermes/bin/python``), never
tether's: hermes-agent pins exact versions (openai==2.24.0, ...) that tether's
environment must not carry. Every row goes through ``hermes_state.SessionDB``, so
the file is what Hermes itself writes. Which Hermes: 0.19.0 (schema 22) from the
environment, or an older release's own ``hermes_state.py`` put first on
``PYTHONPATH`` (``make`` extracts every release from 0.13.0, schema 11, under
``.venv-hermes/releases/<version>``), running beside 0.19.0's dependencies. Calls a
release does not have (``archive_and_compact`` before 0.16, gateway columns before
0.18) are left out for it.

The git-main generations no PyPI release carries are derived with plain SQL
(``derive``) from stores a release wrote, the way Hermes itself changes a file:
``v2``, the original layout (commit 544ac55e's DDL, as the reference quotes it),
holds the rows 0.13.0 wrote projected onto its columns; ``v30`` is a 0.19.0 store
upgraded as Hermes' own ``_reconcile_columns`` does (``ALTER TABLE ... ADD COLUMN``
for each column upstream main added, its new tables created, ``last_activity_at``
stamped the way its heartbeat does).

    generate PATH [--seed N] [--conversations N]
        a store with sessions from cli, tui, api_server, telegram and cron;
        compression chains, branches, in-place compaction, tool calls with NULL
        content, dangling tool calls (killed mid-tool), ended and never-ended rows,
        ghosts (rows without messages). The same seed gives the same rows (ids,
        sources, shapes, reasons, contents); only Hermes' own timestamps differ.
    write PATH --seconds S [--rate R]
        a live Hermes writer: appends about R messages a second to one open session
        through SessionDB until S seconds have passed, then prints
        {"appended": n, "failures": n, "errors": [...]} as JSON.
    hold PATH [SID...]
        a live Hermes holding the store open: appends one message to each SID,
        prints "ready", and keeps the store open until its stdin is closed.
    derive SRC DST --generation v2|v30
        a git-main generation derived from a store a release wrote (see above).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

SOURCES = ("cli", "tui", "api_server", "telegram", "cron")
END_REASONS = {
    "cli": ("user_exit", "agent_close", "session_reset"),
    "tui": ("tui_close", "agent_close"),
    "telegram": ("session_reset", "idle_expiry"),
    "cron": ("cron_complete",),
}


def session_db(path: Path) -> Any:
    """The real SessionDB on ``path`` (HERMES_HOME set first: Hermes reads it at import)."""
    os.environ["HERMES_HOME"] = str(path.parent)
    import hermes_state

    return hermes_state.SessionDB(db_path=path)


def create(db: Any, sid: str, source: str, **kwargs: Any) -> None:
    """``create_session`` with the keywords this release's SessionDB takes (0.13 has no
    ``chat_id``, ``session_key``...): the others are left out, as that Hermes would."""
    params = inspect.signature(db._insert_session_row).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    db.create_session(sid, source, **kwargs)


def new_id(rng: random.Random, source: str, n: int) -> str:
    """Ids in the writers' own formats (the reference's table), from the seed."""
    stamp = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}_{n:06d}"
    if source == "cron":
        return f"cron_job{rng.randint(1, 9)}_{stamp}"
    if source == "api_server":
        return f"api-{rng.getrandbits(64):016x}"
    width = 8 if source == "telegram" else 6
    return f"{stamp}_{rng.getrandbits(width * 4):0{width}x}"


def turn(db: Any, rng: random.Random, sid: str, n: int, *, dangling: bool = False) -> None:
    """One user turn: a question, maybe a tool call (NULL content) and its result, an answer."""
    db.append_message(sid, "user", f"question {n} {rng.random():.6f}")
    if rng.random() < 0.6 or dangling:
        call_id = f"call_{rng.getrandbits(48):012x}"
        calls = [
            {"id": call_id, "type": "function", "function": {"name": "terminal", "arguments": "{}"}}
        ]
        db.append_message(sid, "assistant", None, tool_calls=calls)
        if dangling:
            return  # the process was killed while the tool ran: no result, no answer
        db.append_message(sid, "tool", f"result {n}", tool_call_id=call_id, tool_name="terminal")
    db.append_message(sid, "assistant", f"answer {n}")


def conversation(db: Any, rng: random.Random, n: int) -> None:
    source = rng.choice(SOURCES)
    sid = new_id(rng, source, n)
    extra: dict[str, Any] = {"model": rng.choice(["gpt-5", "claude-sonnet-4", "qwen3"])}
    if source == "telegram":
        chat = str(rng.randint(10**8, 10**9))
        extra.update(
            user_id="u" + chat,
            chat_id=chat,
            chat_type="dm",
            session_key=f"agent:main:telegram:dm:{chat}",
        )
    create(db, sid, source, **extra)
    shape = rng.random()
    if shape < 0.15:  # a ghost: opened, never used; half of them were ended
        if rng.random() < 0.5:
            db.end_session(sid, rng.choice(END_REASONS.get(source, ("agent_close",))))
        return
    for t in range(rng.randint(1, 3)):
        turn(db, rng, sid, t)
    if shape < 0.35:  # compression chain: end 'compression', a child carries on
        for link in range(rng.randint(1, 3)):
            db.end_session(sid, "compression")
            child = new_id(rng, source, n * 10 + link)
            create(db, child, source, parent_session_id=sid, **extra)
            turn(db, rng, child, link)
            sid = child
    elif shape < 0.45:  # /branch: the parent ends 'branched', the child starts its own chain
        db.end_session(sid, "branched")
        child = new_id(rng, source, n * 10 + 9)
        create(
            db, child, source, parent_session_id=sid, model_config={"_branched_from": sid}, **extra
        )
        turn(db, rng, child, 0)
        sid = child
    elif shape < 0.55:  # compression in place: old rows active=0, compacted=1 (0.16 on)
        if hasattr(db, "archive_and_compact"):
            db.archive_and_compact(sid, [{"role": "user", "content": f"summary of {sid}"}])
        turn(db, rng, sid, 9)
    if rng.random() < 0.1:  # killed mid-tool: open, with a dangling tool call
        turn(db, rng, sid, 99, dangling=True)
        return
    # The API server never ends its rows; the others end most of theirs.
    if source != "api_server" and rng.random() < 0.75:
        db.end_session(sid, rng.choice(END_REASONS[source]))


def generate(path: Path, seed: int, conversations: int) -> None:
    db = session_db(path)
    rng = random.Random(seed)
    try:
        for n in range(conversations):
            conversation(db, rng, n)
    finally:
        db.close()


def write(path: Path, seconds: float, rate: float) -> None:
    db = session_db(path)
    sid = f"live_{os.getpid()}"
    create(db, sid, "cli")
    appended, errors = 0, []
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        try:
            db.append_message(sid, "user", f"live {appended}")
            appended += 1
        except Exception as exc:  # what a Hermes caller would see: counted, reported
            errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(1 / rate)
    db.close()
    print(json.dumps({"appended": appended, "failures": len(errors), "errors": errors[:5]}))


def hold(path: Path, sids: list[str]) -> None:
    """A live Hermes process: the store open, one message appended to each of ``sids``."""
    db = session_db(path)
    for sid in sids:
        db.append_message(sid, "user", "still here")
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    db.close()


# The original layout (commit 544ac55e), as quoted in the reference (hermes-sessions.md §1.6).
V2_DDL = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, user_id TEXT, model TEXT, model_config TEXT,
    system_prompt TEXT, parent_session_id TEXT, started_at REAL NOT NULL, ended_at REAL,
    end_reason TEXT, message_count INTEGER DEFAULT 0, tool_call_count INTEGER DEFAULT 0,
    input_tokens INTEGER DEFAULT 0, output_tokens INTEGER DEFAULT 0,
    FOREIGN KEY (parent_session_id) REFERENCES sessions(id));
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id),
    role TEXT NOT NULL, content TEXT, tool_call_id TEXT, tool_calls TEXT, tool_name TEXT,
    timestamp REAL NOT NULL, token_count INTEGER, finish_reason TEXT);
INSERT INTO schema_version VALUES (2);
"""
# What upstream main (schema 30, hermes-sessions.md §1.2) has beyond 0.19.0's schema 22.
V30_COLUMNS = {
    "sessions": (
        "created_source TEXT", "system_prompt_hash TEXT", "git_metadata_generation INTEGER"
        " NOT NULL DEFAULT 0", "title_source TEXT", "last_activity_at REAL",
        "last_activity_description TEXT", "last_activity_provenance TEXT",
        "compression_ineffective_count INTEGER NOT NULL DEFAULT 0",
        "compression_recovery_deadline REAL", "compression_overload_streak INTEGER NOT NULL"
        " DEFAULT 0", "transport_profile TEXT", "pinned INTEGER NOT NULL DEFAULT 0",
        "hidden INTEGER NOT NULL DEFAULT 0", "last_read_at REAL", "tool_names TEXT",
    ),
    "messages": (
        "_compressed_summary INTEGER NOT NULL DEFAULT 0", "display_kind TEXT",
        "display_metadata TEXT", "display_identity BLOB", "display_order INTEGER",
    ),
}  # fmt: skip
V30_TABLES = """
CREATE TABLE IF NOT EXISTS system_prompts (hash TEXT PRIMARY KEY, prompt TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_hygiene_state (
    session_key TEXT PRIMARY KEY, failure_streak INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS conversation_generations (
    source TEXT NOT NULL, session_key TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, session_key));
CREATE TABLE IF NOT EXISTS gateway_heartbeats (
    backend_id TEXT PRIMARY KEY, pid INTEGER NOT NULL, started_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL, profile TEXT NOT NULL DEFAULT '', host TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS session_turn_leases (
    conversation_id TEXT PRIMARY KEY, holder TEXT NOT NULL, acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL);
"""


def derive(src: Path, dst: Path, generation: str) -> None:
    """A git-main generation from a store a release wrote (plain sqlite3, see above)."""
    if generation == "v2":
        dst.unlink(missing_ok=True)
        conn = sqlite3.connect(dst, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(V2_DDL)
        conn.execute("ATTACH ? AS src", (f"file:{src}?mode=ro",))
        for table in ("sessions", "messages"):
            cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}")
        conn.execute("DETACH src")
        conn.close()
        return
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst, isolation_level=None)
    conn.executescript(V30_TABLES)
    for table, added in V30_COLUMNS.items():
        for column in added:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    # The heartbeat stamps open rows' activity (rate-limited, so it trails a little).
    conn.execute(
        "UPDATE sessions SET last_activity_at = (SELECT MAX(timestamp) - 1 FROM messages m"
        " WHERE m.session_id = sessions.id), created_source = source"
    )
    conn.execute("UPDATE schema_version SET version = 30")
    conn.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("path", type=Path)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--conversations", type=int, default=60)
    w = sub.add_parser("write")
    w.add_argument("path", type=Path)
    w.add_argument("--seconds", type=float, default=3.0)
    w.add_argument("--rate", type=float, default=100.0)
    h = sub.add_parser("hold")
    h.add_argument("path", type=Path)
    h.add_argument("sids", nargs="*")
    d = sub.add_parser("derive")
    d.add_argument("src", type=Path)
    d.add_argument("dst", type=Path)
    d.add_argument("--generation", choices=("v2", "v30"), required=True)
    args = parser.parse_args(argv)
    if args.cmd == "derive":
        derive(args.src, args.dst, args.generation)
    elif args.cmd == "generate":
        generate(args.path, args.seed, args.conversations)
    elif args.cmd == "hold":
        hold(args.path, args.sids)
    else:
        write(args.path, args.seconds, args.rate)


if __name__ == "__main__":
    main(sys.argv[1:])
