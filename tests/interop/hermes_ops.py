"""Hermes operations and live workloads for the import, mirror and gc tests.

Run with the Hermes environment's interpreter (``.venv-hermes/bin/python``):
every write goes through the real ``hermes_state.SessionDB``.

    ops PATH            reads JSON operations, one per stdin line, applies each and
                        prints one JSON result line per operation:
                        {"op": "append", "sid": S, "role": R, "content": C|null|[...]}
                        {"op": "create", "sid": S, "source": SRC, "parent": P, "model_config": {..}}
                        {"op": "end", "sid": S, "reason": R}
                        {"op": "reopen", "sid": S}
                        {"op": "title", "sid": S, "title": T}
                        {"op": "delete", "sid": S}
                        {"op": "compact", "sid": S, "summary": T}   (in-place compaction)
                        {"op": "rewind", "sid": S, "mid": N}
                        {"op": "restore", "sid": S, "mid": N}
                        {"op": "replace", "sid": S, "messages": [{"role": R, "content": C}, ..],
                         "active_only": B}   (/retry, /undo: every row deleted, new ids)
    churn PATH --sessions N --messages M [--delete-after-ms LO HI] [--seed N]
                        the 004 workload: N sessions one after another, each M messages
                        (about 100 a second) then ended; with --delete-after-ms each is
                        deleted through SessionDB.delete_session a random 0-500 ms after
                        its end (as the web UI's deleter did). Prints "ready" first and a
                        JSON report last: {"sessions": {sid: m}, "deleted": [...],
                        "failures": n, "errors": [...]}.
    pace PATH --seconds S --rate R
                        appends R messages a second on an absolute schedule (the
                        benchmark's writer); prints "ready", then a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any


def session_db(path: Path) -> Any:
    os.environ["HERMES_HOME"] = str(path.parent)
    import hermes_state

    return hermes_state.SessionDB(db_path=path)


def ops(path: Path) -> None:
    db = session_db(path)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            op = json.loads(line)
            kind, sid = op["op"], op.get("sid")
            result: Any = None
            if kind == "append":
                result = db.append_message(sid, op.get("role", "user"), op.get("content"))
            elif kind == "create":
                db.create_session(
                    sid,
                    op.get("source", "cli"),
                    model=op.get("model"),
                    parent_session_id=op.get("parent"),
                    model_config=op.get("model_config"),
                )
            elif kind == "end":
                db.end_session(sid, op["reason"])
            elif kind == "reopen":
                db.reopen_session(sid)
            elif kind == "title":
                result = db.set_session_title(sid, op["title"])
            elif kind == "delete":
                result = db.delete_session(sid)
            elif kind == "compact":  # compression.in_place: the old rows stay, marked
                summary = [{"role": "user", "content": op["summary"]}]
                result = db.archive_and_compact(sid, summary)
            elif kind == "rewind":
                result = db.rewind_to_message(sid, op["mid"])["rewound_count"]
            elif kind == "restore":
                result = db.restore_rewound(sid, op["mid"])
            elif kind == "replace":  # destructive: DELETE then INSERT, in one transaction
                extra = {"active_only": True} if op.get("active_only") else {}
                db.replace_messages(sid, op["messages"], **extra)
            else:
                raise SystemExit(f"unknown op {kind!r}")
            print(json.dumps({"ok": True, "result": result}), flush=True)
    finally:
        db.close()


def churn(
    path: Path, sessions: int, messages: int, delete_after: tuple[int, int] | None, seed: int
) -> None:
    db = session_db(path)
    rng = random.Random(seed)
    written: dict[str, int] = {}
    deleted: list[str] = []
    errors: list[str] = []
    timers: list[threading.Timer] = []
    lock = threading.Lock()

    def delete(sid: str) -> None:
        try:
            if db.delete_session(sid):
                with lock:
                    deleted.append(sid)
        except Exception as exc:
            with lock:
                errors.append(f"delete {type(exc).__name__}: {exc}")

    print("ready", flush=True)
    for n in range(sessions):
        sid = f"churn_{os.getpid()}_{n:04d}"
        try:
            db.create_session(sid, rng.choice(["cli", "api_server", "telegram"]))
            written[sid] = 0
            for k in range(messages):
                db.append_message(sid, "user" if k % 2 == 0 else "assistant", f"m {n} {k}")
                written[sid] += 1
                time.sleep(0.01)
            db.end_session(sid, "user_exit")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if delete_after is not None:
            t = threading.Timer(rng.uniform(*delete_after) / 1000, delete, (sid,))
            t.start()
            timers.append(t)
    for t in timers:
        t.join()
    db.close()
    print(
        json.dumps(
            {"sessions": written, "deleted": deleted, "failures": len(errors), "errors": errors[:5]}
        )
    )


def pace(path: Path, seconds: float, rate: float) -> None:
    """Append to one open session on an absolute schedule of ``rate`` a second (the
    fixture's writer sleeps a fixed time after each append, so it falls behind under
    load); prints "ready", then {"appended": n, "failures": n, "errors": [...]}."""
    db = session_db(path)
    sid = f"paced_{os.getpid()}"
    db.create_session(sid, "cli")
    appended, errors = 0, []
    print("ready", flush=True)
    start = time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        due = start + appended / rate
        if due > now:
            time.sleep(due - now)
        try:
            db.append_message(sid, "user", f"paced {appended}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        appended += 1
    db.close()
    print(
        json.dumps(
            {"appended": appended - len(errors), "failures": len(errors), "errors": errors[:5]}
        )
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("ops")
    o.add_argument("path", type=Path)
    c = sub.add_parser("churn")
    c.add_argument("path", type=Path)
    c.add_argument("--sessions", type=int, default=10)
    c.add_argument("--messages", type=int, default=5)
    c.add_argument("--delete-after-ms", type=int, nargs=2, default=None)
    c.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("pace")
    p.add_argument("path", type=Path)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.cmd == "ops":
        ops(args.path)
    elif args.cmd == "pace":
        pace(args.path, args.seconds, args.rate)
    else:
        window = tuple(args.delete_after_ms) if args.delete_after_ms else None
        churn(args.path, args.sessions, args.messages, window, args.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
