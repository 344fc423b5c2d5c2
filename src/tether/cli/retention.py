"""``tether prune``, ``tether restore``, ``tether purge``: retention with consent.

Prune is a dry run unless ``--yes``; it moves whole ended chains to a trash
that ``restore`` empties back; ``purge`` deletes the trash for good and gives
the space back. What is never touched is the store's rule (see
:mod:`tether.store.retention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import InvalidInputError
from .common import (
    DbOption,
    JsonOption,
    cli_errors,
    emit_json,
    err,
    open_cli_store,
    out,
    parse_duration,
    plural,
    usage_error,
)

if TYPE_CHECKING:
    from ..compose import Store
    from ..store.retention import PruneReport
    from ..threads import PeriodicThread

DurationOption = Annotated[str | None, typer.Option(metavar="DURATION")]


def human_bytes(n: int) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as file managers show them)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # not reached


@contextlib.contextmanager
def progress_bar(what: str, total: int | None = None) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal; a callback ``(done, total)`` either way."""
    if not err.is_terminal:
        yield lambda done, total=None: None
        return
    from rich.progress import Progress

    with Progress(console=err._get(), transient=True) as bar:
        task = bar.add_task(what, total=total)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _size(report: PruneReport) -> str:
    return (
        f"{plural(report.sessions, 'session')}, {plural(report.messages, 'message')}, "
        f"{human_bytes(report.bytes)}"
    )


def _parse(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except typer.BadParameter as exc:
        raise usage_error(f"{option}: {exc.message}") from None
    except InvalidInputError as exc:  # nan, inf
        raise usage_error(f"{option}: {exc}") from None


@cli_errors
def prune(
    ended_before: Annotated[
        str | None,
        typer.Option(
            "--ended-before",
            "--keep",
            metavar="DURATION",
            help="Chains whose every session ended more than this long ago (e.g. 90d).",
        ),
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", metavar="SOURCE", help="Only chains of this source.")
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="REASON", help="Only chains whose tip ended so."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Move them to the trash (without: only show).")
    ] = False,
    set_policy: Annotated[
        bool,
        typer.Option(
            "--set-policy",
            help="Store these options as the retention policy that `tether serve` applies.",
        ),
    ] = False,
    purge_after: Annotated[
        str | None,
        typer.Option(
            "--purge-after",
            metavar="DURATION",
            help="With --set-policy: also purge what was trashed this long ago.",
        ),
    ] = None,
    clear_policy: Annotated[
        bool, typer.Option("--clear-policy", help="Remove the stored retention policy.")
    ] = False,
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """Move ended conversations to the trash (a dry run unless --yes).

    Never touched: open sessions, chains with an open member, sessions whose
    owner is another live process, sessions a reader (an export, a mirror)
    has claimed. Trashed chains leave every listing; `tether restore` brings them
    back, `tether purge` deletes them for good.

    \b
    Examples:
      tether prune --ended-before 90d                 (shows what would go)
      tether prune --ended-before 90d --yes           (moves it to the trash)
      tether prune --keep 90d --purge-after 30d --set-policy
    """
    from ..store.retention import RetentionPolicy

    if clear_policy:
        if ended_before or set_policy or yes:
            raise usage_error("--clear-policy goes alone")
        with open_cli_store(db, plugins=False) as store:
            store.set_retention_policy(None)
        out.print("retention policy removed")
        return
    if ended_before is None:
        raise usage_error("prune needs --ended-before (or --keep), e.g. --ended-before 90d")
    if purge_after is not None and not set_policy:
        raise usage_error("--purge-after goes with --set-policy")
    keep = _parse(ended_before, "--ended-before")
    purge_window = None if purge_after is None else _parse(purge_after, "--purge-after")
    with open_cli_store(db, plugins=False) as store:
        if set_policy:
            policy = RetentionPolicy(keep, source, reason, purge_window)
            store.set_retention_policy(policy)
            if json_:
                emit_json({"policy": policy.to_dict()})
            else:
                out.print(f"retention policy set: {policy.describe()}", soft_wrap=True)
                out.print("`tether serve` applies it every hour; `tether doctor` shows its dry run")
            return
        with progress_bar("pruning" if yes else "measuring") as bar:
            report = store.prune(keep, source=source, reason=reason, apply=yes, progress=bar)
    if json_:
        emit_json(report.to_dict())
        return
    if report.chains == 0:
        out.print(f"nothing to prune: no chain ended more than {ended_before} ago can go")
    elif yes:
        out.print(f"moved {plural(report.chains, 'chain')} to the trash: {_size(report)}")
        out.print("`tether restore --all` brings them back; `tether purge` deletes them")
    else:
        out.print(f"would move {plural(report.chains, 'chain')} to the trash: {_size(report)}")
        out.print("run again with --yes to move them")


@cli_errors
def restore(
    session_id: Annotated[
        str | None,
        typer.Argument(metavar="[ID]", help="A session of the chain to restore (a prefix works)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Restore every trashed chain.")] = False,
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """Bring a trashed chain (or all of them) back into the listings, unchanged.

    \b
    Examples:
      tether restore 01M7YW3W
      tether restore --all
    """
    if (session_id is None) == (not all_):
        raise usage_error("restore takes an ID or --all (not both)")
    with open_cli_store(db, plugins=False) as store:
        n = store.restore_all() if all_ else store.restore(store.resolve_id(session_id or ""))
    if json_:
        emit_json({"restored": n})
    elif n:
        out.print(f"restored {plural(n, 'session')}")
    else:
        out.print("nothing to restore: not in the trash")


@cli_errors
def purge(
    trashed_before: Annotated[
        str,
        typer.Option(
            "--trashed-before",
            metavar="DURATION",
            help="Delete what was moved to the trash more than this long ago (0s: all of it).",
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete for good (without: only show).")
    ] = False,
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """Delete trashed chains for good and give the space back to the file system.

    Messages and events go with their sessions; an event cursor that fell
    behind is told to reload. SQLite: the first purge rewrites the file once
    (VACUUM, with a progress bar), later ones free pages in short steps.

    \b
    Example:
      tether purge --trashed-before 30d --yes
    """
    window = _parse(trashed_before, "--trashed-before")
    with open_cli_store(db, plugins=False) as store:
        if not yes:
            preview = store.purge_preview(window)
            if json_:
                emit_json({"applied": False, **preview.to_dict()})
            elif preview.chains:
                out.print(
                    f"would delete {plural(preview.chains, 'chain')} for good: "
                    f"{plural(preview.sessions, 'session')}, "
                    f"{plural(preview.messages, 'message')}"
                )
                out.print("run again with --yes to delete them")
            else:
                out.print(f"nothing to purge: nothing was trashed more than {trashed_before} ago")
            return
        with progress_bar("purging") as bar:
            report = store.purge(window, progress=bar)
        with progress_bar("giving space back") as bar:
            space = store.reclaim_space(bar)
    if json_:
        emit_json(
            {
                "applied": True,
                **report.to_dict(),
                "file_bytes_before": space.before,
                "file_bytes_after": space.after,
            }
        )
        return
    out.print(
        f"deleted {plural(report.chains, 'chain')}: {plural(report.sessions, 'session')}, "
        f"{plural(report.messages, 'message')}, {plural(report.events, 'event')}"
    )
    if space.before is not None and space.after is not None:
        out.print(
            f"database file: {human_bytes(space.before)} -> {human_bytes(space.after)} "
            f"({space.method})"
        )


def policy_thread(store: Store, every: float) -> PeriodicThread:
    """A thread applying the store's retention policy now and every ``every`` seconds.

    What ``tether serve`` runs beside the gateway (start it; ``stop()`` joins it).
    A failure is logged by the thread and tried again at the next period:
    retention must never stop the gateway.
    """

    # Imported here for start-up speed: `tether --help` loads no logging, no threads.
    import logging

    from ..threads import PeriodicThread

    log = logging.getLogger("tether.retention")

    def tick(_woken: bool) -> None:
        done = store.apply_retention_policy()
        if done is not None and (done[0].sessions or done[1].sessions):
            log.info(
                "retention: trashed %d sessions, purged %d", done[0].sessions, done[1].sessions
            )

    return PeriodicThread(
        tick, interval=every, jitter=0.0, name="tether-retention", first_at_once=True
    )
