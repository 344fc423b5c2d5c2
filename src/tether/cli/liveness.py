"""``tether reap``: end the sessions of dead processes, once."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DbOption,
    JsonOption,
    cli_errors,
    emit_json,
    err,
    finite,
    open_cli_store,
    out,
    plural,
)


@cli_errors
def reap(
    db: DbOption = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            min=1.0,
            metavar="SECONDS",
            callback=finite,
            help="Wait at least this long without heartbeat before judging an owner of another"
            " host or namespace dead [default: the lease each owner promised]. It can only"
            " lengthen an owner's lease: a shorter value is raised to the lease (with a note).",
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Sweep once: end every open session whose owner process is dead (reason ``reaped``).

    On this host (same boot and PID namespace) a process is dead when its pid
    is gone or reused; a stopped or hung one is alive (see ``tether doctor``).
    Elsewhere, an owner is dead once its heartbeat is older than its lease.

    \b
    Example:
      tether reap --db sessions.db
    """
    from ..liveness import Reaper

    with open_cli_store(db) as store:
        if ttl is not None:
            n, longest = store.longest_owner_lease(above=ttl)
            if n:
                err.print(
                    f"note: --ttl {ttl:g} is below the lease of {plural(n, 'owner')}"
                    f" (up to {longest:g} s): they are judged by their own lease",
                    soft_wrap=True,
                )
        report = Reaper(store, ttl=ttl).sweep()
    if json_:
        emit_json(report.to_dict())
        return
    if not report.reaped:
        out.print("nothing to reap: every open session has a live owner (or none)")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    for col in ("SESSION", "OWNER", "WHY"):
        table.add_column(col, no_wrap=True)
    for r in report.reaped:
        table.add_row(r.id, r.owner, r.detail)
    out.print(table)
    out.print(
        f"reaped {plural(len(report.reaped), 'session')} "
        f"of {plural(report.dead_owners, 'dead owner')}"
    )
