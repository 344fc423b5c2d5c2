"""What every command shares: the ``--db`` option, opening the store, errors, output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..errors import TetherError
from ..paths import ENV_DB, default_db
from ..store import Store, open_store

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=ENV_DB,
        show_envvar=True,
        help="Database: a SQLite file or a postgresql:// URL [default: the user data directory].",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (stable; see the README).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def cli_errors(fn: F) -> F:
    """Turn foreseeable failures into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TetherError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `tether ls | head`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def open_cli_store(db: str | None, *, must_exist: bool = True) -> Store:
    """Open the store named by ``--db`` / ``$TETHER_DB`` / the default path.

    A SQLite path given explicitly must exist for commands that only read or
    change existing sessions: a typo should not silently create an empty
    database. The default database is created on first use.
    """
    target = db or default_db()
    explicit = db is not None or ENV_DB in os.environ
    is_url = "://" in target and not target.startswith("sqlite://")
    if must_exist and explicit and not is_url:
        path = Path(os.path.expanduser(target.removeprefix("sqlite://")))
        if not path.exists():
            raise fail(f"no database at {path} (a new one is created by the first session)")
    return open_store(target, kind="cli")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``7d``, ``1w`` -> seconds."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (try 30m, 2h, 7d)") from None
    if value < 0:
        raise typer.BadParameter("a duration cannot be negative")
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


def shorten(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
