"""``tether doctor``: the health of the store at a glance."""

from __future__ import annotations

import time

from rich.table import Table

from ..model import Census
from .common import DbOption, JsonOption, ago, cli_errors, emit_json, open_cli_store, out


def render_census(census: Census) -> None:
    now = time.time()
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("sessions", str(census.total))
    summary.add_row("open", str(census.open))
    summary.add_row("  with a live owner", str(census.open_live_owner))
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


@cli_errors
def doctor(db: DbOption = None, json_: JsonOption = False) -> None:
    """Census of the store: open, ended, ghosts, end reasons overall and per source."""
    with open_cli_store(db) as store:
        census = store.census()
    if json_:
        emit_json(census.to_dict())
    else:
        render_census(census)
