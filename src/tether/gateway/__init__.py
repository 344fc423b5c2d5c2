"""The gateway: JSON-RPC 2.0 over WebSocket in front of live sessions.

Layers, bottom up: :mod:`.rpc` (framing), :mod:`.replay` and :mod:`.registry`
(the sans-IO state machine: attach, detach, grace, replay, reaping),
:mod:`.runtime` (the asyncio layer that carries out the registry's actions,
runs turns and offers the gateway's operations: create, resume, submit,
interrupt, close), :mod:`.methods` (the JSON-RPC methods over them: parameter
checks and error codes only; ``receive`` dispatches a frame), :mod:`.security`,
:mod:`.app` (the ASGI transport) and :mod:`.server` (uvicorn, signals).
The protocol is documented in ``docs/protocol.md``.
"""

from .registry import Registry
from .runtime import Gateway, GatewayConfig
from .server import ServeOptions, run, serve

__all__ = ["Gateway", "GatewayConfig", "Registry", "ServeOptions", "run", "serve"]
