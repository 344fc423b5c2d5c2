"""``tether hermes import``, ``mirror`` and ``gc``: Hermes sessions into tether.

Registered on the ``tether hermes`` group by :func:`register`. Only Typer is
imported at load time; each command imports :mod:`tether.interop.hermes` when
it runs.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import DbOption, JsonOption, clean, cli_errors, emit_json, open_cli_store

PathsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[PATH]...",
        help="state.db files [default: $HERMES_HOME/state.db, ~/.hermes/state.db and "
        "~/.hermes/profiles/*/state.db].",
        show_default=False,
    ),
]
PageOption = Annotated[
    int,
    typer.Option("--page", min=1, metavar="N", help="Hermes messages per read transaction."),
]


def import_(
    paths: PathsArgument = None,
    db: DbOption = None,
    page: PageOption = 5000,
    json_: JsonOption = False,
) -> None:
    """Import every session of Hermes stores into tether; a rerun imports only what is new.

    Every source; compression chains join one tether chain, branches start their
    own; open Hermes rows stay open (external: tether's reaper never ends them);
    ghosts (rows without messages) are counted, not imported. Nothing is written
    to the Hermes store.

    \b
    Examples:
      tether hermes import                          the stores Hermes itself would use
      tether hermes import ~/.hermes/state.db --db sessions.db
    """
    from ..interop.hermes.importer import import_stores

    store = open_cli_store(db, must_exist=False, plugins=False)
    try:
        reports = import_stores(store, paths or (), page=page)
    finally:
        store.close()
    if json_:
        emit_json({"stores": [r.to_dict() for r in reports]})
        return
    for r in reports:
        print(f"{clean(r.path)}: up to Hermes message {r.cursor}")
        figures = [
            ("sessions imported", r.sessions_created),
            ("continuations (reopened in Hermes)", r.continuations),
            ("messages imported", r.messages),
            ("ends recorded", r.ends),
            ("titles updated", r.titles),
            ("message states followed", r.restated),
            ("ghosts (not imported)", r.ghosts),
            ("deleted at the source (kept)", r.deleted_at_source),
            ("session_meta rows skipped", r.skipped_meta_rows),
            ("lone surrogates replaced", r.replaced_surrogates),
        ]
        width = max(len(label) for label, _ in figures) + 2
        for label, value in figures:
            print(f"  {label.ljust(width)}{value}")


def mirror(
    paths: PathsArgument = None,
    db: DbOption = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.01, max=3600, metavar="SECONDS", help="Between change checks."
        ),
    ] = 0.5,
    for_: Annotated[
        str | None,
        typer.Option("--for", metavar="DURATION", help="Stop after this long (e.g. 30s, 1h)."),
    ] = None,
    page: PageOption = 5000,
) -> None:
    """Follow live Hermes stores into tether until interrupted (Ctrl-C).

    Between passes one cheap query per store (PRAGMA data_version) says whether
    anything changed. Each tether transaction holds the data and the cursor, so
    a mirror killed at any moment resumes exactly once. Prints one line per pass
    that changed something, with its lag.

    \b
    Examples:
      tether hermes mirror --db sessions.db
      tether hermes mirror a/state.db b/state.db --interval 0.25
    """
    from ..interop.hermes.importer import SyncReport
    from ..interop.hermes.mirror import HermesMirror
    from .common import parse_duration

    seconds = parse_duration(for_) if for_ is not None else None
    store = open_cli_store(db, must_exist=False, plugins=False)

    def printed(reports: list[SyncReport]) -> None:
        for r in reports:
            changed = (r.messages, r.sessions_created, r.ends, r.marked_deleted, r.continuations)
            if any(changed) or r.titles or r.restated:
                lag = max(r.lags) if r.lags else 0.0
                print(
                    f"{clean(r.path)}: +{r.sessions_created} sessions, +{r.messages} messages, "
                    f"{r.ends} ends, {r.continuations} continuations, "
                    f"{r.titles} titles, {r.restated} message states, "
                    f"{r.marked_deleted} deleted at source; cursor {r.cursor}, lag {lag:.2f}s",
                    flush=True,
                )

    follower = HermesMirror(store, paths or (), interval=interval, page=page, on_pass=printed)
    try:
        follower.open()
        names = ", ".join(clean(str(p)) for p in follower.paths)
        print(f"mirroring {names} into {clean(store.backend.url)} (Ctrl-C stops)", flush=True)
        try:
            follower.run(max_seconds=seconds)
        except KeyboardInterrupt:
            pass
        print(
            f"mirror stopped: cursor {follower.cursor}, {follower.passes} passes, "
            f"{follower.idle_checks} idle checks",
            file=sys.stderr,
            flush=True,
        )
    finally:
        follower.close()
        store.close()


def gc(
    paths: PathsArgument = None,
    db: DbOption = None,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Only sessions ended in Hermes at least this long ago (e.g. 7d; 0: any).",
        ),
    ] = "7d",
    yes: Annotated[bool, typer.Option("--yes", help="Delete (without it: a dry run).")] = False,
    json_: JsonOption = False,
) -> None:
    """Delete Hermes sessions that tether holds completely (a dry run without --yes).

    A session goes only when it is ended in Hermes and in tether and tether holds
    every one of its messages, checked in the Hermes write transaction that
    deletes it, with Hermes' own delete: branch and compression children are
    orphaned, the search index follows, and delegate children go with their
    parent (Hermes 0.17 on), so a session goes only when each of its delegate
    children meets the same conditions (else it is kept, and listed so).

    \b
    Examples:
      tether hermes gc --db sessions.db                 what --yes would delete
      tether hermes gc --older-than 30d --yes
    """
    from ..interop.hermes.gc import KEPT_REASONS, gc_stores
    from .common import parse_duration

    age = parse_duration(older_than)
    store = open_cli_store(db, plugins=False)
    try:
        results = gc_stores(store, paths or (), older_than=age, yes=yes)
    finally:
        store.close()
    if json_:
        emit_json({"dry_run": not yes, "stores": [r.to_dict() for r in results]})
        return
    for r in results:
        print(f"{clean(r.path)}: {r.considered} sessions ended more than {older_than} ago")
        if yes:
            print(f"  deleted{'':<50}{len(r.deleted)}")
        else:
            print(f"  {'--yes would delete':<57}{len(r.eligible)}")
            for sid in r.eligible:
                print(f"    {clean(sid)}")
        for key, n in sorted(r.kept.items()):
            print(f"  kept: {KEPT_REASONS[key]:<51}{n}")


def register(app: Any) -> None:
    """Add ``import``, ``mirror`` and ``gc`` to the ``tether hermes`` group."""
    app.command("import")(cli_errors(import_))
    app.command("mirror")(cli_errors(mirror))
    app.command("gc")(cli_errors(gc))
