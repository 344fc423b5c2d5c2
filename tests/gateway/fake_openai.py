"""A small OpenAI-compatible chat-completions server, on 127.0.0.1, in a thread.

It streams (SSE) when the request asks to, and otherwise answers with one JSON
``chat.completion``, as real servers do.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tether.gateway.server import bind


class FakeOpenAI:
    """Replies ``you said: <last user message>`` word by word; records every request."""

    def __init__(self, *, fail_with: int | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with = fail_with
        self.sock = bind("127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self.complete, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    async def complete(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("authorization")})
        if self.fail_with is not None:
            error = {"error": {"message": "no such model", "type": "invalid_request_error"}}
            return JSONResponse(error, status_code=self.fail_with)
        last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        if isinstance(last, list):  # content parts (the Agents SDK sends them so)
            last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
        reply = f"you said: {last}"
        words = reply.split(" ")
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(str(body["messages"]).split()),
                        "completion_tokens": len(words),
                        "total_tokens": len(str(body["messages"]).split()) + len(words),
                    },
                }
            )

        async def events() -> Any:
            for i, word in enumerate(words):
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": word if i == 0 else " " + word},
                            "finish_reason": None,
                        }
                    ],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
