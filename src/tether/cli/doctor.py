"""``tether doctor``: the health of the store at a glance."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    DbOption,
    JsonOption,
    ago,
    cli_errors,
    emit_json,
    open_cli_store,
    out,
    parse_duration,
    plural,
)
from .retention import human_bytes

if TYPE_CHECKING:
    from ..compose import Store
    from ..model import Census


def census_rows(census: Census, hung: int = 0) -> list[tuple[str, int]]:
    """The counts, one (label, number) per line; indented labels break down the line above.

    A new count is one more tuple here: the table adapts to every label's length.
    """
    return [
        ("sessions", census.total),
        ("open", census.open),
        ("  with a live owner", census.open_live_owner),
        # Alive on this host (its pid is there) but silent past its lease: stopped
        # or stuck. Never reaped automatically; a human decides.
        ("    of which hung (no heartbeat)", hung),
        ("  with a dead owner", census.open_dead_owner),
        ("  without owner", census.open_no_owner),
        # Imported: their source ends them; tether never reaps nor repairs them.
        ("  external (imported)", census.open_external),
        ("ended", census.ended),
        ("ghosts (no messages)", census.ghosts),
        # Not counted above: in the trash until restored or purged (tether prune).
        ("trashed", census.trashed),
    ]


def render_census(census: Census, hung: int = 0) -> None:
    from rich.table import Table

    now = time.time()
    # The counts stay a narrow two-column table (labels, right-aligned numbers);
    # the oldest open session, a long line, is printed below it, so its length
    # never pushes the numbers away from their labels.
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(justify="right", no_wrap=True)
    for label, n in census_rows(census, hung):
        summary.add_row(label, str(n))
    out.print(summary)
    if census.oldest_open is not None:
        o = census.oldest_open
        out.print(
            f"oldest open: {o.id} ({o.source}, active {ago(o.last_active_at, now)})",
            soft_wrap=True,
        )
    if census.end_reasons:
        out.print()
        reasons = Table(title="end reasons", title_justify="left", box=None, header_style="bold")
        reasons.add_column("REASON")
        reasons.add_column("COUNT", justify="right")
        for reason, n in census.end_reasons.items():
            reasons.add_row(reason, str(n))
        out.print(reasons)
    if census.by_source:
        out.print()
        table = Table(title="by source", title_justify="left", box=None, header_style="bold")
        for col in ("SOURCE", "TOTAL", "OPEN", "ENDED", "GHOSTS", "TOP END REASONS"):
            table.add_column(
                col, justify="left" if col in ("SOURCE", "TOP END REASONS") else "right"
            )
        for source, c in census.by_source.items():
            top = ", ".join(f"{r} {n}" for r, n in list(c.end_reasons.items())[:3])
            table.add_row(source, str(c.total), str(c.open), str(c.ended), str(c.ghosts), top)
        out.print(table)


def _repair(store: Store, stale_after: float, yes: bool, json_: bool) -> None:
    from ..model import iso

    found = store.repair_unowned(stale_after, apply=yes)
    if json_:
        emit_json(
            {
                "applied": yes,
                "stale_after_seconds": stale_after,
                "sessions": [
                    {"id": s.id, "source": s.source, "last_active_at": iso(s.last_active_at)}
                    for s in found
                ],
            }
        )
        return
    now = time.time()
    if not found:
        out.print("nothing to repair: no open session without owner is that stale")
        return
    verb = "ended" if yes else "would end"
    for s in found:
        out.print(f"{verb} {s.id} ({s.source}, active {ago(s.last_active_at, now)}) as abandoned")
    if not yes:
        out.print(f"{plural(len(found), 'session')}; run again with --yes to end them")
    else:
        out.print(f"ended {plural(len(found), 'session')} (reason abandoned)")


@cli_errors
def doctor(
    db: DbOption = None,
    json_: JsonOption = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="End open sessions without owner that are idle past --stale-after."
        ),
    ] = False,
    stale_after: Annotated[
        str | None,
        typer.Option(
            "--stale-after", metavar="DURATION", help="With --repair: how idle (e.g. 30m, 2h, 7d)."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="With --repair: do it (without: only show).")
    ] = False,
) -> None:
    """Census of the store: open (by owner liveness), ended, ghosts, end reasons.

    \b
    Examples:
      tether doctor --db sessions.db
      tether doctor --repair --stale-after 2h          (only shows)
      tether doctor --repair --stale-after 2h --yes    (ends them as abandoned)
    """
    if repair and stale_after is None:
        raise typer.BadParameter("--repair needs --stale-after (e.g. --stale-after 2h)")
    if not repair and (stale_after is not None or yes):
        raise typer.BadParameter("--stale-after and --yes go with --repair")
    window = parse_duration(stale_after) if stale_after is not None else None
    with open_cli_store(db, plugins=window is not None) as store:  # only --repair ends any
        if window is not None:
            _repair(store, window, yes, json_)
            return
        from ..liveness import Reaper

        census, hung = Reaper(store).breakdown()
        dangling = store.count_dangling()
        dangling_middle = store.count_dangling_middle()
        policy = store.retention_policy()
        dry_run = (
            None
            if policy is None
            else store.prune(policy.keep, source=policy.source, reason=policy.reason)
        )
    if json_:
        emit_json(
            {
                **census.to_dict(),
                "open_hung_owner": hung,
                "dangling_tool_calls": dangling,
                "dangling_tool_calls_middle": dangling_middle,
                "retention_policy": None if policy is None else policy.to_dict(),
                "retention_dry_run": None if dry_run is None else dry_run.to_dict(),
            }
        )
        return
    render_census(census, hung)
    if dangling:
        out.print(
            f"{plural(dangling, 'conversation')} end in unanswered tool calls"
            " (tether repair-tools --all)"
        )
    if dangling_middle:
        has = "has" if dangling_middle == 1 else "have"
        out.print(
            f"{plural(dangling_middle, 'conversation')} {has} unanswered tool calls in its middle"
            " (answered with a synthetic result when read)",
            soft_wrap=True,
        )
    if policy is not None and dry_run is not None:
        out.print(
            f"retention policy: {policy.describe()}; would trash "
            f"{plural(dry_run.sessions, 'session')}, {plural(dry_run.messages, 'message')}, "
            f"{human_bytes(dry_run.bytes)} now",
            soft_wrap=True,
        )
