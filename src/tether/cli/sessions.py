"""``tether ls``, ``tether show`` and ``tether end``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    DbOption,
    JsonOption,
    ago,
    cell_width,
    clean,
    cli_errors,
    command_line,
    emit_json,
    open_cli_store,
    out,
    paint,
    plain_table,
    resolve_db,
    shorten,
    styled,
    terminal_width,
    use_color,
)

if TYPE_CHECKING:
    from rich.text import Text

    from ..model import Message, Session


def _state_cell(s: Session) -> tuple[str, str]:
    """The STATE cell for the plain listing, with its ANSI style."""
    if s.ended_at is None:
        return ("open", "32")
    return (shorten(s.end_reason, 40) or "ended", "2")


def next_page_hint(
    cursor: str,
    *,
    db: str | None,
    all_: bool,
    source: str | None,
    cwd: str | None,
    open_: bool,
    ended: bool,
    limit: int,
) -> str:
    """The command for the next page: every option that selects data, quoted for the shell."""
    args = ["tether", "ls"]
    if db is not None:
        args += ["--db", db]
    if all_:
        args.append("--all")
    if source is not None:
        args += ["--source", source]
    if cwd is not None:
        args += ["--cwd", cwd]
    if open_:
        args.append("--open")
    if ended:
        args.append("--ended")
    args += ["--limit", str(limit), "--cursor", cursor]
    return command_line(args)


@cli_errors
def ls(
    db: DbOption = None,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Also list sessions without messages.")
    ] = False,
    source: Annotated[
        str | None, typer.Option("--source", "-s", metavar="SOURCE", help="Only this source.")
    ] = None,
    cwd: Annotated[
        str | None, typer.Option("--cwd", metavar="DIR", help="Only this working directory.")
    ] = None,
    open_: Annotated[bool, typer.Option("--open", help="Only open sessions.")] = False,
    ended: Annotated[bool, typer.Option("--ended", help="Only ended sessions.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, metavar="N", help="Rows per page.")
    ] = 20,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor", metavar="CURSOR", help="Continue after a previous page (printed under it)."
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """List resumable sessions, newest activity first (one row per chain).

    \b
    Examples:
      tether ls --db sessions.db
      tether ls --open --source gateway --limit 5
      tether ls --json | jq -r '.items[].id'
    """
    if open_ and ended:
        raise typer.BadParameter("--open and --ended exclude each other")
    state = "open" if open_ else "ended" if ended else "all"
    db = resolve_db(db)
    with open_cli_store(db, plugins=False) as store:
        page = store.list_sessions(
            source=source,
            cwd=cwd,
            state=state,
            limit=limit,
            cursor=cursor,
            include_empty=all_,
        )
    if json_:
        emit_json(page.to_dict())
        return
    if not page.items:
        print("no sessions")
        return
    now = time.time()
    headers = ("ID", "SOURCE", "MODEL", "TITLE", "MSGS", "ACTIVE", "STATE")
    rows = [
        [
            (item.session.id, ""),
            (shorten(item.session.source, 64), ""),
            (shorten(item.session.model, 16), ""),
            (shorten(item.title, 40), ""),
            (str(item.chain_message_count), ""),
            (ago(item.chain_last_active_at, now), ""),
            _state_cell(item.session),
        ]
        for item in page.items
    ]
    # Every column keeps its width but the title, which is cut to what the
    # terminal has left.
    naturals = [
        max(cell_width(h), *(cell_width(r[i][0]) for r in rows)) for i, h in enumerate(headers)
    ]
    room = terminal_width() - sum(naturals) + naturals[3] - (len(headers) - 1)
    title_width = max(8, min(naturals[3], room))
    for row in rows:
        row[3] = (shorten(row[3][0], title_width), "")
    print(plain_table(headers, rows, right=frozenset({4})))
    if page.next_cursor:
        hint = next_page_hint(
            page.next_cursor,
            db=db,
            all_=all_,
            source=source,
            cwd=cwd,
            open_=open_,
            ended=ended,
            limit=limit,
        )
        print(paint(f"more: {hint}", "2", use_color()))


def _message_line(m: Message) -> Text:
    from rich.text import Text

    line = Text()
    line.append(f"{m.seq:>4} ", style="dim")
    line.append(f"{m.role:<10}", style="bold cyan" if m.role == "user" else "bold")
    if m.tool_calls:
        names = ", ".join(
            str((c.get("function") or {}).get("name") or c.get("name") or "?")
            if isinstance(c, dict)
            else "?"
            for c in m.tool_calls
        )
        line.append(f"[calls {clean(names)}] ", style="magenta")
    if m.tool_name or m.tool_call_id:
        tool = clean(f"[{m.tool_name or 'tool'} {m.tool_call_id or ''}] ")
        line.append(tool, style="magenta")
    line.append(clean(m.content))
    return line


@cli_errors
def show(
    session_id: Annotated[
        str, typer.Argument(metavar="ID", help="Session id (a unique prefix is enough).")
    ],
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """Show one session and its messages.

    \b
    Example:
      tether show 01M7YW3W --db sessions.db
    """
    with open_cli_store(db, plugins=False) as store:
        sid = store.resolve_id(session_id)
        session = store.get_session(sid)
        chain = store.get_chain(sid)
        messages = store.get_messages(sid)
    if json_:
        emit_json(
            {
                "session": session.to_dict(),
                "chain": [s.id for s in chain],
                "messages": [m.to_dict() for m in messages],
            }
        )
        return
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("id", session.id)
    head.add_row("source", clean(session.source))
    for label, value in (("model", session.model), ("title", session.title), ("cwd", session.cwd)):
        if value:
            head.add_row(label, clean(value))
    head.add_row("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session.created_at)))
    if session.ended_at is None:
        head.add_row("state", styled("open", "green"))
    else:
        ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session.ended_at))
        detail = f" ({clean(session.end_detail)})" if session.end_detail else ""
        head.add_row("ended", f"{ended} {session.end_reason}{detail}")
    if session.owner_id:
        head.add_row("owner", f"{session.owner_id} (epoch {session.epoch})")
    if len(chain) > 1:
        marks = styled("", "")
        for i, s in enumerate(chain):
            if i:
                marks.append(" → ")
            marks.append(s.id, style="bold" if s.id == sid else "")
        head.add_row("chain", marks)
    head.add_row("messages", str(session.message_count))
    out.print(head)
    if messages:
        out.print()
    for m in messages:
        out.print(_message_line(m))


@cli_errors
def end(
    session_id: Annotated[
        str, typer.Argument(metavar="ID", help="Session id (a unique prefix is enough).")
    ],
    reason: Annotated[
        str,
        typer.Option("--reason", "-r", metavar="REASON", help="End reason (a snake_case word)."),
    ] = "manual",
    detail: Annotated[
        str | None, typer.Option("--detail", metavar="TEXT", help="Free-text detail.")
    ] = None,
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """End a session now. Ending an ended session changes nothing and says so.

    \b
    Example:
      tether end 01M7YW3W --reason manual --db sessions.db
    """
    with open_cli_store(db) as store:
        sid = store.resolve_id(session_id)
        ended = store.end_session(sid, reason, detail)
        session = store.get_session(sid)
    if json_:
        emit_json({"id": sid, "ended": ended, "session": session.to_dict()})
        return
    if ended:
        out.print(f"ended {sid} ({reason})")
    else:
        out.print(f"{sid} was already ended ({session.end_reason}); nothing changed")
