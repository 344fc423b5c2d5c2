"""The ``tether`` command: thin, it parses, calls the layers and prints.

Start-up time matters (``tether ls`` is typed all day; the target is 150 ms):
the command modules import only Typer at load time, each command imports what
it needs (Rich, the store, the gateway) when it runs, and :func:`main` loads
and registers only the command named on the command line (every command for
``tether --help`` or a name it does not know). Logging is configured by the
root callback, so ``--help`` never imports it.

Exit codes: 0 done, 1 the operation failed (one ``error:`` line), 2 the
command line was wrong (one ``error:`` line and at most one hint line).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Any

import typer

from .. import __version__
from ..errors import TetherError
from .common import EXIT_FAILED, EXIT_USAGE, click_exceptions

HELP = """tether: durable sessions for AI agents that end exactly once.

\b
Examples:
  tether ls                          newest sessions of the default database
  tether --db sessions.db show 01M7  one session (a unique id prefix is enough)
  tether serve                       the gateway on ws://127.0.0.1:8765/rpc
  tether chat                        talk to it from another terminal
  tether web                         the live view on http://127.0.0.1:8766/

Exit codes: 0 done, 1 the operation failed, 2 bad usage.
"""

# Each command: its name, and the module and function that implement it (loaded
# only when needed). The order is the order of `tether --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "ls": ("sessions", "ls"),
    "show": ("sessions", "show"),
    "end": ("sessions", "end"),
    "doctor": ("doctor", "doctor"),
    "reap": ("liveness", "reap"),
    "prune": ("retention", "prune"),
    "restore": ("retention", "restore"),
    "purge": ("retention", "purge"),
    "repair-tools": ("repairtools", "repair_tools"),
    "export": ("export", "export"),
    "import": ("export", "import_"),
    "demo": ("demo", "demo"),
    "serve": ("serve", "serve"),
    "chat": ("chat", "chat"),
    "web": ("web", "web"),
    "hermes": ("hermes", "app"),  # a group: `tether hermes census`
}


def build(only: str | None = None) -> typer.Typer:
    """The ``tether`` application: every command, or only the one named ``only``.

    Building a command costs its module's imports and Typer's reading of its
    signature, so ``tether ls`` builds ``ls`` alone.
    """
    application = typer.Typer(
        name="tether",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Plain Click help: brackets in help text stay as written (Rich markup would
        # eat "[default: ...]"), flags show no type, and --help needs no Rich import.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    application.callback()(_root)
    for name, (module, function) in COMMANDS.items():
        if only is None or name == only:
            implementation = getattr(importlib.import_module(f".{module}", __package__), function)
            if isinstance(implementation, typer.Typer):  # a group of subcommands
                application.add_typer(implementation, name=name)
            else:
                application.command(name)(implementation)
    return application


def command_named(argv: list[str]) -> str | None:
    """The command ``argv`` runs, if it is one of ours (``--db X`` may come before it)."""
    args = iter(argv)
    for arg in args:
        if arg == "--db":
            next(args, None)  # its value, whatever it looks like
        elif arg.startswith("-"):
            if arg in ("-h", "--help", "--version"):
                return None  # the root's own help or version: every command is listed
        else:
            return arg if arg in COMMANDS else None
    return None


def __getattr__(name: str) -> Any:
    """``app``: the whole application, built on first use (tests invoke it)."""
    if name == "app":
        application = build()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version(value: bool) -> None:
    if value:
        print(f"tether {__version__}")
        raise typer.Exit()


def _root(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="PATH|URL",
            help="Database for the command (the same as the command's own --db).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """The root options; the commands read ``--db`` from here when not given their own."""
    # Here rather than in main(): `tether --help` never gets here and need not import logging.
    import logging

    logging.basicConfig(
        level=os.environ.get("TETHER_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )


# Ctrl+C at a prompt: Typer's own Abort, and Click's where Typer does not vendor it.
_ABORTS: tuple[type[BaseException], ...] = tuple(
    {typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)}
)


def _usage(exc: Any) -> int:
    """Click's usage errors as one line (plus one hint), never a box."""
    message = exc.format_message()
    print(f"error: {message}", file=sys.stderr)
    ctx = exc.ctx
    if ctx is not None:
        help_opt = (ctx.help_option_names or ["--help"])[-1]
        print(f"try '{ctx.command_path} {help_opt}'", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> None:
    """The ``tether`` command (the console script's entry point)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = build(command_named(args))(args=args, prog_name="tether", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # bare `tether`
            print(exc.ctx.get_help())
            code = 0
        else:
            code = _usage(exc)
    except click_exceptions.ClickException as exc:  # a file option that cannot be opened, say
        print(f"error: {exc.format_message()}", file=sys.stderr)
        code = exc.exit_code
    except _ABORTS:
        print("interrupted", file=sys.stderr)
        code = 130
    except TetherError as exc:  # raised while parsing (a non-finite number, say)
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except Exception as exc:  # a bug, not a foreseeable problem: say so in one line
        if os.environ.get("TETHER_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set TETHER_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        code = EXIT_FAILED
    sys.exit(code if isinstance(code, int) else 0)
