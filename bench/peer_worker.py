"""One peer of ``python -m bench peers``, run inside that peer's own environment.

``python bench/peer_worker.py`` reads one JSON request per line on stdin and
answers one JSON line on stdout. It imports nothing from tether's bench (its
environment may not have it) and only its peer's library:

* ``tether``: tether's ``Store`` (SQLite or PostgreSQL);
* ``hermes``: hermes-agent's ``SessionDB`` (``hermes_state``);
* ``sdk-sqlite``: the OpenAI Agents SDK's ``SQLiteSession``;
* ``sdk-sqlalchemy``: the SDK's ``SQLAlchemySession`` on PostgreSQL (asyncpg);
* ``langgraph``: LangGraph's ``SqliteSaver`` (langgraph-checkpoint-sqlite).

Requests: ``open`` {peer, path | url}, then ``append`` / ``batch`` / ``read``
/ ``end`` / ``list`` / ``grow`` / ``stats``; every timing is taken in here
(``time.perf_counter``), so the pipe costs nothing that is measured. A peer
that has no such call answers ``{"na": "why"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

TEXT = "the quick brown fox jumps over the lazy dog " * 2  # ~90 bytes, a short chat turn


class NotAvailable(Exception):
    pass


class Tether:
    def __init__(self, target: str) -> None:
        import tether

        self.store = tether.open_store(target, durability="normal")
        self.version = f"tether {tether.__version__}"
        self.t0 = time.time() - 10**6

    def new(self) -> Any:
        h = self.store.session(source="bench")
        h.append("user", TEXT)
        return h

    def append(self, h: Any) -> None:
        h.append("user", TEXT)

    def batch(self, h: Any, n: int) -> None:
        for _ in range(n):
            h.buffer("user", TEXT)
        h.flush()

    def sid(self, h: Any) -> str:
        return h.id

    def read(self, sid: str) -> int:
        return len(self.store.get_messages(sid))

    def end(self, h: Any) -> None:
        if h is not None:
            h.end("completed")

    def list(self) -> int:
        return len(self.store.list_sessions(limit=20).items)

    def grow(self, start: int, count: int) -> None:
        # Through the API: import_session writes a whole ended session (row, two
        # messages, its end) in one transaction, with historical times.
        for i in range(start, start + count):
            at = self.t0 + i
            self.store.import_session(
                f"bench:{i}",
                source="bench",
                created_at=at,
                last_active_at=at + 1,
                ended_at=at + 2,
                end_reason="completed",
                messages=[
                    {"key": "0", "role": "user", "content": TEXT, "created_at": at},
                    {"key": "1", "role": "assistant", "content": TEXT, "created_at": at + 1},
                ],
            )


class Hermes:
    def __init__(self, path: str) -> None:
        from importlib.metadata import version

        from hermes_state import SessionDB

        self.db = SessionDB(db_path=Path(path))
        # Equal durability: WAL (SessionDB's own) + synchronous=NORMAL (SQLite's default is FULL).
        self.db._conn.execute("PRAGMA synchronous=NORMAL")
        self.version = f"hermes-agent {version('hermes-agent')}"

    def new(self) -> str:
        sid = uuid.uuid4().hex
        self.db.create_session(sid, "cli")
        self.db.append_message(sid, "user", TEXT)
        return sid

    def append(self, sid: str) -> None:
        self.db.append_message(sid, "user", TEXT)

    def batch(self, sid: str, n: int) -> None:
        for _ in range(n):  # SessionDB has no batch call: one transaction per message
            self.db.append_message(sid, "user", TEXT)

    def sid(self, sid: str) -> str:
        return sid

    def read(self, sid: str) -> int:
        return len(self.db.get_messages(sid))

    def end(self, sid: str | None) -> None:
        if sid is not None:
            self.db.end_session(sid, "cli_close")

    def list(self) -> int:
        return len(self.db.list_sessions_rich(limit=20))  # the resume picker's call

    API_GROWTH = 10_000

    def grow(self, start: int, count: int) -> None:
        # The first 10,000 through the API, as Hermes writes sessions; past that by
        # SQL in its own tables, 10,000 a transaction (its FTS triggers still run):
        # through the API, 100,000 sessions take over a quarter of an hour here.
        api = max(0, min(count, self.API_GROWTH - start))
        for _ in range(api):
            sid = self.new()
            self.db.append_message(sid, "assistant", TEXT)
            self.db.end_session(sid, "cli_close")
        conn = self.db._conn
        now = time.time() - 10**6
        for first in range(start + api, start + count, 10_000):
            ids = range(first, min(first + 10_000, start + count))
            with conn:
                conn.executemany(
                    "INSERT INTO sessions (id, source, started_at, ended_at, end_reason,"
                    " message_count) VALUES (?, 'cli', ?, ?, 'cli_close', 2)",
                    [(f"grown-{i}", now + i, now + i + 2) for i in ids],
                )
                conn.executemany(
                    "INSERT INTO messages (session_id, role, content, timestamp)"
                    " VALUES (?, ?, ?, ?)",
                    [(f"grown-{i}", r, TEXT, now + i) for i in ids for r in ("user", "assistant")],
                )


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


class SdkSqlite(_Loop):
    def __init__(self, path: str) -> None:
        super().__init__()
        from importlib.metadata import version

        from agents.memory import SQLiteSession

        configure = SQLiteSession._configure_connection

        def normal(conn: sqlite3.Connection) -> None:
            configure(conn)  # WAL, its own
            conn.execute("PRAGMA synchronous=NORMAL")  # equal durability (default: FULL)

        SQLiteSession._configure_connection = staticmethod(normal)  # type: ignore[method-assign]
        self.cls = SQLiteSession
        self.path = path
        self.version = f"openai-agents {version('openai-agents')}"

    def new(self) -> Any:
        s = self.cls(uuid.uuid4().hex, self.path)
        self.run(s.add_items([{"role": "user", "content": TEXT}]))
        return s

    def append(self, s: Any) -> None:
        self.run(s.add_items([{"role": "user", "content": TEXT}]))

    def batch(self, s: Any, n: int) -> None:
        self.run(s.add_items([{"role": "user", "content": TEXT} for _ in range(n)]))

    def sid(self, s: Any) -> Any:
        return s  # a session is its object

    def read(self, s: Any) -> int:
        return len(self.run(s.get_items()))

    def end(self, s: Any) -> None:
        raise NotAvailable("no end of a session in the SDK's Session protocol")

    def list(self) -> int:
        raise NotAvailable("no listing call in the SDK's Session protocol")

    def grow(self, start: int, count: int) -> None:
        # By SQL in the SDK's own tables: its API opens a connection per session object.
        s = self.cls("schema", self.path)
        self.run(s.get_items())  # creates the tables
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA synchronous=NORMAL")
        ids = [f"grown-{i}" for i in range(start, start + count)]
        item = json.dumps({"role": "user", "content": TEXT})
        with conn:
            conn.executemany(
                "INSERT INTO agent_sessions (session_id) VALUES (?)", [(i,) for i in ids]
            )
            conn.executemany(
                "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
                [(i, item) for i in ids for _ in range(2)],
            )
        conn.close()


class SdkSqlalchemy(_Loop):
    def __init__(self, url: str, schema: str) -> None:
        super().__init__()
        from importlib.metadata import version

        from agents.extensions.memory import SQLAlchemySession
        from sqlalchemy.ext.asyncio import create_async_engine

        self.engine = create_async_engine(
            url, connect_args={"server_settings": {"search_path": schema}}
        )
        self.cls = SQLAlchemySession
        self.created = False
        self.version = (
            f"openai-agents {version('openai-agents')}, SQLAlchemy {version('sqlalchemy')}, "
            f"asyncpg {version('asyncpg')}"
        )

    def new(self) -> Any:
        s = self.cls(uuid.uuid4().hex, engine=self.engine, create_tables=not self.created)
        self.created = True
        self.run(s.add_items([{"role": "user", "content": TEXT}]))
        return s

    append = SdkSqlite.append
    batch = SdkSqlite.batch
    sid = SdkSqlite.sid
    read = SdkSqlite.read
    end = SdkSqlite.end
    list = SdkSqlite.list

    def grow(self, start: int, count: int) -> None:
        raise NotAvailable("not built on PostgreSQL")


class LangGraph:
    """A conversation is a thread; each append is a checkpoint holding the messages so far.

    That is what a LangGraph graph with a ``messages`` channel writes on each
    step; SqliteSaver stores each checkpoint whole, so an append writes the
    conversation again (and reading it back is one row).
    """

    def __init__(self, path: str) -> None:
        from importlib.metadata import version

        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # equal durability: SqliteSaver sets neither
        conn.execute("PRAGMA synchronous=NORMAL")
        self.saver = SqliteSaver(conn)
        self.saver.setup()
        self.empty = empty_checkpoint
        self.version = f"langgraph-checkpoint-sqlite {version('langgraph-checkpoint-sqlite')}"
        self.threads: dict[str, tuple[dict[str, Any], list[dict[str, str]]]] = {}

    def _put(self, tid: str, messages: list[dict[str, str]], n: int) -> None:
        config, _ = self.threads.get(
            tid, ({"configurable": {"thread_id": tid, "checkpoint_ns": ""}}, [])
        )
        cp = self.empty()
        cp["channel_values"] = {"messages": messages}
        cp["channel_versions"] = {"messages": n}
        config = self.saver.put(config, cp, {"source": "loop", "step": n}, {"messages": n})
        self.threads[tid] = (config, messages)

    def new(self) -> str:
        tid = uuid.uuid4().hex
        self._put(tid, [{"role": "user", "content": TEXT}], 1)
        return tid

    def append(self, tid: str) -> None:
        _, messages = self.threads[tid]
        messages = [*messages, {"role": "user", "content": TEXT}]
        self._put(tid, messages, len(messages))

    def batch(self, tid: str, n: int) -> None:
        _, messages = self.threads[tid]
        messages = messages + [{"role": "user", "content": TEXT} for _ in range(n)]
        self._put(tid, messages, len(messages))

    def sid(self, tid: str) -> str:
        return tid

    def read(self, tid: str) -> int:
        t = self.saver.get_tuple({"configurable": {"thread_id": tid, "checkpoint_ns": ""}})
        assert t is not None
        return len(t.checkpoint["channel_values"]["messages"])

    def end(self, tid: str) -> None:
        raise NotAvailable("no end of a thread in LangGraph's checkpointer")

    def list(self) -> int:
        # Its own listing call: the newest checkpoints (of every thread).
        return sum(1 for _ in self.saver.list(None, limit=20))

    def grow(self, start: int, count: int) -> None:
        for _ in range(count):  # through the API: a thread of two messages
            tid = self.new()
            self.append(tid)
            del self.threads[tid]


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def files(path: str | None) -> int:
    if path is None:
        return 0
    return sum(
        os.path.getsize(p) for p in (path, path + "-wal", path + "-shm") if os.path.exists(p)
    )


def main() -> None:
    peer: Any = None
    path: str | None = None
    sessions: list[Any] = []
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            out: Any
            if op == "open":
                name, path = req["peer"], req.get("path")
                if name == "tether":
                    peer = Tether(req.get("url") or path)
                elif name == "hermes":
                    peer = Hermes(path)
                elif name == "sdk-sqlite":
                    peer = SdkSqlite(path)
                elif name == "sdk-sqlalchemy":
                    peer = SdkSqlalchemy(req["url"], req["schema"])
                elif name == "langgraph":
                    peer = LangGraph(path)
                else:
                    raise ValueError(f"unknown peer {name}")
                out = {"version": peer.version}
            elif op == "append":  # one new session, n single appends: seconds per append
                h = peer.new()
                t = time.perf_counter()
                for _ in range(req["n"]):
                    peer.append(h)
                out = (time.perf_counter() - t) / req["n"]
            elif op == "batch":  # n messages in batches of b: seconds per message
                h = peer.new()
                t = time.perf_counter()
                for _ in range(req["n"] // req["b"]):
                    peer.batch(h, req["b"])
                out = (time.perf_counter() - t) / req["n"]
            elif op == "read":  # a session of n messages (made once), read back: seconds
                if not sessions:
                    h = peer.new()
                    for _ in range((req["n"] - 1) // 100):
                        peer.batch(h, 100)
                    for _ in range((req["n"] - 1) % 100):
                        peer.append(h)
                    sessions.append(h)
                sid = peer.sid(sessions[0])
                t = time.perf_counter()
                got = peer.read(sid)
                out = time.perf_counter() - t
                if got != req["n"]:
                    raise RuntimeError(f"read {got} messages, expected {req['n']}")
            elif op == "end":  # n sessions with a message each, ended: seconds per end
                peer.end(None)  # NotAvailable before building anything, where it is
                hs = [peer.new() for _ in range(req["n"])]
                t = time.perf_counter()
                for h in hs:
                    peer.end(h)
                out = (time.perf_counter() - t) / req["n"]
            elif op == "grow":  # add sessions (each two messages, ended): seconds it took
                t = time.perf_counter()
                peer.grow(req["start"], req["count"])
                out = time.perf_counter() - t
            elif op == "list":  # the peer's own listing call, first page of 20: seconds
                t = time.perf_counter()
                got = peer.list()
                out = time.perf_counter() - t
                if got < 1:
                    raise RuntimeError("the listing returned nothing")
            elif op == "stats":
                out = {"rss": rss(), "bytes": files(path)}
            else:
                raise ValueError(f"unknown op {op}")
            reply = {"ok": out}
        except NotAvailable as exc:
            reply = {"na": str(exc)}
        except Exception as exc:  # reported by the driver, which stops this peer
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
