"""The ``tether`` command: thin, it parses, calls the layers and prints."""

from __future__ import annotations

import logging
import os
import sys

import typer

from .. import __version__
from . import chat, demo, doctor, liveness, serve, sessions

app = typer.Typer(
    name="tether",
    help="tether: durable sessions for AI agents that end exactly once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("ls")(sessions.ls)
app.command("show")(sessions.show)
app.command("end")(sessions.end)
app.command("doctor")(doctor.doctor)
app.command("reap")(liveness.reap)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)
app.command("chat")(chat.chat)


def _version(value: bool) -> None:
    if value:
        print(f"tether {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """tether: durable sessions for AI agents that end exactly once."""


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("TETHER_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        app()
    except Exception as exc:  # a bug, not a foreseeable problem: say so in one line
        if os.environ.get("TETHER_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set TETHER_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        sys.exit(2)
