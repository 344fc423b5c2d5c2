"""``tether export`` and ``tether import``: transcripts out of a store and into another.

Export streams (constant memory: pages of sessions, pages of messages) to a
file or stdout, with a progress bar on stderr when it is a terminal. Import
reads the JSONL back in one transaction, idempotently: see
:mod:`tether.store.transfer`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInputError
from .common import (
    DbOption,
    JsonOption,
    cli_errors,
    emit_json,
    err,
    fail,
    open_cli_store,
    out,
    parse_duration,
    plural,
    usage_error,
)
from .retention import progress_bar


@cli_errors
def export(
    session_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="Sessions to export, with their chains."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Export every session.")] = False,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="jsonl (sessions and messages, what `tether import` reads) or openai "
            "(per session, its chat-completions message list).",
        ),
    ] = "jsonl",
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DURATION", help="Only sessions active in the last ..."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write here [default: stdout]."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Write sessions with their messages as JSON Lines (streaming, constant memory).

    \b
    Examples:
      tether export --all -o sessions.jsonl
      tether export 01M7YW3W --format openai
      tether export --all --since 7d | gzip > week.jsonl.gz
    """
    if bool(session_ids) == all_:
        raise usage_error("export takes IDs or --all (not both)")
    if format_ not in ("jsonl", "openai"):
        raise usage_error(f"invalid --format {format_!r}: expected jsonl or openai")
    window = None
    if since is not None:
        try:
            window = parse_duration(since)
        except typer.BadParameter as exc:
            raise usage_error(f"--since: {exc.message}") from None
        except InvalidInputError as exc:  # nan, inf
            raise usage_error(f"--since: {exc}") from None
    with open_cli_store(db, plugins=False) as store:
        ids = None if all_ else [store.resolve_id(s) for s in session_ids or []]
        floor = None if window is None else time.time() - window
        counted = [0]

        def count(n: int) -> None:
            counted[0] = n

        with progress_bar("exporting") as bar:

            def tick(n: int) -> None:
                count(n)
                bar(n)

            chunks = store.export_text(ids, fmt=format_, since=floor, progress=tick)
            if output is None:
                sys.stdout.writelines(chunks)
            else:
                try:
                    with open(output, "w", encoding="utf-8") as f:
                        f.writelines(chunks)
                except OSError as exc:
                    raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
        n = counted[0]
    if output is not None:
        err.print(f"exported {plural(n, 'session')} to {output}", soft_wrap=True)


@cli_errors
def import_(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="A `tether export` JSONL file (- for stdin).")
    ],
    db: DbOption = None,
    json_: JsonOption = False,
) -> None:
    """Import a `tether export` file: all of it or, on any bad line, nothing.

    Idempotent: sessions already in the store (by id) are skipped, so
    importing twice writes nothing the second time.

    \b
    Example:
      tether import sessions.jsonl --db postgresql://me@db.example/tether
    """
    with open_cli_store(db, must_exist=False) as store:
        if file == "-":
            summary = store.import_lines(sys.stdin, name="stdin")
        else:
            path = Path(file)
            try:
                f = path.open(encoding="utf-8", newline="")
            except OSError as exc:
                raise fail(f"cannot read {file}: {exc.strerror or exc}") from None
            with f:
                try:
                    summary = store.import_lines(f, name=file)
                except UnicodeDecodeError as exc:
                    raise fail(f"{file}: not UTF-8 text ({exc.reason})") from None
    if json_:
        emit_json(summary.to_dict())
        return
    out.print(
        f"imported {plural(summary.sessions, 'session')} with "
        f"{plural(summary.messages, 'message')}; "
        f"{plural(summary.skipped, 'session')} already here (skipped)"
    )
