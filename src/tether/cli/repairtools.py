"""``tether repair-tools``: answer tool calls that conversations left dangling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from ..compose import Store
    from ..store.toolrepair import RepairResult


@cli_errors
def repair_tools(
    session_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="The session (a prefix works).")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every session with unanswered tool calls.")
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
    sessions are skipped: their owner may still answer (resuming one repairs
    it). Calls left unanswered in the middle of a conversation (other messages
    after them) cannot get a stored result, since messages are only appended:
    they are listed, and the gateway answers them when it reads the history.

    \b
    Examples:
      tether repair-tools --all            (shows which)
      tether repair-tools 01M7YW3W --yes
    """
    if (session_id is None) == (not all_):
        raise usage_error("repair-tools takes an ID or --all (not both)")
    with open_cli_store(db, plugins=False) as store:
        ids = _all_dangling(store) if all_ else [store.resolve_id(session_id or "")]
        # Each decides (and writes) in its own transaction: an open session is
        # skipped under its write lock, so its owner's real result cannot race it.
        results = [store.repair_tool_calls(sid, apply=yes) for sid in ids]
    results = [r for r in results if r.dangling or r.middle]
    skipped = sum(1 for r in results if r.skipped)
    if json_:
        emit_json({"applied": yes, "sessions": [r.to_dict() for r in results], "skipped": skipped})
        return
    if not results:
        out.print("nothing to repair: no conversation has unanswered tool calls")
        return
    for r in results:
        out.print(f"{r.session_id}: {describe(r, yes)}", soft_wrap=True)
    if skipped:
        out.print(
            f"skipped {plural(skipped, 'open session')}: "
            "its owner may still answer (resuming it repairs it)",
            soft_wrap=True,
        )
    if not yes and any(r.dangling and not r.skipped for r in results):
        out.print("run again with --yes to answer them")


def describe(r: RepairResult, applied: bool) -> str:
    """One session's line: its tail (answered, to answer, or skipped) and its middle."""
    parts = []
    if r.dangling:
        calls = plural(len(r.dangling), "unanswered tool call")
        if r.skipped == "open":
            parts.append(f"{calls}; skipped: open")
        else:
            parts.append(f"answered {calls}" if applied else calls)
    if r.middle:
        calls = plural(len(r.middle), "unanswered tool call")
        parts.append(f"{calls} in the middle: answered when read")
    return "; ".join(parts)


def _all_dangling(store: Store) -> list[str]:
    """Every session with unanswered calls, page by page (keyset on the id)."""
    ids: list[str] = []
    while page := store.dangling_sessions(after=ids[-1] if ids else ""):
        ids.extend(page)
    return ids
