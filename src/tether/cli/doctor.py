"""``tether doctor``: the health of the store at a glance."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from ..liveness import Reaper
from ..model import Census, iso
from ..store import Store
from .common import (
    DbOption,
    JsonOption,
    ago,
    cli_errors,
    emit_json,
    open_cli_store,
    out,
    parse_duration,
)


def render_census(census: Census, hung: int = 0) -> None:
    now = time.time()
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("sessions", str(census.total))
    summary.add_row("open", str(census.open))
    summary.add_row("  with a live owner", str(census.open_live_owner))
    # Alive on this host (its pid is there) but silent past its lease: stopped or
    # stuck. Never reaped automatically; a human decides.
    summary.add_row("    of which hung (no heartbeat)", str(hung))
    summary.add_row("  with a dead owner", str(census.open_dead_owner))
    summary.add_row("  without owner", str(census.open_no_owner))
    summary.add_row("ended", str(census.ended))
    summary.add_row("ghosts (no messages)", str(census.ghosts))
    if census.oldest_open is not None:
        o = census.oldest_open
        summary.add_row("oldest open", f"{o.id} ({o.source}, active {ago(o.last_active_at, now)})")
    out.print(summary)
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
        out.print(f"{len(found)} sessions; run again with --yes to end them")
    else:
        out.print(f"ended {len(found)} sessions (reason abandoned)")


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
        typer.Option("--stale-after", help="With --repair: how idle (e.g. 30m, 2h, 7d)."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="With --repair: do it (without: only show).")
    ] = False,
) -> None:
    """Census of the store: open (by owner liveness), ended, ghosts, end reasons."""
    if repair and stale_after is None:
        raise typer.BadParameter("--repair needs --stale-after (e.g. --stale-after 2h)")
    if not repair and (stale_after is not None or yes):
        raise typer.BadParameter("--stale-after and --yes go with --repair")
    with open_cli_store(db) as store:
        if repair:
            assert stale_after is not None
            _repair(store, parse_duration(stale_after), yes, json_)
            return
        census, hung = Reaper(store).breakdown()
    if json_:
        emit_json({**census.to_dict(), "open_hung_owner": hung})
    else:
        render_census(census, hung)
