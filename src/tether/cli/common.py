"""What every command shares: the ``--db`` option, opening the store, errors, output.

Nothing printed here is ever read as Rich markup: session titles, models, ids,
paths, arguments and exception text may hold ``[`` and ``]`` (``[/]`` even), so
the consoles have markup off and styling is applied with :class:`rich.text.Text`.

This module is imported by ``tether --help`` and ``tether ls``: it keeps its
imports light (Rich and the store are loaded when a command first needs them).
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..errors import InvalidInputError, TetherError
from ..paths import ENV_DB, default_db

if TYPE_CHECKING:
    from rich.console import Console

    from ..compose import Store

F = TypeVar("F", bound=Callable[..., Any])

# Typer 0.29 vendors Click as ``typer._click``, earlier releases use ``click``:
# take the exceptions and the context from whichever Typer runs on.
click_exceptions: Any = importlib.import_module(typer.BadParameter.__module__)
_click_globals: Any = importlib.import_module(
    typer.BadParameter.__module__.rsplit(".", 1)[0] + ".globals"
)

# Exit codes: 1 an operation failed, 2 the command line was wrong.
EXIT_FAILED = 1
EXIT_USAGE = 2


class _LazyConsole:
    """A Rich console made on first use (importing Rich costs ~30 ms of every start)."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # markup=False: no data is ever parsed as markup (see the module docstring).
            self._console = Console(stderr=self._stderr, highlight=False, markup=False)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


out: Any = _LazyConsole()
err: Any = _LazyConsole(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="PATH|URL",
        help="Database: a SQLite file or a postgresql:// URL, before or after the command "
        "[default: $TETHER_DB, else tether.db in the user data directory].",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (stable; see the README).")]

# The gateway's and the live view's access options (tether serve, tether web): one token
# file, the same Host allowlist and Origin checks (tether.gateway.security).
TokenFileOption = Annotated[
    str | None,
    typer.Option(
        "--token-file",
        metavar="PATH",
        help="The token file (made at first start, mode 0600; shared by `tether serve` and "
        "`tether web`) [default: the data directory; $TETHER_TOKEN wins].",
    ),
]
AllowHostOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host", metavar="NAME", help="Another Host name clients may use. Repeatable."
    ),
]
AllowOriginOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-origin", metavar="URL", help="A browser origin allowed to connect. Repeatable."
    ),
]


def styled(text: str, style: str) -> Any:
    """``text`` as a styled Rich Text (never parsed as markup)."""
    from rich.text import Text

    return Text(text, style=style)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise."""
    line = styled("error:", "bold red")
    line.append(f" {message}")
    err.print(line, soft_wrap=True)
    return typer.Exit(code)


def usage_error(message: str, hint: str | None = None) -> typer.Exit:
    """A bad command line: one ``error:`` line, at most one hint line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    return typer.Exit(EXIT_USAGE)


def cli_errors(fn: F) -> F:
    """Turn foreseeable failures into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TetherError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `tether ls | head`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def resolve_db(db: str | None) -> str | None:
    """``--db`` given after the command, else before it (``tether --db X ls``), else None."""
    ctx = _click_globals.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    before = root.params.get("db") if root is not None else None
    if db is not None and before is not None and db != before:
        raise click_exceptions.UsageError(f"--db is given twice ({before!r} and {db!r})")
    return db if db is not None else before


def open_cli_store(db: str | None, *, must_exist: bool = True, plugins: bool = True) -> Store:
    """Open the store named by ``--db`` / ``$TETHER_DB`` / the default path.

    A SQLite path given explicitly must exist for commands that only read or
    change existing sessions: a typo should not silently create an empty
    database. The default database is created on first use. Commands that
    only read pass ``plugins=False``: no hook can fire, and finding plugins
    (entry points) costs start-up time.
    """
    from ..compose import open_store

    db = resolve_db(db)
    target = db or default_db()
    explicit = db is not None or bool(os.environ.get(ENV_DB))
    is_url = "://" in target and not target.startswith("sqlite://")
    if must_exist and explicit and not is_url:
        path = Path(os.path.expanduser(target.removeprefix("sqlite://")))
        if not path.exists():
            raise fail(f"no database at {path} (a new one is created by the first session)")
    return open_store(target, kind="cli", load_plugins=plugins)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``7d``, ``1w`` -> seconds (finite, not negative)."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (try 30m, 2h, 7d)") from None
    if not math.isfinite(value):  # nan, inf, 1e999: no idle time compares with those
        raise InvalidInputError(f"{text!r} is not a finite duration (try 30m, 2h, 7d)")
    if value < 0:
        raise typer.BadParameter("a duration cannot be negative")
    return value


def finite(value: float | None) -> float | None:
    """A Typer callback: refuse ``nan`` and ``inf`` (they pass every range check)."""
    if value is not None and not math.isfinite(value):
        raise InvalidInputError(f"{value} is not a finite number of seconds")
    return value


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def when(ts: float | None) -> str:
    """A local, human timestamp for tables."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


# Control characters in data (an ESC in a title) must not reach the terminal.
_CONTROLS = {c: "\ufffd" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def shorten(text: str | None, width: int) -> str:
    """One line of at most ``width`` characters, control characters replaced."""
    if not text:
        return ""
    text = " ".join(text.split()).translate(_CONTROLS)
    return text if len(text) <= width else text[: width - 1] + "…"


def clean(text: str | None) -> str:
    """Data for the terminal: control characters replaced, newlines and tabs kept."""
    if not text:
        return ""
    return text.translate({k: v for k, v in _CONTROLS.items() if k not in (9, 10)})


def cell_width(text: str) -> int:
    """Terminal cells ``text`` takes (East Asian wide characters take two)."""
    import unicodedata

    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def terminal_width() -> int:
    """Columns of the terminal (``$COLUMNS`` first; 80 when not a terminal)."""
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def use_color() -> bool:
    """ANSI styles on stdout: only on a terminal, and never with ``$NO_COLOR``."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def paint(text: str, sgr: str, color: bool) -> str:
    """``text`` in an ANSI style (``1`` bold, ``2`` dim, ``32`` green) when ``color``."""
    return f"\x1b[{sgr}m{text}\x1b[0m" if color and sgr else text


def plain_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[tuple[str, str]]],
    *,
    right: frozenset[int] = frozenset(),
) -> str:
    """Columns separated by one space; each cell is ``(text, ANSI style)``.

    The listing is printed without Rich: importing it costs more start-up time
    than the whole table takes to print.
    """
    color = use_color()
    widths = [
        max(cell_width(h), *(cell_width(r[i][0]) for r in rows)) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[tuple[str, str]]) -> str:
        parts = []
        for i, (text, style) in enumerate(cells):
            pad = " " * (widths[i] - cell_width(text))
            last = i == len(cells) - 1
            cell = pad + text if i in right else text + ("" if last else pad)
            parts.append(paint(cell, style, color))
        return " ".join(parts)

    return "\n".join([line([(h, "1") for h in headers]), *(line(r) for r in rows)])


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 session``, ``2 sessions``; ``many`` for irregular plurals."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def command_line(args: Iterable[str]) -> str:
    """A command line quoted for POSIX shells (bash and zsh alike)."""
    return " ".join(shlex.quote(a) for a in args)
