"""``tether serve``: the gateway, JSON-RPC 2.0 over WebSocket at ``/rpc``."""

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
    finite,
    resolve_db,
)
from .retention import policy_thread

DEFAULT_PORT = 8765


def parse_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"expected KEY=VALUE, got {pair!r}", param_hint="--agent-option"
            )
        out[key.strip()] = value
    return out


@cli_errors
def serve(
    db: DbOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", metavar="ADDRESS", help="Address to bind (loopback unless you mean it)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="0: any free port.")
    ] = (DEFAULT_PORT),
    agent: Annotated[
        str, typer.Option("--agent", metavar="NAME", help="The agent: echo or openai.")
    ] = "echo",
    agent_option: Annotated[
        list[str] | None,
        typer.Option(
            "--agent-option",
            "-o",
            metavar="KEY=VALUE",
            help="KEY=VALUE for the agent (echo: delay, tool; openai: base_url, model, "
            "api_key, system, timeout). Repeatable.",
        ),
    ] = None,
    detach_grace: Annotated[
        float,
        typer.Option(
            "--detach-grace",
            min=0.0,
            metavar="SECONDS",
            callback=finite,
            help="Seconds a detached idle session is kept.",
        ),
    ] = 120.0,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--idle-timeout",
            min=0.001,
            metavar="SECONDS",
            callback=finite,
            help="End sessions idle this many seconds.",
        ),
    ] = None,
    max_live_sessions: Annotated[
        int,
        typer.Option(
            "--max-live-sessions",
            min=1,
            metavar="N",
            help="Live sessions in all; past it the least recently active idle one is evicted.",
        ),
    ] = 1000,
    max_sessions_per_connection: Annotated[
        int,
        typer.Option(
            "--max-sessions-per-connection",
            min=1,
            metavar="N",
            help="Live sessions one connection may hold.",
        ),
    ] = 100,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            "--handshake-timeout",
            min=0.1,
            metavar="SECONDS",
            callback=finite,
            help="Seconds a new connection has to complete its WebSocket handshake.",
        ),
    ] = 5.0,
    token_file: TokenFileOption = None,
    allow_host: AllowHostOption = None,
    allow_origin: AllowOriginOption = None,
    max_frame: Annotated[
        int,
        typer.Option(
            "--max-frame", min=1024, metavar="BYTES", help="Largest accepted frame, in bytes."
        ),
    ] = 1024 * 1024,
    mirror_hermes: Annotated[
        list[str] | None,
        typer.Option(
            "--mirror-hermes",
            metavar="PATH",
            help="Also mirror this Hermes state.db into the database (tether hermes mirror). "
            "Repeatable.",
        ),
    ] = None,
    retention_every: Annotated[
        float,
        typer.Option(
            "--retention-every",
            min=1.0,
            metavar="SECONDS",
            callback=finite,
            help="How often the store's retention policy (tether prune --set-policy) is applied.",
        ),
    ] = 3600.0,
) -> None:
    """Run the gateway: JSON-RPC 2.0 over WebSocket at ws://HOST:PORT/rpc.

    \b
    Examples:
      tether serve --db sessions.db
      tether serve --agent openai -o base_url=http://127.0.0.1:8080/v1 -o model=qwen
    """
    from ..agents import AgentError, make_agent
    from ..compose import open_store
    from ..gateway.runtime import GatewayConfig
    from ..gateway.security import load_token
    from ..gateway.server import ServeOptions, run
    from ..web import for_gateway
    from ..web.server import login_url

    db = resolve_db(db)
    try:
        the_agent = make_agent(agent, parse_options(agent_option or []))
    except AgentError as exc:
        raise fail(str(exc)) from None
    token = load_token(token_file)
    target = db or default_db()
    store = open_store(target, kind="gateway")
    options = ServeOptions(
        host=host,
        port=port,
        max_frame=max_frame,
        handshake_timeout=handshake_timeout,
        allowed_hosts=tuple(allow_host or ()),
        allowed_origins=tuple(allow_origin or ()),
        gateway=GatewayConfig(
            detach_grace=detach_grace,
            idle_timeout=idle_timeout,
            max_live_sessions=max_live_sessions,
            max_sessions_per_connection=max_sessions_per_connection,
        ),
    )

    def ready(url: str) -> None:
        print(f"tether gateway on {url} (agent {the_agent.name}, database {target})", flush=True)
        bound = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        print(f"live view: {login_url(host, bound, token)}", flush=True)

    follower = None
    # The retention policy runs beside the gateway, on a thread of its own.
    retention = policy_thread(store, retention_every)
    retention.start()
    try:
        if mirror_hermes:
            # Imported here for start-up speed: most gateways mirror nothing.
            from ..interop.hermes.mirror import HermesMirror

            # Its lag for /metrics: tether.interop.hermes.mirror.mirrors().
            follower = HermesMirror(store, mirror_hermes)
            follower.check()
            follower.start()
        run(store, the_agent, token, options, ready=ready, mount=for_gateway)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        if follower is not None:
            follower.close()
        retention.stop(wait=10)
        store.close()
    print("tether gateway stopped", file=sys.stderr, flush=True)
