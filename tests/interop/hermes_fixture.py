"""Hermes ``state.db`` fixtures written by the real ``hermes-agent`` package.

Run with the Hermes environment's interpreter (``.venv-hermes/bin/python``), never
tether's: hermes-agent pins exact versions (openai==2.24.0, ...) that tether's
environment must not carry. Every row goes through ``hermes_state.SessionDB``, so
the file is what Hermes 0.19.0 (schema 22) itself writes. Older schema generations
(0.13 to 0.18, schema 11 to 19) are not generated yet: that is a later session's work.

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
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
    db.create_session(sid, source, **extra)
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
            db.create_session(child, source, parent_session_id=sid, **extra)
            turn(db, rng, child, link)
            sid = child
    elif shape < 0.45:  # /branch: the parent ends 'branched', the child starts its own chain
        db.end_session(sid, "branched")
        child = new_id(rng, source, n * 10 + 9)
        db.create_session(
            child, source, parent_session_id=sid, model_config={"_branched_from": sid}, **extra
        )
        turn(db, rng, child, 0)
        sid = child
    elif shape < 0.55:  # compression in place: old rows active=0, compacted=1
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
    db.create_session(sid, "cli")
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
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        generate(args.path, args.seed, args.conversations)
    elif args.cmd == "hold":
        hold(args.path, args.sids)
    else:
        write(args.path, args.seconds, args.rate)


if __name__ == "__main__":
    main(sys.argv[1:])
