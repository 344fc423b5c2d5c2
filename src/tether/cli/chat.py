"""``tether chat``: a terminal client of the gateway (the engine is in :mod:`.chatloop`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .common import cli_errors, fail

ENV_URL = "TETHER_URL"
ENV_TOKEN = "TETHER_TOKEN"
DEFAULT_URL = "ws://127.0.0.1:8765/rpc"
GATEWAY_PATH = "/rpc"


def token_source(token_file: str | None) -> str:
    """Where the token was read from, said the way a user would set it."""
    if os.environ.get(ENV_TOKEN):
        return f"${ENV_TOKEN}"
    if token_file is not None:
        return token_file
    from ..gateway.security import default_token_file

    return str(default_token_file())


def refusal_message(url: str, status: int, body: str, token_file: str | None) -> str:
    """One line saying why the gateway refused the handshake, and what to do."""
    from urllib.parse import urlsplit

    reason = body.strip().splitlines()[0] if body.strip() else ""
    if status == 401:
        return (
            f"the gateway at {url} refused the token (HTTP 401); it was read from "
            f"{token_source(token_file)}: pass the gateway's token with --token-file PATH "
            f"or ${ENV_TOKEN}"
        )
    path = urlsplit(url).path or "/"
    if status in (403, 404) and path != GATEWAY_PATH:
        return (
            f"nothing answers at path {path} of the gateway (HTTP {status}): "
            f"the gateway serves {GATEWAY_PATH}, as in {DEFAULT_URL}"
        )
    why = f": {reason}" if reason else ""
    return f"the gateway at {url} refused the connection (HTTP {status}){why}"


@cli_errors
def chat(
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            "-r",
            metavar="ID",
            help="Resume this session, or continue it if it ended (a unique prefix is enough).",
        ),
    ] = None,
    url: Annotated[
        str,
        typer.Option("--url", envvar=ENV_URL, show_envvar=True, metavar="URL", help="The gateway."),
    ] = DEFAULT_URL,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file",
            metavar="PATH",
            help="The gateway's token file [default: $TETHER_TOKEN, else the data directory's].",
        ),
    ] = None,
) -> None:
    """Chat with the gateway's agent: streams replies, survives drops, Ctrl+C interrupts.

    /quit ends the session, or only detaches when other clients are attached.

    \b
    Examples:
      tether chat
      tether chat --resume 01M7YXE4
      TETHER_TOKEN=... tether chat --url ws://127.0.0.1:9000/rpc
    """
    import asyncio

    from websockets.exceptions import InvalidStatus, WebSocketException

    from ..gateway.client import ConnectionLost, RemoteError
    from ..gateway.security import load_token
    from .chatloop import Ambiguous, GatewayGone, run_chat

    token = load_token(token_file, create=False)
    try:
        asyncio.run(run_chat(url, token, resume))
    except InvalidStatus as exc:
        response = exc.response
        body = response.body.decode(errors="replace") if response.body else ""
        raise fail(refusal_message(url, response.status_code, body, token_file)) from None
    except (GatewayGone, Ambiguous) as exc:
        raise fail(str(exc)) from None
    except ConnectionRefusedError:
        raise fail(
            f"cannot reach the gateway at {url}: nothing listens there "
            "(start it with: tether serve)"
        ) from None
    except (OSError, WebSocketException, ConnectionLost) as exc:
        raise fail(f"cannot reach the gateway at {url}: {exc}") from None
    except RemoteError as exc:
        raise fail(str(exc)) from None
