"""``tether web``: the live view on its own (one page for every process on a store)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..paths import default_db
from .common import (
    AllowHostOption,
    AllowOriginOption,
    DbOption,
    TokenFileOption,
    cli_errors,
    fail,
    resolve_db,
)

DEFAULT_PORT = 8766


@cli_errors
def web(
    db: DbOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", metavar="ADDRESS", help="Address to bind (loopback unless you mean it)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="0: any free port.")
    ] = DEFAULT_PORT,
    print_url: Annotated[
        bool,
        typer.Option("--print-url", help="Print the address that logs a browser in, and exit."),
    ] = False,
    token_file: TokenFileOption = None,
    allow_host: AllowHostOption = None,
    allow_origin: AllowOriginOption = None,
) -> None:
    """Serve the live view: the HTTP API under /api/v1, /metrics and the dashboard at /.

    The same token, Host allowlist and Origin checks as `tether serve` (which
    serves the same view on its own port).

    \b
    Examples:
      tether web --db sessions.db
      tether web --db postgresql://db.internal/tether --port 8080
      tether web --print-url
    """
    from ..gateway.security import load_token
    from ..web.server import login_url

    token = load_token(token_file)
    if print_url:
        print(login_url(host, port, token))
        return
    from ..compose import open_store
    from ..web.server import run

    db = resolve_db(db)
    target = db or default_db()
    store = open_store(target, kind="web")

    def ready(bound: int) -> None:
        print(f"tether web on http://{host}:{bound}/ (database {target})", flush=True)
        print(f"log in: {login_url(host, bound, token)}", flush=True)

    try:
        run(
            store,
            token,
            host=host,
            port=port,
            allowed_hosts=tuple(allow_host or ()),
            allowed_origins=tuple(allow_origin or ()),
            ready=ready,
        )
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        store.close()
    print("tether web stopped", file=sys.stderr, flush=True)
