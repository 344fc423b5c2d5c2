"""``tether chat``: a terminal client of the gateway.

It creates a session (or resumes one), streams replies as they come, and
survives a transient drop: it reconnects by itself and re-attaches with the
last event seq it saw, so the server replays exactly what it missed (or says
to reload, and the client reads the stored history instead). Ctrl+C
interrupts the running reply; a second Ctrl+C, Ctrl+D or ``/quit`` leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import threading
from typing import Annotated, Any, TextIO

import typer
from websockets.exceptions import InvalidStatus, WebSocketException

from ..gateway import rpc
from ..gateway.client import Client, ConnectionLost, RemoteError
from ..gateway.security import load_token
from .common import cli_errors, fail

ENV_URL = "TETHER_URL"
DEFAULT_URL = "ws://127.0.0.1:8765/rpc"
LEAVE_REASON = "cli_close"
RECONNECT_FOR = 30.0  # seconds of trying before giving up


class Chat:
    """One chat session over a connection that may drop and come back."""

    def __init__(self, url: str, token: str, out: TextIO = sys.stdout) -> None:
        self.url = url
        self.token = token
        self.out = out
        self.client: Client | None = None
        self.session_id: str | None = None
        self.stream: str | None = None
        self.last_seq = 0  # the last event of this session seen, for exactly-once replay
        self.last_message = 0  # the last stored message seen (for a reload)
        self.turn_id: str | None = None
        self.turn_done = asyncio.Event()
        self.turn_done.set()
        self.interrupting = False
        self.leaving = asyncio.Event()
        self.closing = False  # we are closing the session ourselves
        self.reloaded = False  # events were lost: show the running turn's reply whole

    def say(self, text: str, end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def note(self, text: str) -> None:
        """Status on stderr, so the transcript on stdout stays exactly what was said."""
        print(text, file=sys.stderr, flush=True)

    async def open(self) -> None:
        self.client = await Client.connect(self.url, self.token, on_event=self.on_event)

    async def call(self, method: str, **params: Any) -> Any:
        if self.client is None:
            raise ConnectionLost(method)
        return await self.client.call(method, **params)

    # --- events --------------------------------------------------------------------------

    def on_event(self, method: str, p: dict[str, Any]) -> None:
        if p.get("session_id") != self.session_id:
            return
        seq = p.get("seq", 0)
        if seq <= self.last_seq:
            return  # seen already (never expected: the server replays exactly once)
        self.last_seq = seq
        if method == "turn.start":
            self.turn_id = p["turn_id"]
            self.turn_done.clear()
        elif method == "message.delta":
            if not self.reloaded:
                self.say(p["text"], end="")
        elif method == "message":
            m = p["message"]
            self.last_message = max(self.last_message, m["seq"])
            if self.reloaded and m["role"] == "assistant" and m["content"]:
                self.say(f"[reloaded] {m['content']}", end="")  # the deltas had a gap
        elif method == "tool.call":
            self.say(f"[{p['name']} {p['arguments']}]")
        elif method == "tool.result":
            self.say(f"[{p['name']} -> {p['content']}]")
        elif method == "turn.end":
            status = p.get("status")
            if status == "interrupted":
                self.say(" [interrupted]", end="")
            elif status == "error":
                self.say(f"\n[error: {p.get('error')}]", end="")
            self.say("")
            self.finish_turn()
        elif method == "session.ended":
            if not self.closing:
                self.say(f"[session ended: {p.get('reason')}]")
            self.finish_turn()
            self.leaving.set()

    def finish_turn(self) -> None:
        self.reloaded = False
        self.turn_id = None
        self.interrupting = False
        self.turn_done.set()

    # --- sessions ------------------------------------------------------------------------

    async def start(self, resume: str | None) -> None:
        if resume is None:
            self.adopt(await self.call("session.create"))
            self.say(f"session {self.session_id} (new)")
            return
        try:
            result = await self.call("session.resume", session_id=resume)
            status = "resumed"
        except RemoteError as exc:
            if exc.code != rpc.SESSION_ENDED:
                raise
            # Ended is ended: continue it as a new session in the same chain.
            result = await self.call("session.create", parent_id=resume)
            status = f"continues {resume}, which ended ({(exc.data or {}).get('reason')})"
        history = await self.call("session.history", session_id=resume, limit=1000)
        for m in history["messages"]:
            if m["role"] in ("user", "assistant") and m["content"]:
                mark = " [interrupted]" if m["interrupted"] else ""
                self.say(f"{'you' if m['role'] == 'user' else '   '}> {m['content']}{mark}")
        self.adopt(result)
        if self.session_id == resume:
            self.last_message = history["messages"][-1]["seq"] if history["messages"] else 0
        self.say(f"session {self.session_id} ({status})")
        if result["turn_id"] is not None:
            self.turn_id = result["turn_id"]
            self.turn_done.clear()

    def adopt(self, result: dict[str, Any]) -> None:
        self.session_id = result["session_id"]
        self.stream = result["stream"]
        self.last_seq = result["last_seq"]

    async def reconnect(self) -> bool:
        """Re-open and re-attach after a drop; False if the gateway stays away."""
        deadline = asyncio.get_running_loop().time() + RECONNECT_FOR
        attempt = 0
        while not self.leaving.is_set():
            try:
                await self.open()
                result = await self.call(
                    "session.resume",
                    session_id=self.session_id,
                    since=self.last_seq,
                    stream=self.stream,
                )
                break
            except RemoteError as exc:
                if exc.code != rpc.SESSION_ENDED:
                    raise
                # Ended while we were away (the gateway restarted, say): carry on in its chain.
                result = await self.call("session.create", parent_id=self.session_id)
                why = (exc.data or {}).get("reason")
                self.note(
                    f"[session {self.session_id} ended ({why}); continuing it as "
                    f"{result['session_id']}]"
                )
                self.adopt(result)
                self.finish_turn()
                return True
            except (TimeoutError, OSError, WebSocketException, ConnectionLost):
                await self.drop()
            if asyncio.get_running_loop().time() > deadline:
                return False
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))  # full jitter
        else:
            return False
        if result["reload"]:
            await self.reload(result)
        return True

    async def recover(self) -> None:
        self.note("[connection lost; reconnecting]")
        if not await self.reconnect():
            raise ConnectionLost("gateway")
        self.note("[reconnected]")

    async def reload(self, result: dict[str, Any]) -> None:
        """The missed events are gone: show the stored messages we have not shown."""
        self.stream, self.last_seq = result["stream"], result["last_seq"]
        history = await self.call(
            "session.history", session_id=self.session_id, after_seq=self.last_message
        )
        for m in history["messages"]:
            self.last_message = m["seq"]
            if m["role"] == "assistant" and m["content"]:
                self.say(f"\n[reloaded] {m['content']}")
        if result["state"] == "running":
            self.reloaded = True  # its reply is printed whole when it is stored
        else:
            self.finish_turn()

    async def drop(self) -> None:
        if self.client is not None:
            await self.client.close()

    # --- the conversation ----------------------------------------------------------------

    async def submit(self, text: str) -> None:
        while True:
            try:
                result = await self.call("prompt.submit", session_id=self.session_id, text=text)
                if self.turn_id is None and result["turn_id"]:
                    self.turn_id = result["turn_id"]
                    self.turn_done.clear()
                return
            except ConnectionLost:
                if not await self.reconnect():
                    raise
                if self.turn_id is not None:  # it got through: the replay says so
                    return

    async def wait_turn(self) -> None:
        """Wait for the reply, reconnecting as often as needed."""
        while not self.turn_done.is_set() and not self.leaving.is_set():
            waiter = asyncio.create_task(self.turn_done.wait())
            leave = asyncio.create_task(self.leaving.wait())
            assert self.client is not None
            lost = asyncio.create_task(self.client.lost.wait())
            await asyncio.wait({waiter, leave, lost}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, leave, lost):
                task.cancel()
            if (
                self.client.lost.is_set()
                and not self.turn_done.is_set()
                and not self.leaving.is_set()
            ):
                await self.recover()

    async def next_line(self, lines: asyncio.Queue[str | None]) -> str | None:
        """The next line typed; meanwhile, reconnect if the connection drops."""
        while True:
            assert self.client is not None
            waits = [lines.get(), self.leaving.wait(), self.client.lost.wait()]
            get, leave, lost = tasks = [asyncio.create_task(w) for w in waits]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in (leave, lost):
                task.cancel()
            if get.done():
                return get.result()
            get.cancel()  # Queue.get is safe to cancel: no line is lost
            if self.leaving.is_set():
                return None
            await self.recover()

    def on_sigint(self) -> None:
        if self.turn_id is not None and not self.interrupting:
            self.interrupting = True
            task = asyncio.ensure_future(self._interrupt())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            self.leaving.set()

    async def _interrupt(self) -> None:
        with contextlib.suppress(ConnectionLost, RemoteError):
            await self.call("session.interrupt", session_id=self.session_id)

    async def leave(self) -> None:
        if self.session_id is not None and self.client and not self.client.lost.is_set():
            self.closing = True
            with contextlib.suppress(ConnectionLost, RemoteError, TimeoutError):
                await asyncio.wait_for(
                    self.call("session.close", session_id=self.session_id, reason=LEAVE_REASON), 5
                )
            self.say(f"left; continue with: tether chat --resume {self.session_id}")
        await self.drop()


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read stdin on a daemon thread (a blocked read must not keep the process alive)."""

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="tether-chat-stdin", daemon=True).start()


async def run_chat(url: str, token: str, resume: str | None) -> None:
    chat = Chat(url, token)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, chat.on_sigint)
    interactive = sys.stdin.isatty()
    try:
        await chat.open()
        await chat.start(resume)
        await chat.wait_turn()
        if interactive:
            chat.say("Ctrl+C interrupts a reply (twice: leaves); Ctrl+D or /quit leaves.")
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _stdin_lines(loop, lines)
        while not chat.leaving.is_set():
            if interactive:
                chat.say("you> ", end="")
            line = await chat.next_line(lines)
            if chat.leaving.is_set():
                break
            if line is None or line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            await chat.submit(line)
            await chat.wait_turn()
        if interactive:
            chat.say("")
        await chat.leave()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


@cli_errors
def chat(
    resume: Annotated[
        str | None, typer.Option("--resume", "-r", help="Resume this session (or continue it).")
    ] = None,
    url: Annotated[
        str, typer.Option("--url", envvar=ENV_URL, show_envvar=True, help="The gateway.")
    ] = DEFAULT_URL,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file",
            help="The gateway's token file [default: $TETHER_TOKEN, else the data directory's].",
        ),
    ] = None,
) -> None:
    """Chat with the gateway's agent: streams replies, survives drops, Ctrl+C interrupts."""
    token = load_token(token_file, create=False)
    try:
        asyncio.run(run_chat(url, token, resume))
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise fail(f"the gateway at {url} refused the connection (HTTP {status})") from None
    except (OSError, WebSocketException, ConnectionLost) as exc:
        raise fail(f"cannot reach the gateway at {url}: {exc}") from None
    except RemoteError as exc:
        raise fail(str(exc)) from None
