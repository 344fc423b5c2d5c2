"""The gateway's floor: a bare WebSocket server, same ``websockets`` library, same frames.

Run as a child process by ``bench/gateway.py`` (``python -m bench.wsfloor``;
it prints ``floor on ws://127.0.0.1:PORT/rpc`` once it listens). It parses
each JSON-RPC request and answers what a tether gateway would send, frame for
frame and of the same sizes, but keeps nothing, checks nothing and stores
nothing:

* ``ping``: the reply;
* ``session.create``: the reply;
* ``prompt.submit``: the reply, ``turn.start``, ``message`` (the prompt), one
  ``message.delta`` per word of ``echo: <text>`` (as the echo agent), the
  ``message`` of the reply, ``turn.end``.

The time between it and ``tether serve`` is what tether's gateway costs:
its ASGI server, the registry, the store's writes, the agent's task.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

READY = "floor on "
_TOKEN = re.compile(r"\s*\S+")
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _note(method: str, params: dict[str, Any]) -> str:
    return _dumps({"jsonrpc": "2.0", "method": method, "params": params})


def _message(sid: str, turn_id: str, seq: int, role: str, content: str) -> dict[str, Any]:
    # The shape and size of tether's message view (gateway/messages.py).
    return {
        "session_id": sid,
        "seq": seq,
        "role": role,
        "content": content,
        "tool_calls": None,
        "tool_call_id": None,
        "tool_name": None,
        "created_at": time.time(),
        "meta": {"turn_id": turn_id},
        "state": "active",
        "turn_id": turn_id,
        "interrupted": False,
    }


class _Session:
    def __init__(self, sid: str) -> None:
        self.id = sid
        self.seq = 0  # event seq
        self.messages = 0

    def event(self, method: str, params: dict[str, Any]) -> str:
        self.seq += 1
        return _note(method, {"session_id": self.id, "seq": self.seq, **params})


async def handler(ws: ServerConnection) -> None:
    sessions: dict[str, _Session] = {}
    async for data in ws:
        req = json.loads(data)
        method, rid, params = req.get("method"), req.get("id"), req.get("params") or {}
        if method == "ping":
            await ws.send(
                _dumps({"jsonrpc": "2.0", "id": rid, "result": {"pong": True, "time": time.time()}})
            )
        elif method == "session.create":
            s = _Session(secrets.token_hex(13).upper())
            sessions[s.id] = s
            await ws.send(
                _dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": rid,
                        "result": {
                            "session_id": s.id,
                            "stream": "floor.1",
                            "last_seq": 0,
                            "replayed": 0,
                            "reload": False,
                            "state": "attached",
                            "turn_id": None,
                        },
                    }
                )
            )
        elif method == "prompt.submit":
            s = sessions[params["session_id"]]
            text = params["text"]
            turn_id = secrets.token_hex(13).upper()
            prompt_seq = s.messages
            s.messages += 2
            await ws.send(
                _dumps(
                    {"jsonrpc": "2.0", "id": rid, "result": {"turn_id": turn_id, "seq": prompt_seq}}
                )
            )
            await ws.send(s.event("turn.start", {"turn_id": turn_id}))
            view = _message(s.id, turn_id, prompt_seq, "user", text)
            await ws.send(s.event("message", {"turn_id": turn_id, "message": view}))
            reply = f"echo: {text}"
            for token in _TOKEN.findall(reply):
                await asyncio.sleep(0)  # as the echo agent: yield before each token
                await ws.send(s.event("message.delta", {"turn_id": turn_id, "text": token}))
            view = _message(s.id, turn_id, prompt_seq + 1, "assistant", reply)
            await ws.send(s.event("message", {"turn_id": turn_id, "message": view}))
            await ws.send(s.event("turn.end", {"turn_id": turn_id, "status": "completed"}))
        else:
            await ws.send(
                _dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}})
            )


async def main() -> None:
    async with serve(
        handler, "127.0.0.1", 0, compression=None, max_size=1024 * 1024, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"{READY}ws://127.0.0.1:{port}/rpc", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
