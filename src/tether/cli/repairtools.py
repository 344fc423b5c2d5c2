"""``tether repair-tools``: answer tool calls that conversations left dangling."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DbOption,
    JsonOption,
    cli_errors,
    emit_json,
    open_cli_store,
    out,
    plural,
    usage_error,
)


@cli_errors
def repair_tools(
    session_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="The session (a prefix works).")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every session that ends in dangling tool calls.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Append the results (without: only show).")
    ] = False,
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """Append a synthetic result to each tool call a conversation left unanswered.

    A process that died during a tool call leaves a history that model
    providers refuse. The result says "no result: the session was interrupted
    before the tool returned" and is marked synthetic in its meta. Open
    sessions are left to whoever resumes them (resume repairs them itself).

    \b
    Examples:
      tether repair-tools --all            (shows which)
      tether repair-tools 01M7YW3W --yes
    """
    if (session_id is None) == (not all_):
        raise usage_error("repair-tools takes an ID or --all (not both)")
    with open_cli_store(db, plugins=False) as store:
        ids = store.dangling_sessions() if all_ else [store.resolve_id(session_id or "")]
        results = [store.repair_tool_calls(sid, apply=yes) for sid in ids]
    results = [r for r in results if r.dangling]
    if json_:
        emit_json({"applied": yes, "sessions": [r.to_dict() for r in results]})
        return
    if not results:
        out.print("nothing to repair: no conversation ends in unanswered tool calls")
        return
    for r in results:
        calls = plural(len(r.dangling), "unanswered tool call")
        if r.skipped == "open":
            out.print(f"{r.session_id}: {calls}; open: repaired when resumed")
        elif yes:
            out.print(f"{r.session_id}: answered {calls}")
        else:
            out.print(f"{r.session_id}: {calls}")
    if not yes:
        out.print("run again with --yes to answer them")
