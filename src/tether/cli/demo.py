"""``tether demo``: a short tour of the store on a throw-away database."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .common import DbOption, cli_errors, out, resolve_db, styled
from .doctor import render_census
from .sessions import ls


@cli_errors
def demo(db: DbOption = None) -> None:
    """Write a few sessions the way an agent would, then list them and take a census.

    \b
    Example:
      tether demo                  (a throw-away database, removed afterwards)
      tether demo --db demo.db     (kept: try tether ls --db demo.db)
    """
    from ..compose import open_store

    db = resolve_db(db)
    tmp = None
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="tether-demo-")
        db = str(Path(tmp.name) / "demo.db")
    store = open_store(db)
    line = styled("database:", "bold")
    line.append(f" {db}\n")
    out.print(line, soft_wrap=True)

    with store.session(source="cli", model="echo", title="Fix the build") as s:
        s.append("user", "Why does `make` fail?")
        s.append(
            "assistant",
            None,
            tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}
            ],
        )
        s.append("tool", "fatal error: gen.h: No such file", tool_call_id="c1", tool_name="shell")
        s.append("assistant", "The generated header is missing: run `make gen` first.")

    first = store.session(source="tui", model="echo", title="Long research thread")
    for i in range(3):
        first.append("user", f"question {i}")
        first.append("assistant", f"answer {i}")
    first.end("compression")
    second = store.session(source="tui", model="echo", parent_id=first.id)
    second.buffer("user", "and after compression?")
    second.buffer("assistant", "the chain goes on, listed once")
    second.flush()

    try:
        with store.session(source="cron", model="echo", title="nightly report") as s:
            s.append("user", "summarise yesterday")
            raise TimeoutError("model did not answer")
    except TimeoutError:
        pass

    ghost = store.session(source="tui")  # opened, never used: leaves no row at all
    ghost.end()

    out.print(styled("tether ls", "bold"))
    store.close()  # ends the still-open chain tip (reason process_exit)
    ls(
        db=db,
        all_=False,
        source=None,
        cwd=None,
        open_=False,
        ended=False,
        limit=20,
        cursor=None,
        json_=False,
    )
    out.print()
    out.print(styled("tether doctor", "bold"))
    with open_store(db) as again:
        render_census(again.census())
    if tmp is not None:
        tmp.cleanup()
