"""Peers benchmark: tether beside the session stores agents use today, in one run.

Each peer runs in its own environment (their pins conflict) as a child
process speaking a line of JSON per request (``bench/peer_worker.py``); the
worker times each call itself, so the pipe is not measured. The peers:

* **tether** on SQLite (``durability="normal"``: WAL, ``synchronous=NORMAL``)
  and on PostgreSQL (``synchronous_commit`` on, the server's default);
* **Hermes' SessionDB** (hermes-agent, ``.venv-hermes``): WAL, set to
  ``synchronous=NORMAL``;
* **the OpenAI Agents SDK's SQLiteSession** (``.venv-agents``): WAL, set to
  ``synchronous=NORMAL``; and its **SQLAlchemySession** on the same
  PostgreSQL (asyncpg);
* **LangGraph's SqliteSaver** (langgraph-checkpoint-sqlite,
  ``.venv-langgraph``): WAL and ``synchronous=NORMAL`` set on the connection
  it is given. A conversation is a thread; each append is a checkpoint
  holding the messages so far, as a graph with a ``messages`` channel writes.

Every SQLite peer thus has the same durability: a write that returned
survives any process crash (kill -9), not necessarily a power loss.

Workloads (every figure is min / median / max over interleaved rounds):
appending single ~90-byte messages to a session; appending them in batches
of 10 (the peer's batch call where it has one); reading back a 1,000-message
session; ending sessions; the peer's own listing call (first page of 20) at
1k, 10k and 100k sessions, each of two messages and ended, added through
the peer's API where feasible (tether: ``import_session``, one transaction
per session; LangGraph: its ``put``; Hermes: its write calls for the first
10,000, then SQL in its own tables, 10,000 a transaction with its FTS
triggers, since its API takes over a quarter of an hour for 100,000 here;
the SDK's SQLiteSession by SQL in its own tables, since its API opens a
connection per session object); then the worker's RSS and the database's size (with WAL) at the
largest size. ``n/a``: the peer has no such call. Build: ``make bench-peers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pg import connect, server_version
from .report import median, progress, publish, table

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "peer_worker.py"


@dataclass
class Peer:
    name: str  # the column
    kind: str  # the worker's peer name
    python: Path
    target: dict[str, Any]
    proc: subprocess.Popen[str] | None = None
    version: str = ""
    error: str | None = None
    results: dict[str, list[float]] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    grow_seconds: float = 0.0

    def start(self) -> None:
        if not self.python.exists():
            self.error = f"not installed ({self.python.parent.parent.name}: make bench-peers)"
            return
        env = dict(os.environ)
        env.pop("TETHER_DB", None)
        self.proc = subprocess.Popen(
            [str(self.python), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        out = self.ask({"op": "open", "peer": self.kind, **self.target})
        if out is not None:
            self.version = out["version"]

    def ask(self, req: dict[str, Any]) -> Any:
        """The worker's answer; None (and the reason kept) for n/a or an error."""
        if self.proc is None or self.error is not None:
            return None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.error = f"the worker exited ({self.proc.wait()})"
            return None
        reply = json.loads(line)
        if "na" in reply:
            self.na[req["op"]] = reply["na"]
            return None
        if "error" in reply:
            self.error = f"{req['op']}: {reply['error']}"
            progress(f"peers: {self.name} failed: {self.error}")
            return None
        return reply["ok"]

    def measure(self, key: str, req: dict[str, Any]) -> None:
        if req["op"] in self.na:
            return
        out = self.ask(req)
        if out is not None:
            self.results.setdefault(key, []).append(out)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _pg_schema(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


def _drop_schema(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def peers_for(tmp: Path, pg_url: str | None, tag: str) -> list[Peer]:
    venv = Path(sys.executable).parent
    peers = [
        Peer("tether", "tether", venv / "python", {"path": str(tmp / "tether.db")}),
        Peer(
            "Hermes SessionDB",
            "hermes",
            ROOT / ".venv-hermes/bin/python",
            {"path": str(tmp / "hermes.db")},
        ),
        Peer(
            "SDK SQLiteSession",
            "sdk-sqlite",
            ROOT / ".venv-agents/bin/python",
            {"path": str(tmp / "sdk.db")},
        ),
        Peer(
            "LangGraph SqliteSaver",
            "langgraph",
            ROOT / ".venv-langgraph/bin/python",
            {"path": str(tmp / "lg.db")},
        ),
    ]
    if pg_url is not None:
        base = pg_url.split("?", 1)[0]
        peers.append(
            Peer(
                "tether (PG)",
                "tether",
                venv / "python",
                {"url": f"{base}?schema=peers_tether_{tag}"},
            )
        )
        _pg_schema(pg_url, f"peers_sa_{tag}")
        peers.append(
            Peer(
                "SDK SQLAlchemySession (PG)",
                "sdk-sqlalchemy",
                ROOT / ".venv-agents/bin/python",
                {
                    "url": base.replace("postgresql://", "postgresql+asyncpg://"),
                    "schema": f"peers_sa_{tag}",
                },
            )
        )
    return peers


def cell(p: Peer, key: str, scale: float, fmt: str, base: Peer | None) -> str:
    xs = p.results.get(key)
    if not xs:
        op = key.split(":")[0]
        return "n/a" if op in p.na else ("failed" if p.error else "-")
    xs = [x * scale for x in xs]
    text = " / ".join(fmt.format(v) for v in (min(xs), median(xs), max(xs)))
    if base is not None and base is not p and base.results.get(key):
        ratio = median(xs) / (median(base.results[key]) * scale)
        text += f" ({ratio:.2f}x)"
    return text


def run(
    quick: bool = False,
    write: bool = True,
    directory: str | None = None,
    pg_url: str | None = None,
) -> None:
    rounds = 3 if quick else 5
    n_append = 100 if quick else 300
    n_end = 20 if quick else 50
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    tmp_dir = tempfile.TemporaryDirectory(dir=directory, prefix="tether-peers-")
    tmp = Path(tmp_dir.name)
    tag = os.urandom(4).hex()
    peers = peers_for(tmp, pg_url, tag)
    try:
        for p in peers:
            progress(f"peers: starting {p.name}")
            p.start()
        for r in range(rounds):
            progress(f"peers: round {r + 1}/{rounds}: appends, batches, reads, ends")
            for p in peers:
                p.measure("append", {"op": "append", "n": n_append})
                p.measure("batch", {"op": "batch", "n": n_append, "b": 10})
                p.measure("read", {"op": "read", "n": 1000})
                p.measure("end", {"op": "end", "n": n_end})
        have = 0
        sqlite_peers = [p for p in peers if "url" not in p.target]
        for size in sizes:
            for p in sqlite_peers:
                progress(f"peers: {p.name}: growing to {size:,} sessions")
                grew = p.ask({"op": "grow", "start": have, "count": size - have})
                if grew is not None:
                    p.grow_seconds += grew
            have = size
            for r in range(rounds + 1):
                for p in sqlite_peers:
                    if r == 0:  # a first call warms the cache: not counted
                        p.ask({"op": "list"})
                    else:
                        p.measure(f"list:{size}", {"op": "list"})
        for p in peers:
            out = p.ask({"op": "stats"})
            if out is not None:
                p.stats = out
    finally:
        for p in peers:
            p.stop()
        if pg_url is not None:
            for schema in (f"peers_tether_{tag}", f"peers_sa_{tag}"):
                _drop_schema(pg_url, schema)
        tmp_dir.cleanup()

    sq = [p for p in peers if "url" not in p.target]
    pg = [p for p in peers if "url" in p.target]
    rows_spec = [
        ("append one message", "append", 1e6, "{:,.0f}", "µs"),
        ("append, batches of 10 (per message)", "batch", 1e6, "{:,.0f}", "µs"),
        ("read a 1,000-message session", "read", 1e3, "{:.2f}", "ms"),
        ("end a session", "end", 1e6, "{:,.0f}", "µs"),
    ] + [
        (f"resume list, first 20, {n:,} sessions", f"list:{n}", 1e3, "{:.2f}", "ms") for n in sizes
    ]

    def render(group: list[Peer]) -> str:
        base = group[0]
        rows = [
            (f"{label} ({unit})", *(cell(p, key, scale, fmt, base) for p in group))
            for label, key, scale, fmt, unit in rows_spec
            if any(p.results.get(key) or key.split(":")[0] in p.na for p in group)
        ]
        if any(p.stats.get("bytes") for p in group):
            rows.append(
                (
                    f"database size at {have:,} sessions (MiB, with WAL)",
                    *(
                        f"{p.stats['bytes'] / 2**20:.1f}" if p.stats.get("bytes") else "-"
                        for p in group
                    ),
                )
            )
            rows.append(
                (
                    f"worker RSS at {have:,} sessions (MiB)",
                    *(
                        f"{p.stats['rss'] / 2**20:.1f}" if p.stats.get("rss") else "-"
                        for p in group
                    ),
                )
            )
            rows.append(
                (
                    f"building {have:,} sessions (s, untimed above)",
                    *(f"{p.grow_seconds:.1f}" if p.grow_seconds else "-" for p in group),
                )
            )
        return table(["", *(p.name for p in group)], rows)

    versions = "; ".join(f"{p.name}: {p.version or p.error}" for p in peers)
    text = (
        f"{rounds} interleaved rounds; each cell is min / median / max, and in parentheses "
        "the peer's median over tether's (above 1.00x: tether is faster; below: the peer "
        "is). Versions: "
        + versions
        + ".\n\nSQLite, all with WAL and synchronous=NORMAL:\n\n"
        + render(sq)
    )
    if pg:
        text += f"\n\nPostgreSQL {server_version(pg_url) if pg_url else ''}:\n\n" + render(pg)
    failures = [f"{p.name}: {p.error}" for p in peers if p.error]
    if failures:
        text += "\n\nNot measured: " + "; ".join(failures) + "."
    nas = sorted({f"{p.name}: {why}" for p in peers for why in p.na.values()})
    if nas:
        text += "\n\nn/a: " + "; ".join(nas) + "."
    publish("Peers", text, notes=__doc__.split("\n\n", 1)[1] if __doc__ else "", write=write)
